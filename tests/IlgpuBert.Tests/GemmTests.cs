using ILGPU.Runtime;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class GemmTests
{
    public static TheoryData<string, int, int, int, bool, bool> Cases()
    {
        var data = new TheoryData<string, int, int, int, bool, bool>();
        foreach (var dev in Devices.Names)
            // M of 4, 16 and 20 end in a 4- or 8-row panel: the host path's short micro-kernels, each row of them used.
            foreach (var (m, n, k) in new[] { (1, 1, 1), (7, 33, 129), (65, 7, 17), (33, 129, 7), (4, 31, 8), (16, 40, 33), (20, 64, 50) })
                foreach (bool ta in new[] { false, true })
                    foreach (bool tb in new[] { false, true })
                        data.Add(dev, m, n, k, ta, tb);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Cases))]
    public void Forward_matches_double_reference(string device, int m, int n, int k, bool ta, bool tb)
    {
        var d = Devices.Get(device);
        var rng = new Random(m * 1000 + n * 10 + k + (ta ? 1 : 0) + (tb ? 2 : 0));
        // Padded leading dimensions, so strides are exercised and not just dense layouts.
        int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
        var a = Rand.Normal(rng, (long)(ta ? k : m) * lda);
        var b = Rand.Normal(rng, (long)(tb ? n : k) * ldb);
        var bias = Rand.Normal(rng, n);
        foreach (var (alpha, beta, withBias) in new[] { (1f, 0f, false), (0.5f, 0f, true), (-1.25f, 0.75f, true) })
        {
            var cInit = Rand.Normal(rng, (long)m * ldc);
            using var ba = d.Upload(a);
            using var bb = d.Upload(b);
            using var bBias = d.Upload(bias);
            // β = 0 must not read C: start from NaN then.
            using var bc = beta == 0 ? d.Poisoned((long)m * ldc) : d.Upload(cInit);
            d.Kernels.Gemm.Forward(ta ? Transpose.T : Transpose.N, tb ? Transpose.T : Transpose.N, m, n, k, alpha,
                ba.View, lda, bb.View, ldb, beta, bc.View, ldc, withBias ? bBias.View : default);
            var got = d.Read(bc, (long)m * ldc);
            double[] ad = Rand.ToDouble(a), bd = Rand.ToDouble(b), cd = Rand.ToDouble(cInit);
            double[]? biasd = withBias ? Rand.ToDouble(bias) : null;
            var expected = Reference.Gemm(ta, tb, m, n, k, alpha, ad, lda, bd, ldb, beta, cd, ldc, biasd);
            var scale = Reference.GemmErrorScale(ta, tb, m, n, k, alpha, ad, lda, bd, ldb, beta, cd, ldc, biasd);
            // Padding columns of C are outside the product: compare only the M×N part.
            Tol.AssertClose(Crop(expected, m, n, ldc), Crop(got, m, n, ldc), Tol.F32Dot, $"C (α={alpha}, β={beta}, bias={withBias})",
                Crop(scale, m, n, ldc));
        }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Strided_batches_match_reference(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(7);
        int batch = 3, m = 17, n = 9, k = 70;
        long sa = m * k + 5, sb = k * n + 3, sc = m * n + 1;
        var a = Rand.Normal(rng, sa * batch);
        var b = Rand.Normal(rng, sb * batch);
        var c = Rand.Normal(rng, sc * batch);
        using var ba = d.Upload(a);
        using var bb = d.Upload(b);
        using var bc = d.Upload(c);
        d.Kernels.Gemm.Forward(Transpose.N, Transpose.T, m, n, k, 1f, ba.View, k, bb.View, k, 1f, bc.View, n,
            default, batch, sa, sb, sc);
        var expected = Reference.Gemm(false, true, m, n, k, 1, Rand.ToDouble(a), k, Rand.ToDouble(b), k, 1, Rand.ToDouble(c), n,
            null, batch, sa, sb, sc);
        var scale = Reference.GemmErrorScale(false, true, m, n, k, 1, Rand.ToDouble(a), k, Rand.ToDouble(b), k, 1, Rand.ToDouble(c), n,
            null, batch, sa, sb, sc);
        // Gaps between batches must keep their values: the scale there is |c|, and the kernel must not touch them.
        Tol.AssertClose(expected, d.Read(bc, sc * batch), Tol.F32Dot, "batched C", scale);
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Cases))]
    public void Backward_matches_finite_differences(string device, int m, int n, int k, bool ta, bool tb)
    {
        if (m * n * k > 5000) m = Math.Min(m, 9); // keep O((MK + KN)·MNK) differencing affordable
        var d = Devices.Get(device);
        var rng = new Random(31 + m + n + k);
        int lda = ta ? m : k, ldb = tb ? k : n;
        var a = Rand.Normal(rng, (long)m * k);
        var b = Rand.Normal(rng, (long)k * n);
        var w = Rand.Normal(rng, (long)m * n); // L = Σ w ⊙ C, so dC = w
        var da0 = Rand.Normal(rng, a.Length);
        double[] ad = Rand.ToDouble(a), bd = Rand.ToDouble(b), wd = Rand.ToDouble(w);
        double Loss(double[] av, double[] bv) =>
            Reference.Dot(wd, Reference.Gemm(ta, tb, m, n, k, 1, av, lda, bv, ldb, 0, new double[m * n], n));

        using var ba = d.Upload(a);
        using var bb = d.Upload(b);
        using var bw = d.Upload(w);
        using var bda = d.Upload(da0); // accumulate = true: dA starts from da0
        using var bdb = d.Poisoned(b.Length);
        d.Kernels.Gemm.Backward(ta ? Transpose.T : Transpose.N, tb ? Transpose.T : Transpose.N, m, n, k,
            ba.View, lda, bb.View, ldb, bw.View, n, bda.View, default, accumulate: true);
        d.Kernels.Gemm.Backward(ta ? Transpose.T : Transpose.N, tb ? Transpose.T : Transpose.N, m, n, k,
            ba.View, lda, bb.View, ldb, bw.View, n, default, bdb.View, accumulate: false);

        var gradA = Reference.NumericGradient(x => Loss(x, bd), ad);
        var gradB = Reference.NumericGradient(x => Loss(ad, x), bd);
        for (int i = 0; i < gradA.Length; i++) gradA[i] += da0[i];
        Tol.AssertClose(gradA, d.Read(bda, a.Length), Tol.F32Reduction, "dA (accumulated)");
        Tol.AssertClose(gradB, d.Read(bdb, b.Length), Tol.F32Reduction, "dB");
    }

    /// <summary>Devices running the GPU kernels × both block tiles × aligned (128-bit) or misaligned operands × transposes.</summary>
    public static TheoryData<string, GemmTile, bool, bool, bool> TileCases()
    {
        var data = new TheoryData<string, GemmTile, bool, bool, bool>();
        foreach (var dev in Devices.Names.Where(n => n != "cpu"))
            foreach (var tile in Enum.GetValues<GemmTile>())
                foreach (bool aligned in new[] { true, false })
                    foreach (bool ta in new[] { false, true })
                        foreach (bool tb in new[] { false, true })
                            data.Add(dev, tile, aligned, ta, tb);
        return data;
    }

    /// <summary>
    /// More than one block tile in each direction with ragged edges, K not a multiple of the slice,
    /// two batches; aligned operands take the 128-bit loads and stores, misaligned ones (a start one
    /// float in, odd leading dimensions) the per-element path. The TF32 tile is held to the FP32 bound
    /// against a reference whose A and B are rounded to TF32 first (independently, below): so its
    /// fragment layout, and that it rounds at all and to nearest with ties away, are all checked.
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(TileCases))]
    public void Every_tile_and_both_load_paths_match_the_reference(string device, GemmTile tile, bool aligned, bool ta, bool tb)
    {
        var d = Devices.Get(device);
        const int m = 133, n = 130, k = 37, batch = 2;
        int lda = (ta ? m : k) + (aligned ? 3 : 2), ldb = (tb ? k : n) + (aligned ? 2 : 1), ldc = n + (aligned ? 2 : 1);
        if (aligned) (lda, ldb, ldc) = ((lda + 3) / 4 * 4, (ldb + 3) / 4 * 4, (ldc + 3) / 4 * 4);
        long sa = (long)(ta ? k : m) * lda + (aligned ? 4 : 3), sb = (long)(tb ? n : k) * ldb + (aligned ? 8 : 5), sc = (long)m * ldc + (aligned ? 4 : 1);
        int start = aligned ? 0 : 1;
        var rng = new Random((int)tile * 16 + (aligned ? 8 : 0) + (ta ? 2 : 0) + (tb ? 1 : 0));
        var a = Rand.Normal(rng, start + sa * batch);
        var b = Rand.Normal(rng, start + sb * batch);
        var c = Rand.Normal(rng, start + sc * batch);
        var bias = Rand.Normal(rng, n);
        using var ba = d.Upload(a);
        using var bb = d.Upload(b);
        using var bc = d.Upload(c);
        using var bBias = d.Upload(bias);
        var gemm = d.Kernels.Gemm;
        gemm.ForceTile = tile;
        try
        {
            gemm.Forward(ta ? Transpose.T : Transpose.N, tb ? Transpose.T : Transpose.N, m, n, k, 0.75f,
                ba.View.SubView(start, sa * batch), lda, bb.View.SubView(start, sb * batch), ldb, -0.5f,
                bc.View.SubView(start, sc * batch), ldc, bBias.View, batch, sa, sb, sc);
        }
        finally
        {
            gemm.ForceTile = null;
        }
        double[] ad = Rand.ToDouble(a[start..]), bd = Rand.ToDouble(b[start..]), cd = Rand.ToDouble(c[start..]), biasd = Rand.ToDouble(bias);
        if (tile == GemmTile.Tf32) (ad, bd) = (ad.Select(Reference.RoundTf32).ToArray(), bd.Select(Reference.RoundTf32).ToArray());
        var expected = Reference.Gemm(ta, tb, m, n, k, 0.75, ad, lda, bd, ldb, -0.5, cd, ldc, biasd, batch, sa, sb, sc);
        var scale = Reference.GemmErrorScale(ta, tb, m, n, k, 0.75, ad, lda, bd, ldb, -0.5, cd, ldc, biasd, batch, sa, sb, sc);
        Tol.AssertClose(expected, d.Read(bc, c.Length)[start..], Tol.F32Dot, $"C ({tile}, {(aligned ? "aligned" : "misaligned")})", scale);
    }

    public static TheoryData<string, GemmTile, ActivationKind> ActivationCases()
    {
        var data = new TheoryData<string, GemmTile, ActivationKind>();
        foreach (var dev in Devices.Names)
            foreach (var tile in new[] { GemmTile.Tile64, GemmTile.Tile128 })
                foreach (var act in Enum.GetValues<ActivationKind>())
                    if (dev != "cpu" || tile == GemmTile.Tile64) // the CPU's host path has no tiles
                        data.Add(dev, tile, act);
        return data;
    }

    /// <summary>The fused Linear + activation: pre = x·Wᵀ (what backward needs) and y = act(pre + bias).</summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(ActivationCases))]
    public void Fused_activation_epilogue_writes_the_pre_activation_and_the_activation(string device, GemmTile tile, ActivationKind act)
    {
        var d = Devices.Get(device);
        const int m = 131, n = 132, k = 40; // Linear: x [M, K], W [N, K]
        var rng = new Random(5 + (int)act);
        var x = Rand.Normal(rng, m * k);
        var w = Rand.Normal(rng, n * k, 0.3);
        var bias = Rand.Normal(rng, n);
        using var bx = d.Upload(x);
        using var bw = d.Upload(w);
        using var bBias = d.Upload(bias);
        using var pre = d.Poisoned(m * n);
        using var y = d.Poisoned(m * n);
        d.Kernels.Gemm.ForceTile = tile;
        try
        {
            d.Kernels.Gemm.ForwardActivation(Transpose.N, Transpose.T, m, n, k, bx.View, k, bw.View, k, pre.View, n, bBias.View, act, y.View);
        }
        finally
        {
            d.Kernels.Gemm.ForceTile = null;
        }
        double[] xd = Rand.ToDouble(x), wd = Rand.ToDouble(w);
        var expected = Reference.Gemm(false, true, m, n, k, 1, xd, k, wd, k, 0, new double[m * n], n);
        var scale = Reference.GemmErrorScale(false, true, m, n, k, 1, xd, k, wd, k, 0, new double[m * n], n);
        var gotPre = d.Read(pre, m * n);
        Tol.AssertClose(expected, gotPre, Tol.F32Dot, "pre-activation", scale);
        Func<double, double> f = act switch
        {
            ActivationKind.GeluErf => Reference.GeluErf,
            ActivationKind.GeluTanh => Reference.GeluTanh,
            ActivationKind.Relu => Reference.Relu,
            ActivationKind.Tanh => Math.Tanh,
            _ => throw new ArgumentOutOfRangeException(nameof(act)),
        };
        // y is act of the stored (rounded) pre-activation plus the bias, one float op each.
        var expectedY = gotPre.Select((v, i) => f((double)(v + bias[i % n]))).ToArray();
        Tol.AssertClose(expectedY, d.Read(y, m * n), Tol.F32Elementwise, "activation");
    }

    [Fact]
    public void Cpu_gelu_epilogue_without_pre_activation_matches_the_one_with_it_bit_for_bit()
    {
        // Inference skips the pre-activation: partial sums over K-slices are kept in y until GELU overwrites
        // them. Over several blocks and two K-slices, with ragged edges (scalar tails of the epilogue).
        var d = Devices.Get("cpu");
        if (!d.Kernels.Gemm.FusesWithoutPre(ActivationKind.GeluErf)) Assert.Skip("no AVX-512: the CPU path keeps the pre-activation");
        Assert.False(d.Kernels.Gemm.FusesWithoutPre(ActivationKind.Relu));
        const int m = 403, n = 801, k = 530;
        var rng = new Random(17);
        var x = Rand.Normal(rng, m * k);
        var w = Rand.Normal(rng, n * k, 0.1);
        var bias = Rand.Normal(rng, n);
        using var bx = d.Upload(x);
        using var bw = d.Upload(w);
        using var bBias = d.Upload(bias);
        using var pre = d.Poisoned(m * n);
        using var y = d.Poisoned(m * n);
        using var yAlone = d.Poisoned(m * n);
        d.Kernels.Gemm.ForwardActivation(Transpose.N, Transpose.T, m, n, k, bx.View, k, bw.View, k, pre.View, n, bBias.View, ActivationKind.GeluErf, y.View);
        d.Kernels.Gemm.ForwardActivation(Transpose.N, Transpose.T, m, n, k, bx.View, k, bw.View, k, default, n, bBias.View, ActivationKind.GeluErf, yAlone.View);
        var gotPre = d.Read(pre, m * n);
        double[] xd = Rand.ToDouble(x), wd = Rand.ToDouble(w);
        var expected = Reference.Gemm(false, true, m, n, k, 1, xd, k, wd, k, 0, new double[m * n], n);
        var scale = Reference.GemmErrorScale(false, true, m, n, k, 1, xd, k, wd, k, 0, new double[m * n], n);
        Tol.AssertClose(expected, gotPre, Tol.F32Dot, "pre-activation", scale);
        var gotY = d.Read(y, m * n);
        Tol.AssertClose(gotPre.Select((v, i) => Reference.GeluErf((double)(v + bias[i % n]))).ToArray(), gotY, Tol.F32Elementwise, "GELU");
        var alone = d.Read(yAlone, m * n);
        for (int i = 0; i < alone.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(gotY[i]) == BitConverter.SingleToInt32Bits(alone[i]), $"y[{i}] = {alone[i]:R} without the pre-activation, {gotY[i]:R} with it");
        Assert.Throws<ArgumentException>(() => d.Kernels.Gemm.ForwardActivation(Transpose.N, Transpose.T, m, n, k, bx.View, k, bw.View, k, default, n, bBias.View, ActivationKind.Relu, yAlone.View));
    }

    [Theory]
    [InlineData(false, false, true)]
    [InlineData(true, true, true)]
    [InlineData(false, true, true)]
    [InlineData(false, false, false)]
    [InlineData(true, false, false)]
    public void Cpu_path_is_right_across_blocks_and_k_slices(bool ta, bool tb, bool vector512)
    {
        // Larger than one MC×NC block and one KC slice of the host GEMM, with ragged edges,
        // so every loop of the blocked nest, the parallel split and the in-register transposes
        // of the packing (full 12-row and 32-column panels, then partial ones) run; both micro-kernels.
        var d = Devices.Get("cpu");
        bool before = d.Kernels.Gemm.HostVector512;
        d.Kernels.Gemm.HostVector512 = vector512;
        try { CpuPathCase(d, ta, tb); }
        finally { d.Kernels.Gemm.HostVector512 = before; }
    }

    private static void CpuPathCase(TestDevice d, bool ta, bool tb)
    {
        int m = 403, n = 801, k = 530; // over MC = 384 rows, NC = 768 columns and two K-slices (2 × 272), whatever the core count
        var rng = new Random(99);
        int lda = ta ? m : k, ldb = tb ? k : n;
        var a = Rand.Normal(rng, (long)m * k);
        var b = Rand.Normal(rng, (long)k * n);
        var c = Rand.Normal(rng, (long)m * n);
        var bias = Rand.Normal(rng, n);
        using var ba = d.Upload(a);
        using var bb = d.Upload(b);
        using var bc = d.Upload(c);
        using var bBias = d.Upload(bias);
        d.Kernels.Gemm.Forward(ta ? Transpose.T : Transpose.N, tb ? Transpose.T : Transpose.N, m, n, k, 0.5f,
            ba.View, lda, bb.View, ldb, -2f, bc.View, n, bBias.View);
        double[] ad = Rand.ToDouble(a), bd = Rand.ToDouble(b), cd = Rand.ToDouble(c), biasd = Rand.ToDouble(bias);
        var expected = Reference.Gemm(ta, tb, m, n, k, 0.5, ad, lda, bd, ldb, -2, cd, n, biasd);
        var scale = Reference.GemmErrorScale(ta, tb, m, n, k, 0.5, ad, lda, bd, ldb, -2, cd, n, biasd);
        Tol.AssertClose(expected, d.Read(bc, (long)m * n), Tol.F32Dot, "C", scale);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Cpu_rows_of_a_packed_once_per_thread_are_not_reused_by_the_next_product(bool ta)
    {
        // A few rows and many columns (batch 1's shape): one row block in six column blocks, so a thread runs several of
        // them on the rows of A it packed once, all three K-slices. The second product has the same shape and the same
        // buffers but new values of A: it must not see the first one's packing.
        var d = Devices.Get("cpu");
        const int m = 100, n = 1000, k = 1000;
        int lda = ta ? m : k;
        var rng = new Random(23);
        var b = Rand.Normal(rng, (long)k * n);
        using var ba = d.Poisoned((long)m * k);
        using var bb = d.Upload(b);
        using var bc = d.Poisoned((long)m * n);
        foreach (int round in new[] { 0, 1 })
        {
            var a = Rand.Normal(rng, (long)m * k);
            ba.View.CopyFromCPU(a);
            d.Kernels.Gemm.Forward(ta ? Transpose.T : Transpose.N, Transpose.T, m, n, k, 1f, ba.View, lda, bb.View, k, 0f, bc.View, n);
            double[] ad = Rand.ToDouble(a), bd = Rand.ToDouble(b);
            var expected = Reference.Gemm(ta, true, m, n, k, 1, ad, lda, bd, k, 0, new double[m * n], n);
            var scale = Reference.GemmErrorScale(ta, true, m, n, k, 1, ad, lda, bd, k, 0, new double[m * n], n);
            Tol.AssertClose(expected, d.Read(bc, (long)m * n), Tol.F32Dot, $"C of product {round + 1}", scale);
        }
    }

    [Theory]
    [InlineData(false, true)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    [InlineData(true, false)]
    public void Cpu_prepacked_b_gives_the_same_bits_as_packing_per_call(bool tb, bool vector512)
    {
        // A Linear weight packed once (inference) must give exactly what packing it in every call gives: over
        // blocks, two KC slices and ragged panels, with bias, β, and the GELU epilogue with and without pre.
        var d = Devices.Get("cpu");
        bool before = d.Kernels.Gemm.HostVector512;
        d.Kernels.Gemm.HostVector512 = vector512;
        try
        {
            const int m = 403, n = 801, k = 530;
            int ldb = tb ? k + 3 : n + 5;
            var rng = new Random(23);
            var x = Rand.Normal(rng, m * k);
            var w = Rand.Normal(rng, (tb ? n : k) * ldb, 0.1);
            var bias = Rand.Normal(rng, n);
            var c0 = Rand.Normal(rng, m * n);
            using var bx = d.Upload(x);
            using var bw = d.Upload(w);
            using var bBias = d.Upload(bias);
            var op = tb ? Transpose.T : Transpose.N;
            var packed = d.Kernels.Gemm.PackB(op, n, k, bw.View, ldb);
            Assert.NotNull(packed);
            float[] Product(PackedMatrix? p)
            {
                using var c = d.Upload(c0);
                d.Kernels.Gemm.Forward(Transpose.N, op, m, n, k, 0.5f, bx.View, k, bw.View, ldb, -2f, c.View, n, bBias.View, packedB: p);
                return d.Read(c, m * n);
            }
            (float[] Pre, float[] Y) Activated(PackedMatrix? p, bool keepPre)
            {
                using var pre = d.Poisoned(m * n);
                using var y = d.Poisoned(m * n);
                d.Kernels.Gemm.ForwardActivation(Transpose.N, op, m, n, k, bx.View, k, bw.View, ldb, keepPre ? pre.View : default, n, bBias.View,
                    ActivationKind.GeluErf, y.View, p);
                return (d.Read(pre, m * n), d.Read(y, m * n));
            }
            var plain = Product(null);
            AssertSameBits(plain, Product(packed), "C");
            var (pre1, y1) = Activated(null, true);
            var (pre2, y2) = Activated(packed, true);
            AssertSameBits(pre1, pre2, "pre-activation");
            AssertSameBits(y1, y2, "GELU");
            if (d.Kernels.Gemm.FusesWithoutPre(ActivationKind.GeluErf))
                AssertSameBits(y1, Activated(packed, false).Y, "GELU without pre");
            // The packed copy is what the product reads: a snapshot, unchanged when B's buffer is rewritten later.
            bw.View.CopyFromCPU(Rand.Normal(rng, w.Length));
            AssertSameBits(plain, Product(packed), "C from the snapshot");
            Assert.NotEqual(plain[0], Product(null)[0]);
            // Not what was packed: another matrix, or the same one read with another shape, is an error, not wrong numbers.
            using var other = d.Upload(w);
            using var c = d.Poisoned(m * n);
            Assert.Throws<ArgumentException>(() => d.Kernels.Gemm.Forward(Transpose.N, op, m, n, k, 1f, bx.View, k, other.View, ldb, 0f, c.View, n, packedB: packed));
            Assert.Throws<ArgumentException>(() => d.Kernels.Gemm.Forward(Transpose.N, op, m, n - 1, k, 1f, bx.View, k, bw.View, ldb, 0f, c.View, n, packedB: packed));
            // With no B at all (its buffer released, PackedLinears), the packed copy is the operand; a shape it was not packed for is still refused.
            using (var cNoB = d.Upload(c0))
            {
                d.Kernels.Gemm.Forward(Transpose.N, op, m, n, k, 0.5f, bx.View, k, default, ldb, -2f, cNoB.View, n, bBias.View, packedB: packed);
                AssertSameBits(plain, d.Read(cNoB, m * n), "C with no B but its packed copy");
            }
            Assert.Throws<ArgumentException>(() => d.Kernels.Gemm.Forward(Transpose.N, op, m, n, k - 1, 1f, bx.View, k - 1, default, ldb, 0f, c.View, n, packedB: packed));
            Assert.Throws<ArgumentException>(() => d.Kernels.Gemm.Forward(Transpose.N, op, m, n, k, 1f, bx.View, k, default, ldb, 0f, c.View, n));
        }
        finally { d.Kernels.Gemm.HostVector512 = before; }
    }

    [Fact]
    public void Prepacking_is_declined_where_the_gemm_reads_b_as_it_is()
    {
        var d = Devices.Get("cpu-gpu-shaped");
        using var w = d.Upload(new float[12]);
        Assert.Null(d.Kernels.Gemm.PackB(Transpose.T, 3, 4, w.View, 4));
        Assert.Throws<ArgumentException>(() => Devices.Get("cpu").Kernels.Gemm.PackB(Transpose.T, 4, 4, w.View, 4)); // 16 elements needed
    }

    private static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what}[{i}]: {actual[i]:R} with B prepacked, {expected[i]:R} packed per call");
    }

    [Fact]
    public void Bad_shapes_are_clear_errors()
    {
        var d = Devices.Get("cpu");
        using var buf = d.Poisoned(10);
        var ex = Assert.Throws<ArgumentException>(() =>
            d.Kernels.Gemm.Forward(Transpose.N, Transpose.N, 4, 4, 4, 1f, buf.View, 4, buf.View, 4, 0f, buf.View, 4));
        Assert.Contains("operand A", ex.Message);
        Assert.Throws<ArgumentException>(() =>
            d.Kernels.Gemm.Forward(Transpose.N, Transpose.N, 2, 2, 2, 1f, buf.View, 1, buf.View, 2, 0f, buf.View, 2));
    }

    private static T[] Crop<T>(T[] c, int m, int n, int ldc)
    {
        var r = new T[m * n];
        for (int i = 0; i < m; i++) Array.Copy(c, (long)i * ldc, r, (long)i * n, n);
        return r;
    }
}
