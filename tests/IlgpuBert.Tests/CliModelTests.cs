using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

/// <summary>The command-line contract of init, forward, grad, vocab and tokenize, bad inputs included.</summary>
public class CliModelTests : IDisposable
{
    private readonly TempDir dir = new();
    private static readonly string[] Words = ["the", "value", "of", "a", "property", "returns", "gets", "##s", "collection", "."];

    public void Dispose() => dir.Dispose();


    private string InitTiny()
    {
        string vocab = dir.File("vocab.txt");
        File.WriteAllLines(vocab, WordPieceTrainer.SpecialTokens.Concat(Words));
        string model = dir.File("model");
        var (code, _, err) = CliRunner.Run("init", "--size", "tiny", "--vocab", vocab, "--seed", "3", "--out", model, "--device", "cpu");
        Assert.True(code == 0, err);
        return model;
    }

    private string Batch(string json)
    {
        string path = dir.File($"batch{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        return path;
    }

    private const string GoodBatch = """
        {"input_ids": [[2, 10, 5, 3, 6, 3], [2, 7, 3, 0, 0, 0]], "token_type_ids": [[0,0,0,0,1,1],[0,0,0,0,0,0]],
         "attention_mask": [[1,1,1,1,1,1],[1,1,1,0,0,0]], "labels": [[-100, 5, -100, -100, 11, -100], [-100, 9, -100, -100, -100, -100]],
         "next_sentence_label": [1, 0]}
        """;

    [Fact]
    public void Init_writes_an_hf_folder_that_forward_and_grad_read()
    {
        string model = InitTiny();
        Assert.True(File.Exists(Path.Combine(model, "config.json")));
        Assert.Equal(15, BertConfig.Read(Path.Combine(model, "config.json")).VocabSize);
        Assert.Equal(File.ReadAllLines(dir.File("vocab.txt")), File.ReadAllLines(Path.Combine(model, "vocab.txt")));

        string batch = Batch(GoodBatch);
        var (code, _, err) = CliRunner.Run("forward", "--model", model, "--input", batch, "--out", dir.File("out.safetensors"), "--hidden-states", "--attentions", "--device", "cpu");
        Assert.True(code == 0, err);
        var o = SafeTensors.Read(dir.File("out.safetensors"));
        Assert.Equal([2, 6, 128], o["last_hidden_state"].Shape);
        Assert.Equal([2, 128], o["pooler_output"].Shape);
        Assert.Equal([2, 6, 15], o["prediction_logits"].Shape);
        Assert.Equal([2, 2], o["seq_relationship_logits"].Shape);
        Assert.Equal([], o["loss"].Shape);
        Assert.Equal([2, 6, 128], o["hidden_states.2"].Shape);
        Assert.Equal([2, 2, 6, 6], o["attentions.1"].Shape);
        // Each attention row is a distribution over the unmasked keys.
        var att = o["attentions.0"].Data;
        for (int row = 0; row < 2 * 2 * 6; row++)
        {
            int b = row / 12;
            Assert.Equal(1f, att.Skip(row * 6).Take(6).Sum(), 4);
            if (b == 1) Assert.All(att.Skip(row * 6 + 3).Take(3), v => Assert.Equal(0f, v));
        }
        // A random model over 15 tokens: MLM loss ≈ ln 15, NSP ≈ ln 2.
        Assert.InRange(o["loss"].Data[0], 2.0f, 4.5f);

        (code, _, err) = CliRunner.Run("grad", "--model", model, "--input", batch, "--out", dir.File("grads.safetensors"), "--device", "cpu");
        Assert.True(code == 0, err);
        var g = SafeTensors.Read(dir.File("grads.safetensors"));
        Assert.Equal(o["loss"].Data[0], g["loss"].Data[0], 4);
        Assert.Equal([15, 128], g["bert.embeddings.word_embeddings.weight"].Shape);
        Assert.DoesNotContain("cls.predictions.decoder.weight", g.Keys);
        Assert.Contains(g["bert.encoder.layer.1.attention.self.value.weight"].Data, v => v != 0f);
    }

    public static TheoryData<string, string> BadBatches() => new()
    {
        { "{\"input_ids\": [[1, 2], [3]]}", "ragged" },
        { "{\"input_ids\": [[1, 15]]}", "outside the vocabulary" },
        { "{\"input_ids\": [[1, 2]], \"token_type_ids\": [[0, 2]]}", "token_type_ids[0][1] = 2" },
        { "{\"input_ids\": [[" + string.Join(",", Enumerable.Repeat(5, 513)) + "]]}", "exceeds max_position_embeddings" },
        { "{\"input_ids\": [[1, 2]", "invalid JSON" },
        { "{\"token_type_ids\": [[0]]}", "input_ids is missing" },
        { "{\"input_ids\": [[\"a\"]]}", "list of rows of integers" },
    };

    [Theory]
    [MemberData(nameof(BadBatches))]
    public void Bad_batches_fail_with_one_line_and_no_output(string json, string expected)
    {
        string model = InitTiny();
        foreach (var verb in new[] { "forward", "grad" })
        {
            string output = dir.File($"{verb}.safetensors");
            var (code, stdout, err) = CliRunner.Run(verb, "--model", model, "--input", Batch(json), "--out", output, "--device", "cpu");
            Assert.Equal(2, code);
            Assert.Contains(expected, err);
            Assert.Single(err.TrimEnd().Split('\n'));
            Assert.Equal("", stdout);
            Assert.False(File.Exists(output));
        }
    }

    [Theory]
    [InlineData("truncated")]
    [InlineData("absurd-header")]
    [InlineData("broken-config")]
    [InlineData("missing-config")]
    [InlineData("heads")]
    [InlineData("missing-tensor")]
    public void Bad_model_folders_fail_with_one_line_and_no_output(string defect)
    {
        string model = InitTiny();
        string weights = Path.Combine(model, "model.safetensors"), config = Path.Combine(model, "config.json");
        string expected;
        switch (defect)
        {
            case "truncated":
                File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..1000]);
                expected = "model.safetensors";
                break;
            case "absurd-header":
                var bytes = File.ReadAllBytes(weights);
                BitConverter.GetBytes(1L << 60).CopyTo(bytes, 0);
                File.WriteAllBytes(weights, bytes);
                expected = "header length";
                break;
            case "broken-config":
                File.WriteAllText(config, "{\"hidden_size\": 128,");
                expected = "invalid JSON";
                break;
            case "missing-config":
                File.Delete(config);
                expected = "config.json";
                break;
            case "heads":
                var c = JsonNode.Parse(File.ReadAllText(config))!;
                c["num_attention_heads"] = 3;
                File.WriteAllText(config, c.ToJsonString());
                expected = "does not divide";
                break;
            default:
                var t = SafeTensors.Read(weights);
                t.Remove("bert.encoder.layer.0.output.dense.weight");
                SafeTensors.Write(weights, t);
                expected = "bert.encoder.layer.0.output.dense.weight";
                break;
        }
        string output = dir.File("out.safetensors");
        var (code, _, err) = CliRunner.Run("forward", "--model", model, "--input", Batch(GoodBatch), "--out", output, "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains(expected, err);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.DoesNotContain("   at ", err);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void Tokenize_prints_ids_and_token_types_for_lines_and_pairs()
    {
        string model = InitTiny();
        var oldIn = Console.In;
        try
        {
            Console.SetIn(new StringReader("Returns the value\nGets a collection.\n"));
            var (code, stdout, err) = CliRunner.Run("tokenize", "--model", model);
            Assert.True(code == 0, err);
            var lines = stdout.TrimEnd().Split('\n');
            Assert.Equal("{\"input_ids\":[2,10,5,6,3],\"token_type_ids\":[0,0,0,0,0]}", lines[0]);
            Assert.Equal("{\"input_ids\":[2,11,8,13,14,3],\"token_type_ids\":[0,0,0,0,0,0]}", lines[1]);
            Console.SetIn(new StringReader("gets the value\ta collection\n"));
            (code, stdout, err) = CliRunner.Run("tokenize", "--model", model, "--pair");
            Assert.True(code == 0, err);
            Assert.Equal("{\"input_ids\":[2,11,5,6,3,8,13,3],\"token_type_ids\":[0,0,0,0,0,1,1,1]}", stdout.TrimEnd());
            Console.SetIn(new StringReader("no tab here\n"));
            (code, _, err) = CliRunner.Run("tokenize", "--model", model, "--pair");
            Assert.Equal(2, code);
            Assert.Contains("tab", err);
        }
        finally
        {
            Console.SetIn(oldIn);
        }
    }

    [Fact]
    public void Tokenizer_casing_follows_tokenizer_config()
    {
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Words));
        Assert.Equal([10], BertTextEncoder.Load(dir.Path).Encode("Returns"));
        File.WriteAllText(dir.File("tokenizer_config.json"), "{\"do_lower_case\": false}");
        var cased = BertTextEncoder.Load(dir.Path);
        Assert.Equal([cased.UnknownId], cased.Encode("Returns"));
        Assert.Equal([10], cased.Encode("returns"));
    }

    [Fact]
    public void Init_draws_weights_with_the_configured_spread()
    {
        string model = InitTiny();
        var t = SafeTensors.Read(Path.Combine(model, "model.safetensors"));
        var w = t["bert.encoder.layer.0.intermediate.dense.weight"].Data;
        double mean = w.Average(v => (double)v), std = Math.Sqrt(w.Average(v => (double)v * v) - mean * mean);
        Assert.InRange(std, 0.0195, 0.0205); // N(0, initializer_range = 0.02), 65,536 draws
        Assert.InRange(mean, -0.0005, 0.0005);
        Assert.All(t["bert.encoder.layer.0.intermediate.dense.bias"].Data, v => Assert.Equal(0f, v));
        Assert.All(t["cls.predictions.transform.LayerNorm.weight"].Data, v => Assert.Equal(1f, v));
    }

    [Fact]
    public void Vocab_builds_wordpieces_with_special_tokens_first()
    {
        string corpus = dir.File("corpus.txt");
        File.WriteAllLines(corpus, Enumerable.Repeat("Tokenization tokenizes tokens; the tokenizer returns tokens.", 20));
        var (code, _, err) = CliRunner.Run("vocab", "--corpus", corpus, "--size", "40", "--out", dir.File("v.txt"));
        Assert.True(code == 0, err);
        var vocab = File.ReadAllLines(dir.File("v.txt"));
        Assert.Equal(WordPieceTrainer.SpecialTokens, vocab[..5]);
        Assert.Equal(40, vocab.Length);
        Assert.Contains("token", vocab);
        Assert.Contains(vocab, v => v.StartsWith("##"));
        Assert.Equal(vocab.Length, vocab.Distinct().Count());
        // The result tokenizes the corpus without unknown pieces.
        var encoder = BertTextEncoder.FromVocab(dir.File("v.txt"));
        Assert.DoesNotContain(encoder.UnknownId, encoder.Encode("the tokenizer returns tokens"));
    }

    [Fact]
    public void Text_encoder_builds_pairs_with_longest_first_truncation_and_padding()
    {
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Words));
        var encoder = BertTextEncoder.FromVocab(dir.File("vocab.txt"));
        Assert.Equal([10, 5, 6], encoder.Encode("Returns the value"));
        var x = encoder.Batch(["returns the value of the property", "gets"], ["a collection", "the values ."], maxLength: 9);
        Assert.Equal(9, x.SeqLen);
        // Row 0: 6 + 2 tokens over 9 − 3 = 6 → the longer first text loses two: [CLS] returns the value of [SEP] a collection [SEP].
        Assert.Equal([2, 10, 5, 6, 7, 3, 8, 13, 3], x.InputIds[..9]);
        Assert.Equal([0, 0, 0, 0, 0, 0, 1, 1, 1], x.TokenTypeIds[..9]);
        // Row 1: [CLS] gets [SEP] the value ##s . [SEP], padded by one.
        Assert.Equal([2, 11, 3, 5, 6, 12, 14, 3, 0], x.InputIds[9..]);
        Assert.Equal([1, 1, 1, 1, 1, 1, 1, 1, 0], x.AttentionMask[9..]);
    }

    [Fact]
    public void Papercuts_help_alone_devices_narrowed_infinite_rates_and_busy_folders()
    {
        var (code, stdout, _) = CliRunner.Run();
        Assert.Equal(0, code);
        Assert.Contains("pretrain", stdout); // the tool alone lists its commands

        (code, stdout, _) = CliRunner.Run("devices", "--device", "cpu");
        Assert.Equal(0, code);
        Assert.Contains("cpu:0", stdout);
        Assert.DoesNotContain("OpenCL ", stdout);
        (code, _, var err) = CliRunner.Run("devices", "--device", "cpu:7");
        Assert.Equal(2, code);
        Assert.Contains("no device cpu:7", err);

        File.WriteAllLines(dir.File("nocls.txt"), ["[PAD]", "[UNK]", "[SEP]", "[MASK]", "word"]);
        (code, _, err) = CliRunner.Run("init", "--vocab", dir.File("nocls.txt"), "--out", dir.File("nocls"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("nocls.txt: the vocabulary has no [CLS] token", err); // what every later verb would say, said at once
        Assert.False(Directory.Exists(dir.File("nocls")));

        (code, _, err) = CliRunner.Run("pretrain", "--size", "tinyy", "--out", dir.File("typo"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("unknown size \"tinyy\"", err);
        Assert.False(Directory.Exists(dir.File("typo"))); // refused before any work or any file

        (code, _, err) = CliRunner.Run("pretrain", "--lr", "Infinity", "--out", dir.File("p"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("--lr must be a positive number", err);

        using (OutputLock.Acquire(dir.File("busy")))
        {
            (code, _, err) = CliRunner.Run("pretrain", "--steps", "1", "--out", dir.File("busy"), "--device", "cpu");
            Assert.Equal(2, code);
            Assert.Contains("in use by another ilgpu-bert run", err);
        }
        Assert.Empty(Directory.GetFiles(dir.File("busy"))); // the lock goes with its holder

        Directory.CreateDirectory(dir.File("tuned"));
        File.WriteAllText(dir.File("tuned/eval.json"), "{}");
        (code, _, err) = CliRunner.Run("pretrain", "--steps", "1", "--out", dir.File("tuned"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("holds a fine-tuned model", err);
    }

    [Fact]
    public void An_existing_model_is_replaced_only_with_overwrite()
    {
        string model = InitTiny();
        byte[] weights = File.ReadAllBytes(Path.Combine(model, "model.safetensors"));
        string vocab = dir.File("vocab.txt");
        foreach (var args in new[]
                 {
                     new[] { "init", "--size", "tiny", "--vocab", vocab, "--seed", "4", "--out", model },
                     new[] { "pretrain", "--steps", "1", "--model", model, "--out", model },
                     new[] { "finetune", "--model", model, "--epochs", "1", "--out", model },
                     new[] { "prune", "--model", model, "--drop-layers", "0", "--out", model },
                 })
        {
            var (code, _, err) = CliRunner.Run([.. args, "--device", "cpu"]);
            Assert.Equal(2, code);
            Assert.Equal($"error: {model} already holds a model (config.json): choose another --out, or pass --overwrite to replace it", err.Trim());
            Assert.Equal(weights, File.ReadAllBytes(Path.Combine(model, "model.safetensors")));
        }
        var (replaced, _, error) = CliRunner.Run("init", "--size", "tiny", "--vocab", vocab, "--seed", "4", "--out", model, "--overwrite", "--device", "cpu");
        Assert.True(replaced == 0, error);
        Assert.NotEqual(weights, File.ReadAllBytes(Path.Combine(model, "model.safetensors")));
    }
}
