// tokenizer.json: the file HF's tokenizers library writes (here by the npm package itself, from the
// same BertTokenizerFast configuration the other tokenizer tests use). A folder with only that file
// must tokenize as HF does when it reads the file back (Tokenizer.fromFile), and as the vocab.txt
// encoder does; a model folder with only tokenizer.json must embed as its vocab.txt twin. Files
// describing any other tokenizer are refused naming the part that differs.
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class TokenizerJsonTests
{
    /// <summary>HF's tokenizer.json for a vocabulary and normaliser, saved into <paramref name="dir"/> by encode.js.</summary>
    private static string Save(string dir, string vocab, BertNormalizer normalizer, bool template)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, TokenizerJson.FileName);
        HfTokenizers.Encode(new HfTokenizers.Request(vocab, normalizer.Lowercase, normalizer.StripAccents ?? normalizer.Lowercase, normalizer.HandleChineseChars, 0,
            [["a", null]], template, Save: path));
        Assert.True(File.Exists(path), "encode.js wrote no tokenizer.json");
        return path;
    }

    public static TheoryData<bool, bool> Variants() => new() { { true, true }, { true, false }, { false, true } };

    [Theory]
    [MemberData(nameof(Variants))]
    public void A_folder_with_only_tokenizer_json_tokenizes_as_HF_reads_that_file(bool uncased, bool template)
    {
        HfTokenizers.Require();
        using var dir = new TempDir();
        string vocab = MiniLm.Vocab;
        var normalizer = new BertNormalizer();
        if (!uncased)
        {
            vocab = dir.File("cased-vocab.txt");
            File.WriteAllLines(vocab, WordPieceTrainer.Train(DefaultCorpus.Documents().Take(2000).Select(d => d.Text), 5000, lowerCase: false));
            normalizer = new BertNormalizer(Lowercase: false);
        }
        string folder = dir.File("tokenizer");
        string json = Save(folder, vocab, normalizer, template);
        Assert.False(File.Exists(Path.Combine(folder, "vocab.txt")));
        var encoder = BertTextEncoder.Load(folder);
        Assert.Equal((normalizer.Lowercase, normalizer.StripAccents ?? normalizer.Lowercase, normalizer.HandleChineseChars),
            (encoder.Normalizer.Lowercase, encoder.Normalizer.StripAccents ?? encoder.Normalizer.Lowercase, encoder.Normalizer.HandleChineseChars));
        Assert.Equal(WordPiece.ReadVocabulary(vocab), encoder.Vocabulary);

        var texts = TokenizerTests.Generate(1500, uncased ? 31 : 32, encoder.Vocabulary);
        var inputs = texts.Take(1000).Select(t => new[] { t, null })
            .Concat(Enumerable.Range(0, 250).Select(i => new[] { texts[1000 + 2 * i], texts[1001 + 2 * i] }))
            .Concat(DefaultCorpus.Documents().Take(uncased ? 4000 : 500).Select(d => new[] { d.Text, null })).ToArray();
        foreach (int maxLength in new[] { 0, 24 })
        {
            // The reference is the tokenizer HF builds from the file, not the configuration that wrote it.
            var request = new HfTokenizers.Request(vocab, false, false, false, maxLength, inputs, TokenizerJson: json);
            TokenizerTests.AssertSame(encoder, request, HfTokenizers.Encode(request), $"tokenizer.json ({(uncased ? "uncased" : "cased")}, {(template ? "TemplateProcessing" : "BertProcessing")}, max length {maxLength})");
        }
    }

    [Fact]
    public void A_model_folder_with_only_tokenizer_json_embeds_as_its_vocab_txt_twin()
    {
        HfTokenizers.Require();
        using var dir = new TempDir();
        string model = RealModelTests.ImportedMiniLm.Value, twin = dir.File("minilm");
        Directory.CreateDirectory(twin);
        foreach (var f in Directory.GetFiles(model).Where(f => Path.GetFileName(f) is not ("vocab.txt" or "tokenizer_config.json")))
            File.Copy(f, Path.Combine(twin, Path.GetFileName(f)));
        Save(twin, Path.Combine(model, "vocab.txt"), new BertNormalizer(), template: true);
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var a = BertPipeline.Load(device, model);
        using var b = BertPipeline.Load(device, twin);
        string[] texts = ["Gets the value of the property.", "Ünïcödé and 漢字, tabs\tand emoji 🙂 too"];
        var (x, y) = (a.Embed(texts), b.Embed(texts));
        for (int i = 0; i < texts.Length; i++) Assert.Equal(x[i], y[i]);
        // Saving such a folder keeps the tokenizer (there is no vocab.txt to copy).
        string saved = dir.File("saved");
        Directory.CreateDirectory(saved);
        Model.BertFolder.CopyVocabulary(Path.Combine(twin, "vocab.txt"), saved);
        Assert.True(File.Exists(Path.Combine(saved, TokenizerJson.FileName)));
    }

    public static TheoryData<string, string> Edits() => new()
    {
        { """{"model": {"type": "BPE"}}""", "model type BPE" },
        { """{"normalizer": {"type": "Lowercase"}}""", "normalizer Lowercase" },
        { """{"normalizer": {"clean_text": false}}""", "clean_text false" },
        { """{"pre_tokenizer": {"type": "Whitespace"}}""", "pre-tokenizer Whitespace" },
        { """{"post_processor": {"type": "RobertaProcessing"}}""", "post-processor RobertaProcessing" },
        { """{"model": {"continuing_subword_prefix": "@@"}}""", "continuing_subword_prefix" },
        { """{"model": {"max_input_chars_per_word": 50}}""", "max_input_chars_per_word 50" },
        { """{"added_tokens": [{"id": 5, "content": "<extra>"}]}""", "added token \"<extra>\"" },
        { """{"post_processor": {"single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}}""", "the template" },
    };

    [Theory]
    [MemberData(nameof(Edits))]
    public void Any_other_tokenizer_is_refused_naming_its_component(string edit, string expected)
    {
        HfTokenizers.Require();
        using var dir = new TempDir();
        string json = Save(dir.File("t"), MiniLm.Vocab, new BertNormalizer(), template: true);
        var root = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        Merge(root, JsonNode.Parse(edit)!.AsObject());
        File.WriteAllText(json, root.ToJsonString());
        var e = Assert.Throws<CheckpointException>(() => BertTextEncoder.Load(Path.GetDirectoryName(json)!));
        Assert.Contains(expected, e.Message);
        Assert.Contains(json, e.Message);
    }

    /// <summary>Sets <paramref name="edit"/>'s fields into <paramref name="target"/>, objects merged, arrays replaced (added tokens appended).</summary>
    private static void Merge(JsonObject target, JsonObject edit)
    {
        foreach (var (key, value) in edit.ToList())
        {
            if (value is JsonObject o && target[key] is JsonObject t) Merge(t, o);
            else if (key == "added_tokens" && target[key] is JsonArray list) list.Add(value!.AsArray()[0]!.DeepClone());
            else target[key] = value!.DeepClone();
        }
    }
}
