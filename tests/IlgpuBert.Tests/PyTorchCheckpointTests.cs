// pytorch_model.bin: the restricted unpickler against files real torch.save wrote (Fixtures/, made by
// make-pytorch-fixtures.py with PyTorch 1.13.1: both layouts, views, non-contiguous strides, half,
// bfloat16, double and int64 tensors), folders whose only weights are a pytorch_model.bin written
// from a known model (their outputs must equal the safetensors folder's), and pickles that name
// functions a state dict never needs (refused by name, nothing run).
using System.IO.Compression;
using System.Text.Json;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class PyTorchCheckpointTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    [Theory]
    [InlineData("pytorch-zip.bin")]
    [InlineData("pytorch-legacy.bin")]
    public void Files_written_by_torch_save_read_as_torch_holds_them(string name)
    {
        var tensors = PyTorchCheckpoint.Read(Fixture(name));
        using var expected = JsonDocument.Parse(File.ReadAllText(Fixture("pytorch-expected.json")));
        var names = expected.RootElement.EnumerateObject().Select(p => p.Name).ToList();
        Assert.Equal(names.Order(), tensors.Keys.Order());
        foreach (var p in expected.RootElement.EnumerateObject())
        {
            var t = tensors[p.Name];
            Assert.Equal(p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()), t.Shape);
            // Every value is the float torch holds (half, bfloat16 and int64 convert exactly; double rounds once).
            var values = p.Value.GetProperty("values").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
            Assert.True(values.SequenceEqual(t.Data), $"{p.Name}: values differ from torch's");
        }
        Assert.Equal(("F16", "BF16", "F64", "I64", "F32"),
            (tensors["half"].Dtype, tensors["bfloat16"].Dtype, tensors["double"].Dtype, tensors["bert.embeddings.position_ids"].Dtype, tensors["parameter"].Dtype));
    }

    [Fact]
    public void A_pickle_naming_os_system_is_refused_with_one_line_and_runs_nothing()
    {
        using var dir = new TempDir();
        // torch.save of an object whose __reduce__ is os.system (as a malicious checkpoint is made).
        var (_, evil) = Refusal(dir, File.ReadAllBytes(Fixture("pytorch-evil.bin")));
        Assert.Contains("posix.system", evil);
        // By hand: os.system("touch <marker>") as the whole pickle, in a zip laid out as torch.save's.
        string marker = dir.File("ran");
        var program = new TorchSave.Pickle().Global("os", "system").Str($"touch {marker}").Tuple1().Reduce().Stop().ToArray();
        var (code, err) = Refusal(dir, Zip(program));
        Assert.Contains("os.system", err);
        Assert.Contains("nothing in the file was run", err);
        Assert.False(File.Exists(marker), "the pickle's command ran");
        Assert.Equal(2, code);
    }

    /// <summary>Runs `forward` on a model folder whose pytorch_model.bin is <paramref name="bytes"/>; it must be refused with one line naming the file.</summary>
    private static (int Code, string Err) Refusal(TempDir dir, byte[] bytes)
    {
        string model = Small(dir.File("model-" + Guid.NewGuid().ToString("N")));
        File.Delete(Path.Combine(model, BertFolder.WeightsFile));
        File.WriteAllBytes(Path.Combine(model, PyTorchCheckpoint.FileName), bytes);
        string batch = dir.File("batch.json"), output = dir.File("out.json");
        File.WriteAllText(batch, """{"input_ids": [[2, 5, 3]]}""");
        var (code, stdout, err) = CliRunner.Run("forward", "--model", model, "--input", batch, "--out", output, "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.Contains(PyTorchCheckpoint.FileName, err);
        Assert.DoesNotContain("   at ", err);
        Assert.Equal("", stdout);
        Assert.False(File.Exists(output));
        return (code, err);
    }

    private static byte[] Zip(byte[] pickle)
    {
        var stream = new MemoryStream();
        using (var zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true))
        using (var s = zip.CreateEntry("archive/data.pkl").Open())
            s.Write(pickle);
        return stream.ToArray();
    }

    [Fact]
    public void Other_shapes_of_bad_file_are_refused_by_what_is_wrong()
    {
        using var dir = new TempDir();
        string Error(byte[] bytes)
        {
            string path = dir.File(PyTorchCheckpoint.FileName);
            File.WriteAllBytes(path, bytes);
            return Assert.Throws<CheckpointException>(() => PyTorchCheckpoint.Read(path)).Message;
        }
        var tar = new byte[1024];
        "ustar"u8.CopyTo(tar.AsSpan(257));
        Assert.Contains("tar checkpoint", Error(tar));
        Assert.Contains("not a PyTorch checkpoint", Error("{\"not\": 1}"u8.ToArray()));
        // A tensor that claims more elements than its storage holds.
        var good = new Dictionary<string, HostTensor> { ["w"] = new([2, 3], [1, 2, 3, 4, 5, 6]) };
        string path = dir.File("ok.bin");
        TorchSave.Write(path, good);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            zip.GetEntry("archive/data/0")!.Delete();
            using var s = zip.CreateEntry("archive/data/0").Open();
            s.Write(new byte[8]);
        }
        Assert.Contains("holds 8 bytes", Assert.Throws<CheckpointException>(() => PyTorchCheckpoint.Read(path)).Message);
        // A pickle that builds something other than a state dict.
        Assert.Contains("not a state dict", Error(Zip(new TorchSave.Pickle().EmptyList().Stop().ToArray())));
        Assert.Contains("is not a tensor", Error(Zip(new TorchSave.Pickle().EmptyDict().Str("w").Int(3).SetItem().Stop().ToArray())));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_folder_with_only_pytorch_model_bin_gives_the_safetensors_folders_outputs(bool legacy)
    {
        using var dir = new TempDir();
        string model = Small(dir.File("safetensors")), twin = Twin(model, dir.File("pytorch"), legacy);
        string batch = dir.File("batch.json");
        File.WriteAllText(batch, """{"input_ids": [[2, 5, 9, 3, 6, 3], [2, 7, 3, 0, 0, 0]], "attention_mask": [[1,1,1,1,1,1],[1,1,1,0,0,0]]}""");
        byte[] Forward(string folder)
        {
            string output = Path.Combine(folder, "out.json");
            var (code, _, err) = CliRunner.Run("forward", "--model", folder, "--input", batch, "--out", output, "--device", "cpu");
            Assert.True(code == 0, err);
            return File.ReadAllBytes(output);
        }
        Assert.Equal(Forward(model), Forward(twin));
    }

    [Fact]
    public void The_real_model_from_pytorch_model_bin_embeds_as_from_safetensors()
    {
        using var dir = new TempDir();
        string twin = Twin(RealModelTests.ImportedMiniLm.Value, dir.File("minilm"), legacy: false);
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        string[] texts = ["Gets the value of the property.", "The sky is blue today, and tomorrow?"];
        using var a = BertPipeline.Load(device, RealModelTests.ImportedMiniLm.Value);
        using var b = BertPipeline.Load(device, twin);
        var (x, y) = (a.Embed(texts), b.Embed(texts));
        for (int i = 0; i < texts.Length; i++) Assert.Equal(x[i], y[i]);
    }

    [Fact]
    public void What_TorchSave_writes_loads_in_real_torch()
    {
        const string python = "/usr/bin/python3";
        if (!File.Exists(python) || Exec(python, "-c \"import torch\"").Code != 0)
            Assert.Skip("PyTorch not found for /usr/bin/python3 (apt-get install python3-torch): the committed fixtures cover the reader");
        using var dir = new TempDir();
        var tensors = new Dictionary<string, HostTensor> { ["a.weight"] = new([2, 3], [1, -2, 3.5f, 4, 5, 6]), ["b"] = new([], [7]) };
        foreach (bool legacy in new[] { false, true })
        {
            string path = dir.File($"t{legacy}.bin");
            TorchSave.Write(path, tensors, legacy);
            var (code, output) = Exec(python, $"-c \"import torch; d = torch.load('{path}'); print(type(d).__name__, {{k: (list(v.shape), v.flatten().tolist()) for k, v in d.items()}})\"");
            Assert.True(code == 0, output);
            Assert.Equal("OrderedDict {'a.weight': ([2, 3], [1.0, -2.0, 3.5, 4.0, 5.0, 6.0]), 'b': ([], [7.0])}", output.Trim());
        }
    }

    private static (int Code, string Output) Exec(string file, string args)
    {
        var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    /// <summary>A small random BERT folder (config.json, model.safetensors, vocab.txt).</summary>
    internal static string Small(string dir)
    {
        Directory.CreateDirectory(dir);
        string vocab = Path.Combine(dir, "vocab-source.txt");
        File.WriteAllLines(vocab, Text.WordPieceTrainer.SpecialTokens.Concat(["the", "sky", "is", "blue", "##s", "value", "."]));
        var config = new BertConfig { VocabSize = 12, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 16 };
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var bert = new BertForPreTraining(device, config);
        bert.Parameters.Initialize(3);
        BertFolder.Save(bert, dir, vocab);
        File.Delete(vocab);
        return dir;
    }

    /// <summary>The folder's copy with its model.safetensors rewritten as pytorch_model.bin.</summary>
    internal static string Twin(string model, string dir, bool legacy)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(model).Where(f => Path.GetFileName(f) != BertFolder.WeightsFile))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        TorchSave.Write(Path.Combine(dir, PyTorchCheckpoint.FileName), SafeTensors.Read(Path.Combine(model, BertFolder.WeightsFile)), legacy);
        return dir;
    }
}
