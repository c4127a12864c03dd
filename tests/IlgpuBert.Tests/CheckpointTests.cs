using System.Buffers.Binary;
using System.Text;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("ilgpu-bert-test").FullName;
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() => Directory.Delete(Path, true);
}

public class CheckpointTests
{
    private static byte[] RawFile(string headerJson, byte[] data)
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    [Fact]
    public void Safetensors_round_trip_is_bit_identical_and_atomic()
    {
        using var dir = new TempDir();
        var rng = new Random(1);
        var tensors = new Dictionary<string, HostTensor>
        {
            ["b.weight"] = new([3, 5], Rand.Normal(rng, 15)),
            ["a.bias"] = new([7], Rand.Normal(rng, 7)),
            ["scalar"] = new([], [float.NaN]),
        };
        string path = dir.File("model.safetensors");
        SafeTensors.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var back = SafeTensors.Read(path);
        Assert.Equal(tensors.Keys.Order(), back.Keys.Order());
        foreach (var (name, t) in tensors)
        {
            Assert.Equal(t.Shape, back[name].Shape);
            Assert.Equal(t.Data.Select(BitConverter.SingleToInt32Bits), back[name].Data.Select(BitConverter.SingleToInt32Bits));
        }
        var bytes1 = File.ReadAllBytes(path);
        SafeTensors.Write(path, back, new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(bytes1, File.ReadAllBytes(path));
        Assert.Equal(0, (8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes1)) % 8);
        Assert.Single(Directory.GetFiles(dir.Path)); // no temporary file left behind
    }

