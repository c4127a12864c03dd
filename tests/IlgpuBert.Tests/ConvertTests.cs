// Checkpoints in 16-bit dtypes: bfloat16 rounding against a definition of round-to-nearest-even
// (ties, carries into the exponent, overflow, subnormals, NaN), F16 the same through the file, and
// `convert`: a model written as BF16 / F16 loads with exactly the rounded weights, F32 is bit for bit,
// values F16 cannot hold are refused with nothing left behind, and the folder's other files follow.
using IlgpuBert.Checkpoints;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class ConvertTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>Round to nearest, ties to even, by comparing the two neighbours in double: the definition, not the bit trick (finite results only).</summary>
    private static ushort ReferenceBf16(float v)
    {
        uint bits = BitConverter.SingleToUInt32Bits(v);
        ushort down = (ushort)(bits >> 16), up = (ushort)(down + 1); // toward zero, away from zero
        double Value(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
        double dd = Math.Abs(v - Value(down)), du = Math.Abs(v - Value(up));
        return dd < du ? down : du < dd ? up : (down & 1) == 0 ? down : up;
    }

    [Fact]
    public void Bfloat16_rounds_to_nearest_with_ties_to_even()
    {
        float F(uint bits) => BitConverter.UInt32BitsToSingle(bits);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to the even one, 1. 1 + 3·2⁻⁸: halfway, to 1 + 2⁻⁶ (even).
        Assert.Equal(0x3F80, BFloat16.Round(1f + MathF.Pow(2, -8)));
        Assert.Equal(0x3F82, BFloat16.Round(1f + 3 * MathF.Pow(2, -8)));
        Assert.Equal(0x3F81, BFloat16.Round(F(0x3F808001))); // just above the tie: up
        Assert.Equal(0xBF82, BFloat16.Round(-(1f + 3 * MathF.Pow(2, -8)))); // the sign plays no part
        Assert.Equal(0x4000, BFloat16.Round(F(0x3FFFFFFF))); // the carry runs into the exponent: 2
        Assert.Equal(0x7F80, BFloat16.Round(float.MaxValue)); // beyond the largest finite BF16's half step: ∞
        Assert.Equal(0x7F7F, BFloat16.Round(F(0x7F7F7FFF)));
        Assert.Equal(0x0001, BFloat16.Round(F(0x00008001))); // subnormals round the same way
        Assert.Equal(0x0000, BFloat16.Round(F(0x00008000)));
        Assert.Equal(0xFF80, BFloat16.Round(float.NegativeInfinity));
        Assert.True(float.IsNaN(BitConverter.UInt32BitsToSingle((uint)BFloat16.Round(F(0x7F800001)) << 16))); // a NaN whose payload sits in the low half stays NaN
        var rng = new Random(5);
        for (int i = 0; i < 200_000; i++)
        {
            uint bits = (uint)rng.NextInt64(0, 1L << 32);
            if (i % 4 == 0) bits = (bits & 0xFFFF0000) | 0x8000; // a tie, half of the time below an odd mantissa
            float v = F(bits);
            if (!float.IsFinite(v) || (bits & 0x7FFFFFFF) >= 0x7F7F8000) continue;
            Assert.True(ReferenceBf16(v) == BFloat16.Round(v), $"{v} ({bits:X8}): {BFloat16.Round(v):X4}, nearest-even {ReferenceBf16(v):X4}");
        }
    }

    [Fact]
    public void F16_and_BF16_tensors_are_written_rounded_and_read_back_and_out_of_range_values_are_refused()
    {
        float[] values = [1f + MathF.Pow(2, -11), 1f + 3 * MathF.Pow(2, -11), 65504f, MathF.Pow(2, -25), 3 * MathF.Pow(2, -25), -0f, float.NaN];
        string path = dir.File("t.safetensors");
        SafeTensors.Write(path, new Dictionary<string, HostTensor> { ["h"] = new([values.Length], values, "F16"), ["b"] = new([values.Length], values, "BF16") });
        var back = SafeTensors.Read(path);
        // F16: ties to even (1, then 1 + 2⁻⁹), 65504 exact, the subnormal ties to 0 and to 2⁻²³.
        Assert.Equal([1f, 1f + MathF.Pow(2, -9), 65504f, 0f, MathF.Pow(2, -23), -0f], back["h"].Data[..6]);
        Assert.True(float.IsNegative(back["h"].Data[5]));
        Assert.True(float.IsNaN(back["h"].Data[6]) && float.IsNaN(back["b"].Data[6]));
        Assert.Equal(values[..6].Select(v => BitConverter.UInt32BitsToSingle((uint)BFloat16.Round(v) << 16)), back["b"].Data[..6]);
        Assert.Equal(8 + 2 * 2 * values.Length, new FileInfo(path).Length - HeaderLength(path));

        var e = Assert.Throws<ArgumentException>(() => SafeTensors.Write(dir.File("x.safetensors"), new Dictionary<string, HostTensor> { ["w"] = new([2], [1f, 65520f], "F16") }));
        Assert.Contains("beyond F16's range", e.Message);
        e = Assert.Throws<ArgumentException>(() => SafeTensors.Write(dir.File("x.safetensors"), new Dictionary<string, HostTensor> { ["w"] = new([1], [float.MaxValue], "BF16") }));
        Assert.Contains("beyond BF16's range", e.Message);
        Assert.False(File.Exists(dir.File("x.safetensors")));
    }

    private static long HeaderLength(string path)
    {
        using var f = File.OpenRead(path);
        var b = new byte[8];
        f.ReadExactly(b);
        return (long)BitConverter.ToUInt64(b);
    }

    [Fact]
    public void A_converted_model_loads_with_exactly_the_rounded_weights_and_the_folder_s_files_follow()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        string source = FineTuningTests.PretrainedModel(dir, device);
        Directory.CreateDirectory(Path.Combine(source, "1_Pooling"));
        File.WriteAllText(Path.Combine(source, "1_Pooling", "config.json"), "{\"pooling_mode_mean_tokens\": true}");
        var original = BertFolder.ReadWeights(source);
        foreach (var (dtype, round) in new (string, Func<float, float>)[]
        {
            ("BF16", v => BitConverter.UInt32BitsToSingle((uint)BFloat16.Round(v) << 16)),
            ("F16", v => (float)(Half)v),
            ("F32", v => v),
        })
        {
            string target = dir.File("as-" + dtype);
            Assert.Equal(original.Count, BertFolder.Convert(source, dtype, target));
            using var file = SafeTensorsFile.Open(Path.Combine(target, BertFolder.WeightsFile));
            Assert.All(file.Entries.Values, entry => Assert.Equal(dtype, entry.Dtype));
            using var model = BertFolder.Load(device, target);
            foreach (var (name, t) in original)
            {
                var expected = t.Data.Select(round).ToArray();
                var got = model.Parameters.Get(name);
                Assert.True(expected.AsSpan().SequenceEqual(got), $"{dtype} {name}: the loaded weights are not the rounded originals");
            }
            Assert.Equal(File.ReadAllText(Path.Combine(source, BertFolder.VocabFile)), File.ReadAllText(Path.Combine(target, BertFolder.VocabFile)));
            Assert.True(File.Exists(Path.Combine(target, "1_Pooling", "config.json")));
            Assert.Equal(BertFolder.TorchDtypes[dtype], BertConfig.Read(Path.Combine(target, BertFolder.ConfigFile)).Extra["torch_dtype"]!.GetValue<string>());
        }
        Assert.True(new FileInfo(dir.File("as-BF16/model.safetensors")).Length < 0.51 * new FileInfo(dir.File("as-F32/model.safetensors")).Length + 4096);
        // F32 is the same numbers: bit for bit.
        Assert.True(SafeTensors.Read(dir.File("as-F32/model.safetensors")).All(t => t.Value.Data.AsSpan().SequenceEqual(original[t.Key].Data)));

        // A weight F16 cannot hold: refused, and no folder is left behind.
        var huge = original.ToDictionary(t => t.Key, t => t.Value);
        huge["bert.embeddings.word_embeddings.weight"] = huge["bert.embeddings.word_embeddings.weight"] with { Data = huge["bert.embeddings.word_embeddings.weight"].Data.Select((v, i) => i == 3 ? 1e6f : v).ToArray() };
        SafeTensors.Write(Path.Combine(source, BertFolder.WeightsFile), huge);
        var e = Assert.Throws<ArgumentException>(() => BertFolder.Convert(source, "F16", dir.File("huge")));
        Assert.Contains("beyond F16's range", e.Message);
        Assert.False(Directory.Exists(dir.File("huge")));
        Assert.Throws<ArgumentException>(() => BertFolder.Convert(source, "F32", source));
    }

    [Fact]
    public void The_cli_converts_and_refuses_bad_requests_with_one_line()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        string source = FineTuningTests.PretrainedModel(dir, device);
        var (code, stdout, err) = CliRunner.Run("convert", "--model", source, "--dtype", "bf16", "--out", dir.File("bf16"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("as BF16", stdout);
        (code, _, err) = CliRunner.Run("forward", "--model", dir.File("bf16"), "--input", WriteBatch(), "--out", dir.File("o.safetensors"), "--device", "cpu");
        Assert.True(code == 0, err);
        foreach (var args in new[]
        {
            new[] { "convert", "--model", source, "--dtype", "int4", "--out", dir.File("x") },
            ["convert", "--model", source, "--dtype", "f16", "--out", dir.File("bf16")], // holds a model already
            ["convert", "--model", dir.File("nowhere"), "--dtype", "f16", "--out", dir.File("x")],
        })
        {
            (code, _, err) = CliRunner.Run([.. args, "--device", "cpu"]);
            Assert.True(code == 2, $"{string.Join(" ", args)}: exit {code}\n{err}");
            Assert.Single(err.Trim().Split('\n'));
            Assert.False(Directory.Exists(dir.File("x")));
        }
    }

    private string WriteBatch()
    {
        string path = dir.File("batch.json");
        File.WriteAllText(path, "{\"input_ids\": [[2, 7, 9, 3]], \"token_type_ids\": [[0, 0, 0, 0]], \"attention_mask\": [[1, 1, 1, 1]]}");
        return path;
    }
}
