// sentence-transformers folders: embed follows modules.json with no flags. The real model
// (all-MiniLM-L6-v2) laid out as a sentence-transformers folder with CLS pooling + Normalize and with
// mean pooling is checked against ONNX Runtime's last hidden state pooled here in double precision;
// every other pooling mode, Dense, prompts and include_prompt against a plain reference over our own
// hidden states; bad folders are refused by name.
using System.Text.Json;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class SentenceTransformerTests
{
    /// <summary>A sentence-transformers folder in <paramref name="dir"/>: the HF folder's files at its root, then the modules.</summary>
    internal static string MakeFolder(string dir, string hfFolder, object pooling, bool normalize, object? sentenceBertConfig = null,
        object? stConfig = null, (int In, int Out, string Activation, float[] W, float[]? B)? dense = null)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(hfFolder)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), true);
        var modules = new List<object> { new { idx = 0, name = "0", path = "", type = "sentence_transformers.models.Transformer" } };
        Directory.CreateDirectory(Path.Combine(dir, "1_Pooling"));
        File.WriteAllText(Path.Combine(dir, "1_Pooling", "config.json"), JsonSerializer.Serialize(pooling));
        modules.Add(new { idx = 1, name = "1", path = "1_Pooling", type = "sentence_transformers.models.Pooling" });
        if (dense is { } d)
        {
            string denseDir = Path.Combine(dir, "2_Dense");
            Directory.CreateDirectory(denseDir);
            File.WriteAllText(Path.Combine(denseDir, "config.json"), JsonSerializer.Serialize(new
            {
                in_features = d.In, out_features = d.Out, bias = d.B is not null, activation_function = d.Activation,
            }));
            var tensors = new Dictionary<string, HostTensor> { ["linear.weight"] = new([d.Out, d.In], d.W) };
            if (d.B is not null) tensors["linear.bias"] = new([d.Out], d.B);
            SafeTensors.Write(Path.Combine(denseDir, "model.safetensors"), tensors);
            modules.Add(new { idx = 2, name = "2", path = "2_Dense", type = "sentence_transformers.models.Dense" });
        }
        if (normalize)
        {
            Directory.CreateDirectory(Path.Combine(dir, "3_Normalize"));
            modules.Add(new { idx = modules.Count, name = $"{modules.Count}", path = "3_Normalize", type = "sentence_transformers.models.Normalize" });
        }
        File.WriteAllText(Path.Combine(dir, "modules.json"), JsonSerializer.Serialize(modules));
        if (sentenceBertConfig is not null) File.WriteAllText(Path.Combine(dir, "sentence_bert_config.json"), JsonSerializer.Serialize(sentenceBertConfig));
        if (stConfig is not null) File.WriteAllText(Path.Combine(dir, "config_sentence_transformers.json"), JsonSerializer.Serialize(stConfig));
        return dir;
    }

    private static double[] Normalized(IEnumerable<double> v)
    {
        var a = v.ToArray();
        double n = Math.Sqrt(a.Sum(x => x * x));
        return a.Select(x => x / n).ToArray();
    }

    private static double Cosine(double[] a, float[] b) =>
        a.Zip(b, (x, y) => x * y).Sum() / Math.Sqrt(a.Sum(x => x * x) * b.Sum(y => (double)y * y));

    [Theory]
    [InlineData("cls")]
    [InlineData("mean")]
    public void A_sentence_transformers_folder_embeds_as_its_modules_say_with_no_flags(string mode)
    {
        using var dir = new TempDir();
        string folder = MakeFolder(dir.File("st"), RealModelTests.ImportedMiniLm.Value,
            new { word_embedding_dimension = 384, pooling_mode_cls_token = mode == "cls", pooling_mode_mean_tokens = mode == "mean" }, normalize: true,
            sentenceBertConfig: new { max_seq_length = 256, do_lower_case = false });
        string[] texts = RealModelTests.Sentences[..12];
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, folder);
        Assert.Equal(mode == "cls" ? PoolingModes.Cls : PoolingModes.Mean, pipeline.Sentence.Pooling);
        Assert.True(pipeline.Sentence.Normalize);
        Assert.Equal(256, pipeline.Sentence.MaxSeqLength);
        var got = pipeline.Embed(texts);
        var encoder = BertTextEncoder.Load(folder);
        for (int i = 0; i < texts.Length; i++)
        {
            // ONNX Runtime on the original graph, pooled here in double precision.
            var inputs = encoder.Batch([texts[i]]);
            var hidden = RealModelTests.RunOnnx(MiniLm.Onnx, inputs, "last_hidden_state", out _); // [1, S, 384]
            int s = inputs.SeqLen;
            var expected = Normalized(Enumerable.Range(0, 384).Select(d => mode == "cls" ? hidden[d] : Enumerable.Range(0, s).Average(t => (double)hidden[t * 384 + d])));
            double cosine = Cosine(expected, got[i]);
            Assert.True(cosine >= 1 - 1e-5, $"\"{texts[i]}\": cosine {cosine:F7} to ONNX Runtime's {mode} vector");
            Assert.Equal(1.0, Math.Sqrt(got[i].Sum(v => (double)v * v)), 5);
        }
        // The CLI, with no flags, prints the same vectors; a flag that overrides the folder says so.
        File.WriteAllLines(dir.File("texts.txt"), texts[..3]);
        var (code, stdout, err) = CliRunner.Run("embed", "--model", folder, "--input", dir.File("texts.txt"), "--device", "cpu");
        Assert.True(code == 0, err);
        var lines = stdout.Trim().Split('\n').Select(l => JsonSerializer.Deserialize<float[]>(l)!).ToArray();
        for (int i = 0; i < 3; i++) Assert.True(BertPipeline.Cosine(lines[i], got[i]) >= 1 - 1e-6);
        Assert.DoesNotContain("override", err);
        (code, _, err) = CliRunner.Run("embed", "--model", folder, "--input", dir.File("texts.txt"), "--pooling", mode == "cls" ? "mean" : "cls", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("flags override the folder's", err);
    }

    [Fact]
    public void A_plain_HF_folder_embeds_by_mean_pooling_and_L2_normalisation_everywhere()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, RealModelTests.ImportedMiniLm.Value);
        Assert.False(pipeline.Sentence.FromModules);
        var v = pipeline.Embed(["A man is eating food."])[0];
        var unnormalised = pipeline.Embed(["A man is eating food."], normalize: false)[0];
        Assert.Equal(1.0, Math.Sqrt(v.Sum(x => (double)x * x)), 5);
        Assert.NotEqual(1.0, Math.Sqrt(unnormalised.Sum(x => (double)x * x)), 2);
        Assert.True(BertPipeline.Cosine(v, unnormalised) >= 1 - 1e-6);
        var (code, stdout, err) = CliRunner.Run("embed", "--model", RealModelTests.ImportedMiniLm.Value, "--device", "cpu", "--input", WriteTemp("A man is eating food."));
        Assert.True(code == 0, err);
        var cli = JsonSerializer.Deserialize<float[]>(stdout.Trim())!;
        Assert.Equal(v, cli); // the CLI's default and the C# API's are one rule
    }

    private static string WriteTemp(string line)
    {
        string path = Path.Combine(Path.GetTempPath(), $"ilgpu-bert-line-{Guid.NewGuid():N}.txt");
        File.WriteAllText(path, line + "\n");
        return path;
    }

    /// <summary>sentence-transformers' Pooling.forward and Dense, written out for one row of hidden states [S, H].</summary>
    private static double[] ReferencePool(float[] hidden, int[] mask, int s, int h, string[] modes, int promptLength, bool includePrompt)
    {
        var keep = Enumerable.Range(0, s).Select(i => mask[i] == 1 && (includePrompt || i >= promptLength)).ToArray();
        double At(int i, int d) => hidden[i * h + d];
        var parts = new List<double[]>();
        foreach (var mode in modes)
        {
            var kept = Enumerable.Range(0, s).Where(i => keep[i]).ToArray();
            parts.Add(Enumerable.Range(0, h).Select(d => mode switch
            {
                "cls" => At(0, d),
                "max" => kept.Max(i => At(i, d)),
                "mean" => kept.Sum(i => At(i, d)) / kept.Length,
                "mean_sqrt_len" => kept.Sum(i => At(i, d)) / Math.Sqrt(kept.Length),
                "weightedmean" => kept.Sum(i => (i + 1) * At(i, d)) / kept.Sum(i => i + 1.0),
                "lasttoken" => At(kept[^1], d),
                _ => throw new ArgumentException(mode),
            }).ToArray());
        }
        return parts.SelectMany(p => p).ToArray();
    }

    [Theory]
    [InlineData("max", true)]
    [InlineData("mean_sqrt_len", true)]
    [InlineData("weightedmean", true)]
    [InlineData("lasttoken", true)]
    [InlineData("cls,max,mean", true)]
    [InlineData("mean", false)]
    [InlineData("weightedmean,lasttoken", false)]
    public void Every_pooling_mode_with_Dense_and_prompts_matches_the_reference(string modeList, bool includePrompt)
    {
        string[] modes = modeList.Split(',');
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = new BertConfig { VocabSize = 60, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 24, MaxPositionEmbeddings = 40 };
        string hf = dir.File("hf");
        using (var model = new BertForPreTraining(device, config))
        {
            model.Parameters.Initialize(5);
            File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Enumerable.Range(0, 55).Select(i => $"w{i}")));
            BertFolder.Save(model, hf, dir.File("vocab.txt"));
        }
        int pooledWidth = 16 * modes.Length, outWidth = 5;
        var rng = new Random(3);
        float[] w = Enumerable.Range(0, outWidth * pooledWidth).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        float[] b = Enumerable.Range(0, outWidth).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var pooling = new Dictionary<string, object>
        {
            ["word_embedding_dimension"] = 16, ["include_prompt"] = includePrompt,
            ["pooling_mode_cls_token"] = modes.Contains("cls"), ["pooling_mode_max_tokens"] = modes.Contains("max"),
            ["pooling_mode_mean_tokens"] = modes.Contains("mean"), ["pooling_mode_mean_sqrt_len_tokens"] = modes.Contains("mean_sqrt_len"),
            ["pooling_mode_weightedmean_tokens"] = modes.Contains("weightedmean"), ["pooling_mode_lasttoken"] = modes.Contains("lasttoken"),
        };
        string folder = MakeFolder(dir.File("st"), hf, pooling, normalize: true,
            stConfig: new { prompts = new Dictionary<string, string> { ["query"] = "w1 w2 ", ["passage"] = "w3 " }, default_prompt_name = "query" },
            dense: (pooledWidth, outWidth, "torch.nn.modules.activation.Tanh", w, b));
        string[] texts = ["w5 w6 w7 w8", "w9", "w10 w11 w12 w13 w14 w15 w16 w17", "w20 w21 w22"];
        using var pipeline = BertPipeline.Load(device, folder);
        Assert.Equal("query", pipeline.Sentence.DefaultPromptName);
        var got = pipeline.Embed(texts, batchSize: 3); // two batches, each padded to its longest row
        var encoder = BertTextEncoder.Load(folder);
        for (int t = 0; t < texts.Length; t++)
        {
            var inputs = encoder.Batch(["w1 w2 " + texts[t]]); // the default prompt, prepended
            var hidden = pipeline.Encode(inputs);
            var pooled = ReferencePool(hidden, inputs.AttentionMask, inputs.SeqLen, 16, modes, promptLength: 3, includePrompt); // [CLS] w1 w2
            var dense = Enumerable.Range(0, outWidth).Select(o => Math.Tanh(b[o] + Enumerable.Range(0, pooledWidth).Sum(i => (double)w[o * pooledWidth + i] * pooled[i])));
            var expected = Normalized(dense);
            for (int d = 0; d < outWidth; d++)
                Assert.True(Math.Abs(got[t][d] - expected[d]) <= 1e-5, $"{modeList} text {t} [{d}]: {got[t][d]} vs {expected[d]}");
        }
        // Another named prompt changes the vector; an unknown one is refused naming the ones there are.
        Assert.NotEqual(got[0], pipeline.Embed([texts[0]], prompt: "passage")[0]);
        Assert.Equal(pipeline.Embed([texts[0]], prompt: "passage")[0], pipeline.Embed([texts[0]], promptText: "w3 ")[0]);
        var e = Assert.Throws<ArgumentException>(() => pipeline.Embed(["w5"], prompt: "document"));
        Assert.Contains("query, passage", e.Message);

        // export --sentence-transformers writes the same model back: read again, it embeds identically.
        string exported = dir.File("exported");
        var (code, stdout, err) = CliRunner.Run("export", "--model", folder, "--out", exported, "--sentence-transformers");
        Assert.True(code == 0, err);
        Assert.Contains("Dense 48→5 Tanh".Replace("48", $"{pooledWidth}"), stdout);
        using var again = BertPipeline.Load(device, exported);
        Assert.Equal(pipeline.Sentence.Describe(), again.Sentence.Describe());
        Assert.Equal(pipeline.Sentence.Pooling, again.Sentence.Pooling);
        Assert.Equal(pipeline.Sentence.Prompts, again.Sentence.Prompts);
        var gotAgain = again.Embed(texts, batchSize: 3);
        for (int t = 0; t < texts.Length; t++) Assert.Equal(got[t], gotAgain[t]);
    }

    [Fact]
    public void Export_writes_the_layout_sentence_transformers_saves_and_embeds_as_the_source()
    {
        using var dir = new TempDir();
        string source = RealModelTests.ImportedMiniLm.Value, exported = dir.File("st");
        var (code, stdout, err) = CliRunner.Run("export", "--model", source, "--out", exported, "--sentence-transformers");
        Assert.True(code == 0, err);
        Assert.Contains("mean pooling, L2-normalised", stdout);
        // What SentenceTransformer.save writes for a Transformer + Pooling + Normalize model.
        using var modules = JsonDocument.Parse(File.ReadAllText(Path.Combine(exported, "modules.json")));
        Assert.Equal(["0::sentence_transformers.models.Transformer", "1:1_Pooling:sentence_transformers.models.Pooling", "2:2_Normalize:sentence_transformers.models.Normalize"],
            modules.RootElement.EnumerateArray().Select(m => $"{m.GetProperty("idx").GetInt32()}:{m.GetProperty("path").GetString()}:{m.GetProperty("type").GetString()}"));
        using var pooling = JsonDocument.Parse(File.ReadAllText(Path.Combine(exported, "1_Pooling", "config.json")));
        Assert.Equal(384, pooling.RootElement.GetProperty("word_embedding_dimension").GetInt32());
        Assert.True(pooling.RootElement.GetProperty("pooling_mode_mean_tokens").GetBoolean());
        using var sbert = JsonDocument.Parse(File.ReadAllText(Path.Combine(exported, "sentence_bert_config.json")));
        Assert.Equal(512, sbert.RootElement.GetProperty("max_seq_length").GetInt32());
        foreach (var f in new[] { "config.json", "model.safetensors", "vocab.txt" }) Assert.True(File.Exists(Path.Combine(exported, f)), f);

        string texts = dir.File("texts.txt");
        File.WriteAllLines(texts, ["A man is eating food.", "Gets the value of the property."]);
        string Embed(params string[] args) => CliRunner.Run(["embed", "--input", texts, "--device", "cpu", .. args]).Out;
        Assert.Equal(Embed("--model", source), Embed("--model", exported));
        // Overrides are written into the folder: CLS, not normalised, embeds as those flags do on the source.
        string cls = dir.File("cls");
        (code, stdout, err) = CliRunner.Run("export", "--model", source, "--out", cls, "--sentence-transformers", "--pooling", "cls", "--no-normalize");
        Assert.True(code == 0, err);
        Assert.False(Directory.Exists(Path.Combine(cls, "2_Normalize")));
        Assert.Equal(Embed("--model", source, "--pooling", "cls", "--no-normalize"), Embed("--model", cls));
        // An existing model is not replaced without --overwrite; the flag is needed.
        (code, _, err) = CliRunner.Run("export", "--model", source, "--out", cls, "--sentence-transformers");
        Assert.Equal(2, code);
        Assert.Contains("--overwrite", err);
        (code, _, err) = CliRunner.Run("export", "--model", source, "--out", dir.File("x"));
        Assert.Equal(2, code);
        Assert.Contains("--sentence-transformers", err);
    }

    public static TheoryData<string, string, string> BadFolders() => new()
    {
        { "unknown module", """[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"","type":"sentence_transformers.models.LSTM"}]""", "sentence_transformers.models.LSTM is not supported" },
        { "custom module", """[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"","type":"my_package.Pooler"}]""", "my_package.Pooler is not supported" },
        { "outside", """[{"idx":0,"name":"0","path":"../..","type":"sentence_transformers.models.Transformer"}]""", "leads outside the model folder" },
        { "no pooling", """[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"}]""", "no sentence_transformers.models.Pooling module" },
        { "not an array", """{"type":"sentence_transformers.models.Transformer"}""", "expected a JSON array" },
        { "pooling first", """[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Pooling"}]""", "Pooling before any Transformer" },
    };

    [Theory]
    [MemberData(nameof(BadFolders))]
    public void A_bad_modules_json_is_refused_by_name(string what, string modules, string message)
    {
        _ = what;
        using var dir = new TempDir();
        string folder = MakeFolder(dir.File("st"), RealModelTests.ImportedMiniLm.Value, new { pooling_mode_mean_tokens = true }, normalize: false);
        File.WriteAllText(Path.Combine(folder, "modules.json"), modules);
        var (code, _, err) = CliRunner.Run("embed", "--model", folder, "--input", WriteTemp("a text"), "--device", "cpu");
        Assert.NotEqual(0, code);
        Assert.Contains(message, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void A_Dense_module_with_an_unsupported_activation_or_shape_is_refused()
    {
        using var dir = new TempDir();
        string folder = MakeFolder(dir.File("st"), RealModelTests.ImportedMiniLm.Value, new { pooling_mode_mean_tokens = true }, normalize: true,
            dense: (384, 2, "torch.nn.modules.activation.Softplus", new float[768], null));
        var e = Assert.Throws<CheckpointException>(() => SentenceTransformer.Read(folder));
        Assert.Contains("activation_function torch.nn.modules.activation.Softplus is not supported", e.Message);
        folder = MakeFolder(dir.File("st2"), RealModelTests.ImportedMiniLm.Value, new { pooling_mode_mean_tokens = true }, normalize: true,
            dense: (100, 2, "torch.nn.modules.activation.Tanh", new float[200], null));
        e = Assert.Throws<CheckpointException>(() => SentenceTransformer.Read(folder));
        Assert.Contains("takes 100 inputs but the pooling gives 384", e.Message);
    }
}