    [Fact]
    public void Safetensors_reads_f16_and_bf16_by_converting()
    {
        using var dir = new TempDir();
        float[] values = [1.5f, -2.25f, 0.1f];
        var f16 = values.SelectMany(v => BitConverter.GetBytes((Half)v)).ToArray();
        var bf16 = values.SelectMany(v => BitConverter.GetBytes((ushort)(BitConverter.SingleToUInt32Bits(v) >> 16))).ToArray();
        string header = $"{{\"h\":{{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}},\"b\":{{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[6,12]}}}}";
        File.WriteAllBytes(dir.File("x.safetensors"), RawFile(header, [.. f16, .. bf16]));
        var t = SafeTensors.Read(dir.File("x.safetensors"));
        Assert.Equal(values.Select(v => (float)(Half)v), t["h"].Data);
        Assert.Equal([1.5f, -2.25f, BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(0.1f) & 0xFFFF0000)], t["b"].Data);
    }

    public static TheoryData<string, byte[]> BadFiles() => new()
    {
        { "truncated", new byte[] { 1, 2, 3 } },
        { "impossible", BitConverter.GetBytes(ulong.MaxValue / 2) },
        { "header: invalid JSON at line 1", RawFile("{\"a\":", []) },
        { "outside", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[4]) },
        { "needs 8 bytes", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", new byte[4]) },
        { "dtype I64", RawFile("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", new byte[8]) },
        { "malformed header entry", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", []) },
        { "malformed header entry", RawFile("{\"a\":7}", []) },
        { "header length right", OneShortHeaderLength() },
        { "overlap those of a", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", new byte[12]) },
        { "overlap", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[8]) },
        { "4 unused bytes before tensor a", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", new byte[8]) },
        { "key \"a\" appears twice", RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", new byte[4]) },
    };

    /// <summary>A file as we write it (header padded with spaces) whose header length is one less than written: every tensor would read one byte early.</summary>
    private static byte[] OneShortHeaderLength()
    {
        var bytes = RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}  ", [0, 0, 128, 63]);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, BinaryPrimitives.ReadUInt64LittleEndian(bytes) - 1);
        return bytes;
    }

    [Theory]
    [MemberData(nameof(BadFiles))]
    public void Bad_safetensors_are_named_errors(string expected, byte[] bytes)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointException>(() => SafeTensors.Read(path));
        Assert.Contains(expected, e.Message);
        Assert.Contains("bad.safetensors", e.Message);
    }

    [Fact]
    public void A_failed_write_leaves_the_old_file_and_no_temporary()
    {
        using var dir = new TempDir();
        string path = dir.File("m.safetensors");
        SafeTensors.Write(path, new Dictionary<string, HostTensor> { ["w"] = new([2], [1f, 2f]) });
        var before = File.ReadAllBytes(path);
        Assert.Throws<ArgumentException>(() => SafeTensors.Write(path, new Dictionary<string, HostTensor> { ["w"] = new([3], [1f, 2f]) }));
        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s => { s.WriteByte(1); throw new InvalidOperationException("crash"); }));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void Config_round_trips_hf_json_and_keeps_unknown_keys()
    {
        const string json = """
        {"architectures":["BertForMaskedLM"],"model_type":"bert","vocab_size":1000,"hidden_size":64,"num_hidden_layers":3,
         "num_attention_heads":4,"intermediate_size":256,"hidden_act":"gelu_new","hidden_dropout_prob":0.05,
         "attention_probs_dropout_prob":0.0,"max_position_embeddings":128,"type_vocab_size":2,"initializer_range":0.02,
         "layer_norm_eps":1e-12,"pad_token_id":0,"torch_dtype":"float32","id2label":{"0":"A","1":"B"}}
        """;
        var c = BertConfig.Parse(json);
        Assert.Equal((1000, 64, 3, 4, 256, 16), (c.VocabSize, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.IntermediateSize, c.HeadDim));
        Assert.Equal(Kernels.ActivationKind.GeluTanh, c.Activation);
        Assert.Equal(0.05f, c.HiddenDropoutProb);
        var again = BertConfig.Parse(c.ToJson());
        Assert.Equal(c.ToJson(), again.ToJson());
        Assert.Contains("\"torch_dtype\": \"float32\"", again.ToJson());
        Assert.Contains("BertForMaskedLM", again.ToJson());
        Assert.Contains("\"1\": \"B\"", again.ToJson());
    }

    [Theory]
    [InlineData("{\"hidden_size\":100,\"num_attention_heads\":3}", "does not divide")]
    [InlineData("{\"hidden_act\":\"swish\"}", "unsupported hidden_act")]
    [InlineData("{\"vocab_size\":\"many\"}", "vocab_size has the wrong type")]
    [InlineData("{\"vocab_size\":0}", "vocab_size must be positive")]
    [InlineData("[1,2]", "not a JSON object")]
    [InlineData("{\"vocab_size\":", "invalid JSON")]
    [InlineData("{\"layer_norm_eps\":1e39}", "layer_norm_eps must be in (0, 1)")]
    [InlineData("{\"vocab_size\":1000000000}", "would exceed")]
    [InlineData("{\"num_hidden_layers\":2147483647}", "parameters")]
    [InlineData("{\"initializer_range\":1e39}", "initializer_range")]
    public void Bad_configs_are_named_errors(string json, string expected) =>
        Assert.Contains(expected, Assert.Throws<CheckpointException>(() => BertConfig.Parse(json)).Message);

    [Theory]
    [InlineData("tiny", 2, 128, 2)]
    [InlineData("mini", 4, 256, 4)]
    [InlineData("small", 4, 512, 8)]
    [InlineData("medium", 8, 512, 8)]
    [InlineData("base", 12, 768, 12)]
    [InlineData("large", 24, 1024, 16)]
    public void Sizes_follow_Turc_et_al(string size, int layers, int hidden, int heads)
    {
        var c = BertConfig.ForSize(size).Validate();
        Assert.Equal((layers, hidden, heads, 4 * hidden), (c.NumHiddenLayers, c.HiddenSize, c.NumAttentionHeads, c.IntermediateSize));
    }

    [Fact]
    public void Weights_the_config_does_not_describe_and_ambiguous_names_are_refused()
    {
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = new BertConfig { VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 32 };
        using (var model = new BertForPreTraining(device, config))
        {
            model.Parameters.Initialize(1);
            BertFolder.Save(model, dir.Path);
        }
        string weights = dir.File(BertFolder.WeightsFile);
        File.WriteAllText(dir.File(BertFolder.ConfigFile), (config with { NumHiddenLayers = 1 }).ToJson());
        Assert.Contains("encoder layer 1 but config.json says num_hidden_layers 1", Assert.Throws<CheckpointException>(() => BertFolder.Load(device, dir.Path)).Message);

        File.WriteAllText(dir.File(BertFolder.ConfigFile), config.ToJson());
        var tensors = SafeTensors.Read(weights);
        tensors["bert.embeddings.LayerNorm.gamma"] = tensors["bert.embeddings.LayerNorm.weight"] with { Data = [.. tensors["bert.embeddings.LayerNorm.weight"].Data.Select(v => v + 1)] };
        SafeTensors.Write(weights, tensors);
        var e = Assert.Throws<CheckpointException>(() => BertFolder.Load(device, dir.Path));
        Assert.Contains("two tensors are bert.embeddings.LayerNorm.weight", e.Message);
    }

    [Fact]
    public void Non_finite_weights_are_neither_loaded_nor_written()
    {
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = new BertConfig { VocabSize = 50, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 32 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(1);
        BertFolder.Save(model, dir.Path);
        string weights = dir.File(BertFolder.WeightsFile);
        var good = File.ReadAllBytes(weights);
        var tensors = SafeTensors.Read(weights);
        tensors["bert.pooler.dense.bias"].Data[3] = float.NaN;
        SafeTensors.Write(dir.File("nan.safetensors"), tensors);
        var e = Assert.Throws<CheckpointException>(() => model.Parameters.Load(dir.File("nan.safetensors")));
        Assert.Contains("tensor bert.pooler.dense.bias holds 1 NaN or infinite value", e.Message);

        model.Parameters.Set("bert.pooler.dense.bias", [.. tensors["bert.pooler.dense.bias"].Data]);
        e = Assert.Throws<CheckpointException>(() => BertFolder.Save(model, dir.Path));
        Assert.Contains("not written: parameter bert.pooler.dense.bias", e.Message);
        Assert.Equal(good, File.ReadAllBytes(weights));
        Assert.Throws<CheckpointException>(() => BertFolder.Save(model, dir.File("new")));
        Assert.False(Directory.Exists(dir.File("new"))); // a folder the failed save created is not left half-written

        Directory.CreateDirectory(dir.File("checkpoint-5.tmp"));
        foreach (var f in Directory.GetFiles(dir.Path)) File.Copy(f, System.IO.Path.Combine(dir.File("checkpoint-5.tmp"), System.IO.Path.GetFileName(f)));
        Assert.Contains("unfinished checkpoint", Assert.Throws<CheckpointException>(() => BertFolder.Load(device, dir.File("checkpoint-5.tmp"))).Message);
    }

    [Fact]
    public void Endless_blocking_or_huge_files_are_refused_at_once()
    {
        using var dir = new TempDir();
        File.CreateSymbolicLink(dir.File(BertFolder.ConfigFile), "/dev/zero");
        Assert.Equal($"{dir.File(BertFolder.ConfigFile)}: a device, not a config.json file",
            Assert.Throws<CheckpointException>(() => BertConfig.Read(dir.File(BertFolder.ConfigFile))).Message);
        File.CreateSymbolicLink(dir.File("vocab.txt"), "/dev/urandom");
        Assert.Contains("a device", Assert.Throws<CheckpointException>(() => Text.WordPiece.ReadVocabulary(dir.File("vocab.txt"))).Message);
        using (var big = File.Create(dir.File("big.json"))) big.SetLength(BoundedFile.ConfigBytes + 1L);
        Assert.Contains("larger than", Assert.Throws<CheckpointException>(() => BertConfig.Read(dir.File("big.json"))).Message);

        // A FIFO would block the open until something writes to it: refused before opening. The
        // reads run on a task so that a regression fails the test instead of hanging the suite.
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", dir.File("fifo"))) mkfifo.WaitForExit();
        foreach (var read in new Action[] { () => BertConfig.Read(dir.File("fifo")), () => SafeTensors.Read(dir.File("fifo")), () => Text.WordPiece.ReadVocabulary(dir.File("fifo")) })
        {
            var task = Task.Run(() => Record.Exception(read));
            Assert.True(task.Wait(TimeSpan.FromSeconds(10)), "reading a FIFO blocked");
            Assert.Contains("a FIFO (named pipe), not a", Assert.IsType<CheckpointException>(task.Result).Message);
        }
    }

    [Fact]
    public void A_vocabulary_longer_than_the_embedding_table_is_refused_naming_the_file()
    {
        using var dir = new TempDir();
        var tokens = Text.WordPieceTrainer.SpecialTokens.Concat(["the", "a"]).ToList();
        new BertConfig { VocabSize = tokens.Count, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2, IntermediateSize = 32 }.Write(dir.File(BertFolder.ConfigFile));
        File.WriteAllLines(dir.File(BertFolder.VocabFile), tokens);
        Assert.Equal(tokens.Count, Text.BertTextEncoder.Load(dir.Path).VocabSize);
        File.WriteAllLines(dir.File(BertFolder.VocabFile), tokens.Append("of"));
        Assert.Equal($"{dir.File(BertFolder.VocabFile)}: 8 tokens, more than config.json's vocab_size 7 (ids from 7 on have no embedding)",
            Assert.Throws<CheckpointException>(() => Text.BertTextEncoder.Load(dir.Path)).Message);
    }

    [Fact]
    public void Json_inputs_are_strict_and_their_errors_one_line_naming_the_file_and_place()
    {
        string Error(string json) => Assert.Throws<CheckpointException>(() => StrictJson.Parse(json, "f.json")).Message;
        Assert.Equal("f.json: key \"hidden_size\" appears twice in the top level", Error("{\"hidden_size\": 1, \"hidden_size\": 2}"));
        Assert.Equal("f.json: key \"x\" appears twice in \"a\"[1]", Error("{\"a\": [{}, {\"x\": 1, \"x\": 1}]}"));
        Assert.Contains("lone UTF-16 surrogate", Error("{\"a\": \"\\udc00\"}"));
        // The parser's own message quotes the rest of the document for a bad literal: cut to one short line.
        string literal = Error("{\"a\": tru\n" + new string('x', 500) + "\n}");
        Assert.StartsWith("f.json: invalid JSON at line 1, byte ", literal);
        Assert.DoesNotContain("\n", literal);
        Assert.True(literal.Length < 200, literal);
        Assert.Equal(2, StrictJson.Parse("{\"a\": [1, 2]}", "f.json")!["a"]!.AsArray().Count);
    }
}
