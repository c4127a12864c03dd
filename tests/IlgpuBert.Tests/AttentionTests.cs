using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Autograd;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class AttentionTests
{
    /// <summary>
    /// Naive double attention: softmax(QKᵀ/√HD with keys the query does not see at −∞, <see cref="Sees"/>), dropout with the same
    /// Philox bits as the kernels, times V. Returns context [B, S, NH·HD], probabilities before
    /// dropout [B, NH, S, S] and lse [B, NH, S] (+∞ for fully masked rows).
    /// </summary>
    public static (double[] Context, double[] Probs, double[] Lse) ReferenceAttention(double[] qkv, int[]? mask, AttentionShape a)
    {
        int bs = a.Batch, s = a.SeqLen, nh = a.Heads, hd = a.HeadDim;
        var ctx = new double[bs * s * nh * hd];
        var probs = new double[bs * nh * s * s];
        var lse = new double[bs * nh * s];
        double scale = 1 / Math.Sqrt(hd);
        for (int b = 0; b < bs; b++)
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < s; i++)
                {
                    var sc = new double[s];
                    for (int j = 0; j < s; j++)
                    {
                        if (!Sees(mask, a, b, i, j)) { sc[j] = double.NegativeInfinity; continue; }
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += qkv[a.Qkv(b, i, 0, h, d)] * qkv[a.Qkv(b, j, 1, h, d)];
                        sc[j] = dot * scale;
                    }
                    double m = sc.Max();
                    long row = a.Row(b, h, i);
                    if (double.IsNegativeInfinity(m)) { lse[row] = double.PositiveInfinity; continue; }
                    double sum = sc.Sum(v => Math.Exp(v - m));
                    lse[row] = m + Math.Log(sum);
                    for (int j = 0; j < s; j++)
                    {
                        double p = Math.Exp(sc[j] - m) / sum;
                        probs[row * s + j] = p;
                        double keep = a.DropoutP == 0 ? 1
                            : DropoutKernels.Keeps(Philox.Word(a.Seed, a.Step, a.TensorId, row * s + j), a.DropoutP) ? 1.0 / (1 - a.DropoutP) : 0;
                        for (int d = 0; d < hd; d++) ctx[a.Ctx(b, i, h, d)] += p * keep * qkv[a.Qkv(b, j, 2, h, d)];
                    }
                }
        return (ctx, probs, lse);
    }

    /// <summary>
    /// Whether query i of sequence b sees key j: always without a mask, where attention_mask is 1, or
    /// (a.Ranks = 1) where key j's rank ≤ query i's, compared as integers.
    /// </summary>
    public static bool Sees(int[]? mask, AttentionShape a, int b, int i, int j)
    {
        int s = a.SeqLen;
        if (mask is null) return true;
        if (a.Ranks == 0) return mask[b * s + j] != 0;
        return mask[b * s + j] <= mask[(a.Batch + b) * s + i];
    }

    private static int[] PaddingMask(int batch, int s, int[] lengths) =>
        Enumerable.Range(0, batch * s).Select(e => e % s < lengths[e / s] ? 1 : 0).ToArray();

    /// <summary>
    /// UniLM's masks as a rank mask (use with Ranks = 1): per sequence, rank 0 before its prefix and the
    /// position from it on, for keys and queries alike; padding keys never seen.
    /// </summary>
    private static int[] PrefixMask(int s, int[] lengths, int[] prefixes)
    {
        int n = lengths.Length * s;
        var r = new int[2 * n];
        for (int e = 0; e < n; e++)
        {
            int rank = e % s < prefixes[e / s] ? 0 : e % s;
            r[e] = e % s >= lengths[e / s] ? AttentionShape.NeverSeen : rank;
            r[n + e] = rank;
        }
        return r;
    }

    /// <summary>The prefix of each of three sequences (lengths 37 or 19, a shorter one, 0) in each UniLM mode.</summary>
    private static int[] Prefixes(string mode, int s) => mode switch
    {
        "bidirectional" => [s, s, s],
        "left-to-right" => [0, 0, 0],
        "prefix" => [11, 5, 0],
        _ => throw new ArgumentException(mode),
    };

    public static TheoryData<string, string, int> MaskModeCases()
    {
        var data = new TheoryData<string, string, int>();
        foreach (var dev in Devices.Names)
            foreach (var mode in new[] { "bidirectional", "left-to-right", "prefix" })
                foreach (int hd in new[] { 24, 128 }) // the kernels for head dims ≤ 64 and for 65–128 on GPUs; a padded head on the host
                    data.Add(dev, mode, hd);
        return data;
    }

    /// <summary>
    /// Each UniLM mask mode against the double reference, and what the mode means checked without
    /// the reference: with future tokens (left-to-right) or the target (prefix) rewritten, the rows
    /// before them come out bit for bit the same; bidirectional rows all change.
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(MaskModeCases))]
    public void Forward_follows_each_attention_mask_mode(string device, string mode, int hd)
    {
        var d = Devices.Get(device);
        var a = AttentionShape.Create(3, 37, 2, hd, 0.2f, new DropoutKey(3, 1, 7));
        a.Ranks = 1;
        var mask = PrefixMask(37, [37, 20, 0], Prefixes(mode, 37));
        var qkv = Rand.Normal(new Random(hd + mode.Length), a.QkvLength);
        using var bmask = d.Upload(mask);
        float[] Context(float[] x)
        {
            using var bqkv = d.Upload(x);
            using var bctx = d.Poisoned(a.ContextLength);
            using var blse = d.Poisoned(a.RowCount);
            using var bprobs = d.Poisoned(a.RowCount * a.SeqLen);
            d.Kernels.Attention.Forward(bqkv.View, bmask.View, bctx.View, blse.View, a, bprobs.View);
            var (ctx, probs, _) = ReferenceAttention(Rand.ToDouble(x), mask, a);
            var got = d.Read(bctx, a.ContextLength);
            Tol.AssertClose(ctx, got, Tol.F32Reduction, "context");
            Tol.AssertClose(probs, d.Read(bprobs, a.RowCount * a.SeqLen), Tol.F32Reduction, "probabilities");
            return got;
        }
        var before = Context(qkv);
        // Rewrite q, k and v of sequence 0 from position t on.
        int t = mode == "prefix" ? Prefixes(mode, 37)[0] : 13;
        var changed = qkv.ToArray();
        for (int i = t; i < a.SeqLen; i++)
            for (int part = 0; part < 3; part++)
                for (int h = 0; h < a.Heads; h++)
                    for (int x = 0; x < hd; x++)
                        changed[a.Qkv(0, i, part, h, x)] += 1f;
        var after = Context(changed);
        for (int i = 0; i < t; i++)
        {
            var rowBefore = before.AsSpan((int)a.Ctx(0, i, 0, 0), a.Hidden).ToArray();
            var rowAfter = after.AsSpan((int)a.Ctx(0, i, 0, 0), a.Hidden).ToArray();
            if (mode == "bidirectional") Assert.NotEqual(rowBefore, rowAfter);
            else Assert.Equal(rowBefore, rowAfter);
        }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(MaskModeCases))]
    public void Backward_matches_finite_differences_in_each_mask_mode(string device, string mode, int hd)
    {
        var a = AttentionShape.Create(3, 19, 2, hd, 0.1f, new DropoutKey(8, 2, 3));
        a.Ranks = 1;
        CheckBackward(Devices.Get(device), a, PrefixMask(19, [19, 7, 0], Prefixes(mode, 19)), new Random(hd + 3 * mode.Length));
    }

    /// <summary>
    /// The double reference's gradient of L = Σ w ⊙ context with respect to qkv, in closed form:
    /// dV_j = Σ_i P̃_ij w_i, dP_ij = (w_i·V_j)·keep_ij, dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik),
    /// dQ_i = Σ_j dS_ij K_j/√HD, dK_j = Σ_i dS_ij Q_i/√HD (P̃ = P·keep; P from <see cref="ReferenceAttention"/>).
    /// </summary>
    public static double[] ReferenceAttentionGradient(double[] qkv, int[]? mask, AttentionShape a, double[] w)
    {
        int bs = a.Batch, s = a.SeqLen, nh = a.Heads, hd = a.HeadDim;
        var (_, probs, _) = ReferenceAttention(qkv, mask, a);
        var g = new double[qkv.Length];
        double scale = 1 / Math.Sqrt(hd);
        for (int b = 0; b < bs; b++)
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < s; i++)
                {
                    long row = a.Row(b, h, i);
                    var dp = new double[s];
                    double sum = 0;
                    for (int j = 0; j < s; j++)
                    {
                        double p = probs[row * s + j];
                        if (p == 0) continue;
                        double keep = a.DropoutP == 0 ? 1
                            : DropoutKernels.Keeps(Philox.Word(a.Seed, a.Step, a.TensorId, row * s + j), a.DropoutP) ? 1.0 / (1 - a.DropoutP) : 0;
                        double dot = 0;
                        for (int d = 0; d < hd; d++)
                        {
                            dot += w[a.Ctx(b, i, h, d)] * qkv[a.Qkv(b, j, 2, h, d)];
                            g[a.Qkv(b, j, 2, h, d)] += p * keep * w[a.Ctx(b, i, h, d)];
                        }
                        dp[j] = dot * keep;
                        sum += p * dp[j];
                    }
                    for (int j = 0; j < s; j++)
                    {
                        double ds = probs[row * s + j] * (dp[j] - sum) * scale;
                        if (ds == 0) continue;
                        for (int d = 0; d < hd; d++)
                        {
                            g[a.Qkv(b, i, 0, h, d)] += ds * qkv[a.Qkv(b, j, 1, h, d)];
                            g[a.Qkv(b, j, 1, h, d)] += ds * qkv[a.Qkv(b, i, 0, h, d)];
                        }
                    }
                }
        return g;
    }

    [Fact]
    public void The_closed_form_reference_gradient_matches_finite_differences_of_the_reference()
    {
        var a = AttentionShape.Create(2, 11, 2, 5, 0.2f, new DropoutKey(4, 4, 4));
        a.Ranks = 1;
        var rng = new Random(5);
        var mask = RankPattern("random", 2, 11, rng);
        double[] x = Rand.ToDouble(Rand.Normal(rng, a.QkvLength)), w = Rand.ToDouble(Rand.Normal(rng, a.ContextLength));
        var g = ReferenceAttentionGradient(x, mask, a, w);
        var numeric = Reference.NumericGradient(v => Reference.Dot(w, ReferenceAttention(v, mask, a).Context), x);
        Tol.AssertClose(numeric, g.Select(v => (float)v).ToArray(), Tol.F32Reduction, "closed-form gradient");
        Assert.Contains(g, v => Math.Abs(v) > 1e-2);
    }

    /// <summary>The rank patterns of the mask tests, by name.</summary>
    public static readonly string[] RankPatterns = ["bidirectional", "left-to-right", "prefix", "permutation", "pmlm", "random"];

    /// <summary>
    /// A rank mask [2, batch, s] (key ranks, then query ranks) of one pattern; sequence b is s − 9b long
    /// (its padding keys never seen). bidirectional: every rank 0. left-to-right: rank = position.
    /// prefix: 0 over the first third, the position after. permutation (XLNet's two streams): position 0
    /// rank 0, the first half content tokens ranked by a sampled factorisation order (1 … n−1, keys and
    /// queries alike), the rest query-stream rows for content positions: never seen as keys, query rank
    /// one below their target's (they see what comes before it in the order, not its own content).
    /// pmlm (UniLMv2): the first half context and [M] (rank 0), the rest spans of 1–3 tokens in a
    /// sampled order, each span's original tokens rank k, its pseudo-masks [P] never seen with query
    /// rank k − 1. random: key ranks 0–6 (a tenth never seen), query ranks −1–6 (−1 sees nothing).
    /// </summary>
    public static int[] RankPattern(string pattern, int batch, int s, Random rng)
    {
        int n = batch * s;
        var r = new int[2 * n];
        for (int b = 0; b < batch; b++)
        {
            int length = s - 9 * b, half = length / 2;
            var order = Enumerable.Range(1, Math.Max(half - 1, 0)).OrderBy(_ => rng.Next()).ToArray(); // ranks of content positions 1 … half−1
            var spans = new List<int>(); // span index (1-based order) of each position from half on
            for (int k = 1; spans.Count < length - half; k++)
                for (int w = rng.Next(1, 4); w > 0 && spans.Count < length - half; w--) spans.Add(k);
            var spanOrder = spans.Distinct().OrderBy(_ => rng.Next()).Select((k, o) => (k, o + 1)).ToDictionary(x => x.k, x => x.Item2);
            for (int i = 0; i < s; i++)
            {
                int key, query;
                switch (pattern)
                {
                    case "bidirectional": key = query = 0; break;
                    case "left-to-right": key = query = i; break;
                    case "prefix": key = query = i < s / 3 ? 0 : i; break;
                    case "permutation":
                        if (i == 0) key = query = 0;
                        else if (i < half) key = query = order[i - 1];
                        else { key = AttentionShape.NeverSeen; query = (half > 1 ? order[rng.Next(half - 1)] : 1) - 1; }
                        break;
                    case "pmlm":
                        if (i < half) key = query = 0;
                        else if (i >= length) key = query = 0;
                        else
                        {
                            int k = spanOrder[spans[i - half]];
                            bool pseudo = rng.Next(2) == 0;
                            key = pseudo ? AttentionShape.NeverSeen : k;
                            query = pseudo ? k - 1 : k;
                        }
                        break;
                    case "random":
                        key = rng.Next(10) == 0 ? AttentionShape.NeverSeen : rng.Next(7);
                        query = rng.Next(-1, 7);
                        break;
                    default: throw new ArgumentException(pattern);
                }
                r[b * s + i] = i >= length ? AttentionShape.NeverSeen : key;
                r[n + b * s + i] = query;
            }
        }
        return r;
    }

    public static TheoryData<string, string, int, int> RankPatternCases()
    {
        var data = new TheoryData<string, string, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var pattern in RankPatterns)
                foreach (int s in new[] { 37, 130 })
                    data.Add(dev, pattern, s, s == 37 ? 100 : 44); // both kernel families (head dims ≤ 64, 65–128), neither a multiple of 8
        return data;
    }

    /// <summary>
    /// Every rank pattern (bidirectional, left-to-right, prefix, XLNet's two streams, UniLMv2's pseudo-masks,
    /// random ranks with fully masked rows) at S 37 and 130, with dropout: context, probabilities and
    /// lse, then dQ, dK and dV in full, against the double reference; rows that see nothing get context 0
    /// and no gradient.
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(RankPatternCases))]
    public void Rank_masks_match_the_double_reference_forward_and_backward(string device, string pattern, int s, int hd)
    {
        var d = Devices.Get(device);
        var a = AttentionShape.Create(2, s, 2, hd, 0.1f, new DropoutKey(31, 2, (uint)s));
        a.Ranks = 1;
        var rng = new Random(s * 31 + pattern.Length);
        var mask = RankPattern(pattern, 2, s, rng);
        var qkv = Rand.Normal(rng, a.QkvLength);
        var w = Rand.Normal(rng, a.ContextLength);
        var lse = CheckForward(d, a, mask, qkv);
        var expected = ReferenceAttentionGradient(Rand.ToDouble(qkv), mask, a, Rand.ToDouble(w));
        Tol.AssertClose(expected, Gradient(d, a, mask, qkv, w), Tol.F32Reduction, "dQkv");
        Assert.Contains(expected, v => Math.Abs(v) > 1e-2); // not vacuous
        if (pattern == "random") Assert.Contains(lse, double.IsPositiveInfinity); // fully masked rows are covered
    }

    public static TheoryData<string, int, float> ForwardCases()
    {
        var data = new TheoryData<string, int, float>();
        foreach (var dev in Devices.Names)
            foreach (int hd in new[] { 8, 24, 32, 64, 128 }) // 24: vectors and a scalar tail on the host path
                foreach (float p in new[] { 0f, 0.2f })
                    data.Add(dev, hd, p);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(ForwardCases))]
    public void Forward_matches_naive_double_reference(string device, int hd, float dropout)
    {
        var d = Devices.Get(device);
        // S = 37 is no multiple of any tile; the three sequences are full, padded, and fully masked.
        var a = AttentionShape.Create(3, 37, 2, hd, dropout, new DropoutKey(77, 3, 5));
        CheckForward(d, a, PaddingMask(3, 37, [37, 20, 0]), new Random(hd + (int)(dropout * 10)));
    }

    /// <summary>Context, probabilities and lse of the forward against the double reference.</summary>
    private static void CheckForward(TestDevice d, AttentionShape a, int[] mask, Random rng) => CheckForward(d, a, mask, Rand.Normal(rng, a.QkvLength));

    /// <summary>The same for given inputs qkv; returns the reference's lse.</summary>
    private static double[] CheckForward(TestDevice d, AttentionShape a, int[] mask, float[] qkv)
    {
        using var bqkv = d.Upload(qkv);
        using var bmask = d.Upload(mask);
        using var bctx = d.Poisoned(a.ContextLength);
        using var blse = d.Poisoned(a.RowCount);
        using var bprobs = d.Poisoned(a.RowCount * a.SeqLen);
        d.Kernels.Attention.Forward(bqkv.View, bmask.View, bctx.View, blse.View, a, bprobs.View);
        var (ctx, probs, lse) = ReferenceAttention(Rand.ToDouble(qkv), mask, a);
        Tol.AssertClose(ctx, d.Read(bctx, a.ContextLength), Tol.F32Reduction, "context");
        Tol.AssertClose(probs, d.Read(bprobs, a.RowCount * a.SeqLen), Tol.F32Reduction, "probabilities");
        var gotLse = d.Read(blse, a.RowCount);
        Assert.All(gotLse.Where((_, i) => double.IsPositiveInfinity(lse[i])), v => Assert.Equal(float.PositiveInfinity, v));
        Tol.AssertClose(lse.Select(v => double.IsInfinity(v) ? 0 : v).ToArray(), gotLse.Select(v => float.IsInfinity(v) ? 0 : v).ToArray(),
            Tol.F32Reduction, "lse");
        return lse;
    }

    public static TheoryData<string, int, float> BackwardCases()
    {
        var data = new TheoryData<string, int, float>();
        foreach (var dev in Devices.Names)
            foreach (var (hd, p) in new[] { (8, 0f), (24, 0.2f), (32, 0.25f), (64, 0f), (128, 0.1f) }) // 24: padded to 32 on the host path
                data.Add(dev, hd, p);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(BackwardCases))]
    public void Backward_matches_finite_differences(string device, int hd, float dropout)
    {
        var a = AttentionShape.Create(3, 19, 2, hd, dropout, new DropoutKey(5, 9, 2));
        CheckBackward(Devices.Get(device), a, PaddingMask(3, 19, [19, 7, 0]), new Random(hd * 7 + (int)(dropout * 100)));
    }

    public static TheoryData<string, int, int> LongBackwardCases()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var dev in Devices.Names)
            // HD ≤ 64: 32-row blocks, 16/32-row streams; HD 65-128: 16-row blocks, 16/32-row streams. Each
            // with a tail; HD 61 and 97 not multiples of 4 (scalar loads), 97 not of 8 either (a zero-padded step).
            foreach (var (s, hd) in new[] { (37, 61), (130, 64), (37, 97), (37, 128) })
                data.Add(dev, s, hd);
        return data;
    }

    /// <summary>
    /// Sequences longer than one block of the backward kernels (32 keys or queries per group at head dims
    /// ≤ 64, 16 above; the other side streamed 16 or 32 at a time), with tails, dropout and a causal
    /// (prefix) mask: every block's share of dK, dV and dQ must be there, and the padded rows must add
    /// nothing.
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(LongBackwardCases))]
    public void Backward_over_several_blocks_matches_finite_differences(string device, int s, int hd)
    {
        var a = AttentionShape.Create(3, s, 2, hd, 0.15f, new DropoutKey(21, 4, 9));
        a.Ranks = 1;
        CheckBackward(Devices.Get(device), a, PrefixMask(s, [s, s - 9, 0], [s / 3, s / 2, 0]), new Random(s + hd));
    }

    /// <summary>
    /// Rows of 16 keys or more take the host's sixteen-blocks-at-a-time Philox from their first whole
    /// group of four, 16 keys at a time, and draw the keys before and after one at a time (S = 132
    /// and 36: every row starts on a group; S = 130 and 37: rows start 0–3 keys before one).
    /// </summary>
    [Theory]
    [InlineData(36)]
    [InlineData(37)]
    [InlineData(130)]
    [InlineData(132)]
    public void Rows_of_16_keys_or_more_draw_the_reference_dropout_in_forward_and_backward(int s)
    {
        var d = Devices.Get("cpu");
        var a = AttentionShape.Create(3, s, 2, 32, 0.2f, new DropoutKey(0xABCD_0123_4567UL, 8, 6));
        var mask = PaddingMask(3, s, [s, s / 2, 0]);
        CheckForward(d, a, mask, new Random(s));
        CheckBackward(d, a, mask, new Random(s + 1));
    }

    /// <summary>The device's dQkv of L = Σ w ⊙ context: its forward, then its backward into a poisoned buffer.</summary>
    private static float[] Gradient(TestDevice d, AttentionShape a, int[] mask, float[] qkv, float[] w)
    {
        using var bqkv = d.Upload(qkv);
        using var bmask = d.Upload(mask);
        using var bctx = d.Poisoned(a.ContextLength);
        using var blse = d.Poisoned(a.RowCount);
        using var bw = d.Upload(w);
        using var bdq = d.Poisoned(a.QkvLength);
        d.Kernels.Attention.Forward(bqkv.View, bmask.View, bctx.View, blse.View, a);
        d.Kernels.Attention.Backward(bqkv.View, bmask.View, bctx.View, blse.View, bw.View, bdq.View, a);
        return d.Read(bdq, a.QkvLength);
    }

    /// <summary>dQkv of L = Σ w ⊙ context against central differences of the double reference; the third sequence must be fully masked.</summary>
    private static void CheckBackward(TestDevice d, AttentionShape a, int[] mask, Random rng)
    {
        int hd = a.HeadDim;
        var qkv = Rand.Normal(rng, a.QkvLength);
        var w = Rand.Normal(rng, a.ContextLength); // L = Σ w ⊙ context
        var got = Gradient(d, a, mask, qkv, w);
        Assert.All(got, v => Assert.True(float.IsFinite(v)));

        // Central differences of the double reference at a sample of coordinates spread over q, k, v.
        double[] x = Rand.ToDouble(qkv), wd = Rand.ToDouble(w);
        var coords = Enumerable.Range(0, 90).Select(_ => rng.NextInt64(a.QkvLength)).Distinct().ToArray();
        double Loss() => Reference.Dot(wd, ReferenceAttention(x, mask, a).Context);
        var expected = new double[coords.Length];
        for (int c = 0; c < coords.Length; c++)
        {
            double orig = x[coords[c]];
            const double step = 1e-6;
            x[coords[c]] = orig + step; double lp = Loss();
            x[coords[c]] = orig - step; double lm = Loss();
            x[coords[c]] = orig;
            expected[c] = (lp - lm) / (2 * step);
        }
        Tol.AssertClose(expected, coords.Select(c => got[c]).ToArray(), Tol.F32Reduction, "dQkv at sampled coordinates");
        // The fully masked third sequence gets no gradient at all.
        long third = 2L * a.SeqLen * 3 * a.Heads * hd;
        Assert.All(got[(int)third..], v => Assert.Equal(0f, v));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Fused_and_materialised_paths_agree_with_dropout(string device)
    {
        var d = Devices.Get(device);
        var a = AttentionShape.Create(2, 33, 3, 32, 0.3f, new DropoutKey(11, 1, 4));
        var mask = PaddingMask(2, 33, [30, 33]);
        var qkv = Rand.Normal(new Random(4), a.QkvLength);
        using var bqkv = d.Upload(qkv);
        using var bmask = d.Upload(mask);
        using var fused = d.Poisoned(a.ContextLength);
        using var naive = d.Poisoned(a.ContextLength);
        using var lse = d.Poisoned(a.RowCount);
        using var probs = d.Poisoned(a.RowCount * a.SeqLen);
        d.Kernels.Attention.Forward(bqkv.View, bmask.View, fused.View, lse.View, a);
        d.Kernels.Attention.NaiveForward(bqkv.View, bmask.View, naive.View, probs.View, a);
        Tol.AssertClose(Rand.ToDouble(d.Read(naive, a.ContextLength)), d.Read(fused, a.ContextLength), Tol.F32Reduction, "fused vs naive");
    }

    /// <summary>
    /// Many query tiles in flight at once, run repeatedly: every run must give the reference and the
    /// same bits. This is the shape that exposed OpenCL groups sharing local memory (GroupReduce.cs).
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Concurrent_query_tiles_give_identical_results_run_after_run(string device)
    {
        var d = Devices.Get(device);
        var a = AttentionShape.Create(2, 150, 3, 8);
        var mask = PaddingMask(2, 150, [150, 101]);
        var qkv = Rand.Normal(new Random(23), a.QkvLength, 2);
        using var bqkv = d.Upload(qkv);
        using var bmask = d.Upload(mask);
        var (ctx, probs, _) = ReferenceAttention(Rand.ToDouble(qkv), mask, a);
        float[]? first = null;
        for (int run = 0; run < 4; run++)
        {
            using var bctx = d.Poisoned(a.ContextLength);
            using var blse = d.Poisoned(a.RowCount);
            using var bprobs = d.Poisoned(a.RowCount * a.SeqLen);
            d.Kernels.Attention.Forward(bqkv.View, bmask.View, bctx.View, blse.View, a, bprobs.View);
            var got = d.Read(bctx, a.ContextLength);
            Tol.AssertClose(ctx, got, Tol.F32Reduction, $"context, run {run}");
            Tol.AssertClose(probs, d.Read(bprobs, a.RowCount * a.SeqLen), Tol.F32Reduction, $"probabilities, run {run}");
            if (first is null) first = got;
            else Assert.Equal(first, got);
        }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void A_single_token_sequence_attends_to_itself(string device)
    {
        var d = Devices.Get(device);
        var a = AttentionShape.Create(2, 1, 3, 16);
        var qkv = Rand.Normal(new Random(12), a.QkvLength);
        using var bqkv = d.Upload(qkv);
        using var bctx = d.Poisoned(a.ContextLength);
        using var blse = d.Poisoned(a.RowCount);
        using var bdq = d.Poisoned(a.QkvLength);
        using var bdo = d.Upload(Rand.Normal(new Random(13), a.ContextLength));
        d.Kernels.Attention.Forward(bqkv.View, default, bctx.View, blse.View, a);
        d.Kernels.Attention.Backward(bqkv.View, default, bctx.View, blse.View, bdo.View, bdq.View, a);
        var ctx = d.Read(bctx, a.ContextLength);
        var dq = d.Read(bdq, a.QkvLength);
        var dO = d.Read(bdo, a.ContextLength);
        for (int b = 0; b < 2; b++)
            for (int h = 0; h < 3; h++)
                for (int x = 0; x < 16; x++)
                {
                    Assert.Equal(qkv[a.Qkv(b, 0, 2, h, x)], ctx[a.Ctx(b, 0, h, x)], 5); // context = v
                    Assert.Equal(0f, dq[a.Qkv(b, 0, 0, h, x)], 5);                         // softmax of one score is constant
                    Assert.Equal(0f, dq[a.Qkv(b, 0, 1, h, x)], 5);
                    Assert.Equal(dO[a.Ctx(b, 0, h, x)], dq[a.Qkv(b, 0, 2, h, x)], 5);       // dV = dO
                }
    }

    [Fact]
    public void Without_a_mask_every_key_is_attended()
    {
        var d = Devices.Get("cpu");
        var a = AttentionShape.Create(1, 5, 1, 8);
        var qkv = Rand.Normal(new Random(8), a.QkvLength);
        using var bqkv = d.Upload(qkv);
        using var bctx = d.Poisoned(a.ContextLength);
        using var blse = d.Poisoned(a.RowCount);
        d.Kernels.Attention.Forward(bqkv.View, default, bctx.View, blse.View, a);
        Tol.AssertClose(ReferenceAttention(Rand.ToDouble(qkv), null, a).Context, d.Read(bctx, a.ContextLength), Tol.F32Reduction, "context");
        Assert.Throws<ArgumentException>(() => d.Kernels.Attention.Forward(bqkv.View, default, bctx.View, blse.View, AttentionShape.Create(1, 5, 1, 160)));
    }

    [Fact]
    public void Attention_at_512_tokens_allocates_no_SxS_buffer()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        // Small heads, so that a single head's S×S scores would be the largest thing by far:
        // qkv and dQkv are 512·3·64 = 98,304 floats, S² = 262,144.
        const int s = 512;
        var a = AttentionShape.Create(1, s, 2, 32, 0.1f, new DropoutKey(1, 1, 1));
        using var qkv = new Var(Tensor.FromHost(device, Rand.Normal(new Random(2), a.QkvLength), 1, s, 3 * 64), requiresGrad: true);
        using var dContext = Tensor.FromHost(device, Rand.Normal(new Random(3), a.ContextLength), 1, s, 64);
        using var mask = new DeviceInts(device, PaddingMask(1, s, [300]));
        device.Pool.ResetStatistics();
        long scratchBefore = device.Kernels.ScratchBytes;
        using (var tape = new Tape())
        {
            var context = Ops.Attention(tape, qkv, mask, a);
            context.AddGrad(dContext);
            tape.Backward();
        }
        long sxs = (long)s * s;
        Assert.True(device.Pool.LargestRequest < sxs, $"largest pooled request {device.Pool.LargestRequest} floats ≥ S² = {sxs}");
        Assert.Equal(a.QkvLength, device.Pool.LargestRequest); // the gradient of qkv is the largest thing rented
        Assert.Equal(scratchBefore, device.Kernels.ScratchBytes);
        Assert.All(qkv.Grad!.ToHost(), v => Assert.True(float.IsFinite(v)));
    }
}
