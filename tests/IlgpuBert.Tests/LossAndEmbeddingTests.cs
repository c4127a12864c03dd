using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

/// <summary>Fused log-softmax + cross-entropy, and the embedding sum with its deterministic scatter.</summary>
public class LossAndEmbeddingTests
{
    public static TheoryData<string, int, int> CeShapes()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var (r, v) in new[] { (1, 7), (7, 33), (33, 129) })
                data.Add(dev, r, v);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(CeShapes))]
    public void Cross_entropy_forward_and_backward(string device, int rows, int vocab)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows * vocab);
        var logits = Rand.Normal(rng, rows * vocab, 3.0);
        var labels = Enumerable.Range(0, rows).Select(i => i % 3 == 2 ? -100 : rng.Next(vocab)).ToArray();
        using var bl = d.Upload(logits);
        using var blab = d.Upload(labels);
        using var blse = d.Poisoned(rows);
        using var bloss = d.Poisoned(2);
        using var bdl = d.Poisoned(rows * vocab);
        d.Kernels.CrossEntropy.Forward(bl.View, blab.View, blse.View, bloss.View, rows, vocab);
        d.Kernels.CrossEntropy.Backward(bl.View, blab.View, blse.View, bloss.View, bdl.View, rows, vocab, dLoss: 0.5f);
        var ld = Rand.ToDouble(logits);
        var loss = d.Read(bloss, 2);
        Tol.AssertClose([Reference.CrossEntropy(ld, labels, rows, vocab), labels.Count(l => l != -100)], loss, Tol.F32Reduction, "loss, count");
        var g = Reference.NumericGradient(v => 0.5 * Reference.CrossEntropy(v, labels, rows, vocab), ld);
        Tol.AssertClose(g, d.Read(bdl, rows * vocab), Tol.F32Reduction, "dlogits");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Cross_entropy_in_place_gradient_equals_separate_buffer(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(3);
        int rows = 9, vocab = 40;
        var logits = Rand.Normal(rng, rows * vocab);
        var labels = Enumerable.Range(0, rows).Select(_ => rng.Next(vocab)).ToArray();
        using var bl = d.Upload(logits);
        using var bl2 = d.Upload(logits);
        using var blab = d.Upload(labels);
        using var blse = d.Poisoned(rows);
        using var bloss = d.Poisoned(2);
        using var bdl = d.Poisoned(rows * vocab);
        var ce = d.Kernels.CrossEntropy;
        ce.Forward(bl.View, blab.View, blse.View, bloss.View, rows, vocab);
        ce.Backward(bl.View, blab.View, blse.View, bloss.View, bdl.View, rows, vocab);
        ce.Backward(bl2.View, blab.View, blse.View, bloss.View, bl2.View, rows, vocab);
        Assert.Equal(d.Read(bdl, rows * vocab), d.Read(bl2, rows * vocab));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Cross_entropy_with_every_row_ignored_is_zero_and_a_bad_label_is_nan(string device)
    {
        var d = Devices.Get(device);
        int rows = 4, vocab = 5;
        using var bl = d.Upload(Rand.Normal(new Random(1), rows * vocab));
        using var blse = d.Poisoned(rows);
        using var bloss = d.Poisoned(2);
        using var bdl = d.Poisoned(rows * vocab);
        using (var ignored = d.Upload(new[] { -100, -100, -100, -100 }))
        {
            d.Kernels.CrossEntropy.Forward(bl.View, ignored.View, blse.View, bloss.View, rows, vocab);
            d.Kernels.CrossEntropy.Backward(bl.View, ignored.View, blse.View, bloss.View, bdl.View, rows, vocab);
            Assert.Equal([0f, 0f], d.Read(bloss, 2));
            Assert.All(d.Read(bdl, rows * vocab), v => Assert.Equal(0f, v));
        }
        using var bad = d.Upload(new[] { 1, 5, -100, 2 }); // 5 is outside [0, 5)
        d.Kernels.CrossEntropy.Forward(bl.View, bad.View, blse.View, bloss.View, rows, vocab);
        Assert.True(float.IsNaN(d.Read(bloss, 2)[0]));
    }

    private static EmbeddingShape Shape(int batch, int seq, int hidden) => new()
    {
        Tokens = batch * seq, SeqLen = seq, Hidden = hidden, VocabSize = 11, MaxPositions = seq + 2, TypeVocabSize = 2,
    };

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Embeddings_forward_and_backward_match_reference(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(11);
        var s = Shape(3, 7, 33);
        var ids = Enumerable.Range(0, s.Tokens).Select(_ => rng.Next(4)).ToArray(); // few ids: many repeats
        ids[5] = 10;
        var types = Enumerable.Range(0, s.Tokens).Select(t => t % s.SeqLen < 3 ? 0 : 1).ToArray();
        // Explicit position_ids, not t mod S: the last two of each row repeat earlier positions, as
        // XLNet's query-stream rows and UniLMv2's pseudo-masks do, and one row counts backwards.
        var positions = Enumerable.Range(0, s.Tokens).Select(t => t % s.SeqLen).ToArray();
        for (int b = 0; b < 3; b++) { positions[b * s.SeqLen + 5] = 1 + b; positions[b * s.SeqLen + 6] = s.MaxPositions - 1; }
        for (int j = 0; j < s.SeqLen; j++) positions[s.SeqLen + j] = s.SeqLen - 1 - j;
        var word = Rand.Normal(rng, s.VocabSize * s.Hidden);
        var pos = Rand.Normal(rng, s.MaxPositions * s.Hidden);
        var type = Rand.Normal(rng, s.TypeVocabSize * s.Hidden);
        var dOut = Rand.Normal(rng, s.Tokens * s.Hidden);
        var dWord0 = Rand.Normal(rng, word.Length);
        using var bids = d.Upload(ids);
        using var bpositions = d.Upload(positions);
        using var btypes = d.Upload(types);
        using var bw = d.Upload(word);
        using var bp = d.Upload(pos);
        using var bt = d.Upload(type);
        using var bout = d.Poisoned(s.Tokens * s.Hidden);
        using var bdOut = d.Upload(dOut);
        using var bdw = d.Upload(dWord0);
        using var bdp = d.Upload(new float[pos.Length]);
        using var bdt = d.Upload(new float[type.Length]);
        d.Kernels.Embeddings.Forward(bids.View, bpositions.View, btypes.View, bw.View, bp.View, bt.View, bout.View, s);
        d.Kernels.Embeddings.Backward(bdOut.View, ids, positions, types, bdw.View, bdp.View, bdt.View, s);

        int h = s.Hidden;
        var expected = new double[s.Tokens * h];
        var dWord = Rand.ToDouble(dWord0);
        var dPos = new double[pos.Length];
        var dType = new double[type.Length];
        for (int t = 0; t < s.Tokens; t++)
            for (int j = 0; j < h; j++)
            {
                int p = positions[t];
                expected[t * h + j] = (double)word[ids[t] * h + j] + pos[p * h + j] + type[types[t] * h + j];
                dWord[ids[t] * h + j] += dOut[t * h + j];
                dPos[p * h + j] += dOut[t * h + j];
                dType[types[t] * h + j] += dOut[t * h + j];
            }
        Tol.AssertClose(expected, d.Read(bout, s.Tokens * h), Tol.F32Elementwise, "embeddings");
        Tol.AssertClose(dWord, d.Read(bdw, word.Length), Tol.F32Reduction, "dWord (accumulated)");
        Tol.AssertClose(dPos, d.Read(bdp, pos.Length), Tol.F32Reduction, "dPosition");
        Tol.AssertClose(dType, d.Read(bdt, type.Length), Tol.F32Reduction, "dTokenType");
    }

    [Fact]
    public void Embeddings_host_code_equals_the_kernels_bit_for_bit()
    {
        // The CPU accelerator runs embeddings as host code, split over cores above 32K elements; the
        // GPU-shaped CPU device runs the ILGPU kernels. Same sums in the same order: equal bits.
        var s = Shape(4, 64, 130) with { VocabSize = 50 };
        var rng = new Random(5);
        var ids = Enumerable.Range(0, s.Tokens).Select(_ => rng.Next(s.VocabSize)).ToArray();
        var types = Enumerable.Range(0, s.Tokens).Select(_ => rng.Next(2)).ToArray();
        var positions = Enumerable.Range(0, s.Tokens).Select(_ => rng.Next(s.MaxPositions)).ToArray();
        var rows = Enumerable.Range(0, 40).Select(_ => rng.Next(s.Tokens)).ToArray();
        var word = Rand.Normal(rng, s.VocabSize * s.Hidden);
        var pos = Rand.Normal(rng, s.MaxPositions * s.Hidden);
        var type = Rand.Normal(rng, s.TypeVocabSize * s.Hidden);
        var dOut = Rand.Normal(rng, s.Tokens * s.Hidden);
        var dWord0 = Rand.Normal(rng, word.Length);
        float[][] Run(TestDevice d)
        {
            using var bids = d.Upload(ids);
            using var bpositions = d.Upload(positions);
            using var btypes = d.Upload(types);
            using var bw = d.Upload(word);
            using var bp = d.Upload(pos);
            using var bt = d.Upload(type);
            using var bout = d.Poisoned(s.Tokens * s.Hidden);
            using var gathered = d.Poisoned(rows.Length * s.Hidden);
            using var bdOut = d.Upload(dOut);
            using var bdw = d.Upload(dWord0);
            using var bdp = d.Upload(new float[pos.Length]);
            d.Kernels.Embeddings.Forward(bids.View, bpositions.View, btypes.View, bw.View, bp.View, bt.View, bout.View, s);
            d.Kernels.Embeddings.Gather(bout.View, rows, gathered.View, s.Tokens, s.Hidden);
            d.Kernels.Embeddings.Backward(bdOut.View, ids, positions, types, bdw.View, bdp.View, default, s);
            return [d.Read(bout, s.Tokens * s.Hidden), d.Read(gathered, rows.Length * s.Hidden), d.Read(bdw, word.Length), d.Read(bdp, pos.Length)];
        }
        var host = Run(Devices.Get("cpu"));
        var kernels = Run(Devices.Get("cpu-gpu-shaped"));
        string[] names = ["embeddings", "gathered rows", "dWord", "dPosition"];
        for (int i = 0; i < host.Length; i++)
            Assert.True(host[i].AsSpan().SequenceEqual(kernels[i]), $"{names[i]}: host code and kernel differ");
        Assert.True(host[0].All(float.IsFinite));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Embedding_backward_is_bitwise_deterministic_and_survives_nan(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(5);
        var s = Shape(4, 5, 16);
        var ids = Enumerable.Range(0, s.Tokens).Select(_ => rng.Next(3)).ToArray();
        var types = new int[s.Tokens];
        var dOut = Rand.Normal(rng, s.Tokens * s.Hidden, 100.0);
        dOut[7] = float.NaN; // a float atomic would spin forever on this (ILGPU-NOTES.md)
        float[] Run()
        {
            using var bdOut = d.Upload(dOut);
            using var bdw = d.Upload(new float[s.VocabSize * s.Hidden]);
            d.Kernels.Embeddings.Backward(bdOut.View, ids, new int[s.Tokens], types, bdw.View, default, default, s);
            return d.Read(bdw, s.VocabSize * s.Hidden);
        }
        var first = Run();
        Assert.Equal(BitConverter.SingleToInt32Bits(first[1]), BitConverter.SingleToInt32Bits(Run()[1]));
        Assert.Equal(first.Select(BitConverter.SingleToInt32Bits), Run().Select(BitConverter.SingleToInt32Bits));
        Assert.True(float.IsNaN(first[ids[0] * s.Hidden + 7]));
    }

    [Fact]
    public void Embedding_ids_out_of_range_are_clear_errors_or_nan_rows()
    {
        var d = Devices.Get("cpu");
        var s = Shape(1, 3, 4);
        var ids = new[] { 1, 11, 2 }; // 11 ≥ vocab 11
        using var bdOut = d.Upload(new float[12]);
        using var bdw = d.Upload(new float[s.VocabSize * 4]);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() =>
            d.Kernels.Embeddings.Backward(bdOut.View, ids, new int[3], new int[3], bdw.View, default, default, s));
        Assert.Contains("input_ids[1] = 11", ex.Message);
        using var bdp = d.Upload(new float[s.MaxPositions * 4]);
        ex = Assert.Throws<ArgumentOutOfRangeException>(() =>
            d.Kernels.Embeddings.Backward(bdOut.View, [1, 1, 1], [0, 1, s.MaxPositions], new int[3], default, bdp.View, default, s));
        Assert.Contains($"position_ids[2] = {s.MaxPositions}", ex.Message);

        using var bids = d.Upload(ids);
        using var bpositions = d.Upload(new[] { 0, 1, 2 });
        using var btypes = d.Upload(new int[3]);
        using var bw = d.Upload(new float[s.VocabSize * 4]);
        using var bp = d.Upload(new float[s.MaxPositions * 4]);
        using var bt = d.Upload(new float[2 * 4]);
        using var bout = d.Poisoned(12);
        d.Kernels.Embeddings.Forward(bids.View, bpositions.View, btypes.View, bw.View, bp.View, bt.View, bout.View, s);
        var got = d.Read(bout, 12);
        Assert.All(got[4..8], v => Assert.True(float.IsNaN(v)));
        Assert.All(got[..4].Concat(got[8..]), v => Assert.Equal(0f, v));
        // A position id past the table (here 2 with two positions) is a NaN row too, never a read outside it.
        using var bout2 = d.Poisoned(12);
        d.Kernels.Embeddings.Forward(bids.View, bpositions.View, btypes.View, bw.View, bp.View, bt.View, bout2.View, s with { MaxPositions = 2 });
        got = d.Read(bout2, 12);
        Assert.All(got[4..], v => Assert.True(float.IsNaN(v)));
        Assert.All(got[..4], v => Assert.Equal(0f, v));
    }
}
