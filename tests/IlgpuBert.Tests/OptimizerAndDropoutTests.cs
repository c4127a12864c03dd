using System.Runtime.Intrinsics;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class OptimizerAndDropoutTests
{
    [Fact]
    public void Philox_matches_the_published_known_answers()
    {
        // Random123's kat_vectors for philox4x32_10.
        (uint[] ctr, uint[] key, uint[] expected)[] cases =
        [
            ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
            ([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
            ([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]),
        ];
        foreach (var (ctr, key, expected) in cases)
        {
            uint c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
            Philox.Block(ref c0, ref c1, ref c2, ref c3, key[0], key[1]);
            Assert.Equal(expected, new[] { c0, c1, c2, c3 });
        }
    }

    [Fact]
    public void Philox_sixteen_blocks_at_a_time_are_the_scalar_blocks_in_element_order()
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) Assert.Skip("this CPU has no AVX-512: the host draws Philox one block at a time");
        foreach (long group0 in new[] { 0L, 5, 0xFFFF_FFF8L, 0x1_2345_6789L })
            foreach (var (seed, step, tensor) in new[] { (0UL, 0u, 0u), (0xDEAD_BEEF_0123_4567UL, 77u, 9u) })
            {
                Philox.Words64(seed, step, tensor, group0, out var w0, out var w1, out var w2, out var w3);
                var got = new uint[64];
                w0.CopyTo(got, 0); w1.CopyTo(got, 16); w2.CopyTo(got, 32); w3.CopyTo(got, 48);
                var expected = new uint[64];
                for (int g = 0; g < 16; g++)
                    Philox.Bits(seed, step, tensor, group0 + g, out expected[4 * g], out expected[4 * g + 1], out expected[4 * g + 2], out expected[4 * g + 3]);
                Assert.Equal(expected, got);
            }
    }

    [Fact]
    public void Host_dropout_of_a_long_tensor_is_the_scalar_mask_bit_for_bit()
    {
        var d = Devices.Get("cpu");
        int n = 100_003; // 64-element chunks and a tail
        var x = Rand.Normal(new Random(5), n);
        x[7] = float.NaN; x[8] = float.PositiveInfinity; x[9] = -3f; // dropped elements are exactly +0 whatever they held
        var key = new DropoutKey(0x0123_4567_89AB_CDEFUL, 3, 12);
        using var bx = d.Upload(x);
        using var by = d.Poisoned(n);
        d.Kernels.Dropout.Forward(bx.View, by.View, n, 0.3f, key);
        var expected = ReferenceDropout(x, 0.3f, key).Select(v => (float)v).ToArray();
        var got = d.Read(by, n);
        for (int i = 0; i < n; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(got[i]) || (float.IsNaN(expected[i]) && float.IsNaN(got[i])),
                $"element {i}: expected {expected[i]}, got {got[i]}");
    }

    /// <summary>The host reference of the dropout mask: the same Philox stream the kernel draws.</summary>
    private static double[] ReferenceDropout(float[] x, float p, DropoutKey key)
    {
        var y = new double[x.Length];
        for (long g = 0; g < (x.Length + 3) / 4; g++)
        {
            Philox.Bits(key.Seed, key.Step, key.TensorId, g, out uint r0, out uint r1, out uint r2, out uint r3);
            uint[] r = [r0, r1, r2, r3];
            for (int q = 0; q < 4 && g * 4 + q < x.Length; q++)
                y[g * 4 + q] = DropoutKernels.Keeps(r[q], p) ? x[g * 4 + q] * (double)(1f / (1f - p)) : 0;
        }
        return y;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Dropout_forward_and_backward_apply_the_same_regenerated_mask(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(2);
        int n = 1029; // not a multiple of 4
        var x = Rand.Normal(rng, n);
        var dy = Rand.Normal(rng, n);
        var key = new DropoutKey(0x1234_5678_9abc_def0UL, 17, 3);
        const float p = 0.1f;
        using var bx = d.Upload(x);
        using var by = d.Poisoned(n);
        using var bdy = d.Upload(dy);
        using var bdx = d.Poisoned(n);
        d.Kernels.Dropout.Forward(bx.View, by.View, n, p, key);
        d.Kernels.Dropout.Backward(bdy.View, bdx.View, n, p, key);
        var y = d.Read(by, n);
        Tol.AssertClose(ReferenceDropout(x, p, key), y, Tol.F32Elementwise, "dropout forward");
        Tol.AssertClose(ReferenceDropout(dy, p, key), d.Read(bdx, n), Tol.F32Elementwise, "dropout backward");
        double dropped = y.Count(v => v == 0f) / (double)n;
        Assert.InRange(dropped, 0.07, 0.13); // 0.1 ± 3.4σ for n = 1029
    }

    [Fact]
    public void Dropout_bits_are_identical_across_accelerator_shapes_and_change_with_the_key()
    {
        int n = 4096;
        var x = Enumerable.Repeat(1f, n).ToArray();
        float[] Run(string device, DropoutKey key)
        {
            var d = Devices.Get(device);
            using var bx = d.Upload(x);
            using var by = d.Poisoned(n);
            d.Kernels.Dropout.Forward(bx.View, by.View, n, 0.5f, key);
            return d.Read(by, n);
        }
        var key = new DropoutKey(42, 1, 7);
        var cpu = Run("cpu", key);
        foreach (var other in Devices.Names.Skip(1))
            Assert.Equal(cpu, Run(other, key));
        Assert.NotEqual(cpu, Run("cpu", key with { Step = 2 }));
        Assert.NotEqual(cpu, Run("cpu", key with { TensorId = 8 }));
        Assert.NotEqual(cpu, Run("cpu", key with { Seed = 43 }));
        Assert.Equal(x, RunP0()); // p = 0 is the identity

        float[] RunP0()
        {
            var d = Devices.Get("cpu");
            using var bx = d.Upload(x);
            using var by = d.Poisoned(n);
            d.Kernels.Dropout.Forward(bx.View, by.View, n, 0f, key);
            return d.Read(by, n);
        }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void AdamW_steps_match_torch_formulas_with_global_norm_clipping(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(9);
        int[] sizes = [33, 7, 129];
        var ps = sizes.Select(n => Rand.Normal(rng, n)).ToArray();
        var bufs = ps.Select(d.Upload).ToArray();
        var ms = sizes.Select(n => d.Upload(new float[n])).ToArray();
        var vs = sizes.Select(n => d.Upload(new float[n])).ToArray();
        using var norm = d.Poisoned(1);
        var refP = ps.Select(Rand.ToDouble).ToArray();
        var refM = sizes.Select(n => new double[n]).ToArray();
        var refV = sizes.Select(n => new double[n]).ToArray();
        const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-6, maxNorm = 1.0;
        for (int step = 1; step <= 3; step++)
        {
            var grads = sizes.Select(n => Rand.Normal(rng, n, step == 2 ? 0.01 : 1.0)).ToArray(); // step 2: no clipping
            var gbufs = grads.Select(d.Upload).ToArray();
            d.Kernels.AdamW.GlobalNorm(gbufs.Select(b => (ILGPU.ArrayView<float>)b.View).ToList(), norm.View);
            double total = Math.Sqrt(grads.Sum(g => g.Sum(v => (double)v * v)));
            Tol.AssertClose([total], d.Read(norm, 1), Tol.F32Reduction, $"global norm, step {step}");
            double clip = Math.Min(1, maxNorm / (total + 1e-6));
            for (int t = 0; t < sizes.Length; t++)
            {
                double wd = t == 1 ? 0 : 0.01; // tensor 1 plays a bias: no decay
                d.Kernels.AdamW.Update(bufs[t].View, gbufs[t].View, ms[t].View, vs[t].View, norm.View, sizes[t],
                    new AdamWStep((float)lr, (float)b1, (float)b2, (float)eps, (float)wd, step, (float)maxNorm));
                double bc1 = 1 - Math.Pow(b1, step), bc2 = 1 - Math.Pow(b2, step);
                for (int i = 0; i < sizes[t]; i++)
                {
                    double g = grads[t][i] * clip;
                    refM[t][i] = b1 * refM[t][i] + (1 - b1) * g;
                    refV[t][i] = b2 * refV[t][i] + (1 - b2) * g * g;
                    refP[t][i] *= 1 - lr * wd;
                    refP[t][i] -= lr / bc1 * refM[t][i] / (Math.Sqrt(refV[t][i]) / Math.Sqrt(bc2) + eps);
                }
                Tol.AssertClose(refP[t], d.Read(bufs[t], sizes[t]), Tol.F32Reduction, $"param {t}, step {step}");
                Tol.AssertClose(refM[t], d.Read(ms[t], sizes[t]), Tol.F32Reduction, $"m {t}, step {step}");
                Tol.AssertClose(refV[t], d.Read(vs[t], sizes[t]), Tol.F32Reduction, $"v {t}, step {step}");
            }
            foreach (var b in gbufs) b.Dispose();
        }
        foreach (var b in bufs.Concat(ms).Concat(vs)) b.Dispose();
    }

    [Fact]
    public void Host_AdamW_of_a_long_tensor_is_the_kernel_step_bit_for_bit()
    {
        // The host path runs 16 lanes at a time; the ILGPU kernel (GPU-shaped CPU) runs AdamWArgs.Step per element.
        int n = 100_003;
        var rng = new Random(13);
        float[] param = Rand.Normal(rng, n), grad = Rand.Normal(rng, n), m = Rand.Normal(rng, n, 0.1);
        float[] v = [.. Rand.Normal(rng, n, 0.01).Select(x => x * x)];
        var step = new AdamWStep(3e-3f, 0.9f, 0.98f, 1e-6f, 0.01f, 7, 1f);
        float[][] Run(string device)
        {
            var d = Devices.Get(device);
            using var bp = d.Upload(param);
            using var bg = d.Upload(grad);
            using var bm = d.Upload(m);
            using var bv = d.Upload(v);
            using var norm = d.Upload([2.5f]); // clipped: 1 / 2.5
            d.Kernels.AdamW.Update(bp.View, bg.View, bm.View, bv.View, norm.View, n, step);
            return [d.Read(bp, n), d.Read(bm, n), d.Read(bv, n)];
        }
        var host = Run("cpu");
        var kernel = Run("cpu-gpu-shaped");
        string[] names = ["param", "m", "v"];
        for (int t = 0; t < 3; t++)
        {
            Assert.NotEqual(t == 0 ? param : t == 1 ? m : v, host[t]);
            Assert.True(host[t].AsSpan().SequenceEqual(kernel[t]), $"{names[t]}: the host update differs from the kernel's");
        }
    }

    [Fact]
    public void AdamW_rejects_step_zero_and_dropout_rejects_p_one()
    {
        var d = Devices.Get("cpu");
        using var b = d.Poisoned(4);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            d.Kernels.AdamW.Update(b.View, b.View, b.View, b.View, b.View, 4, AdamWStep.Bert(1e-3f, 0)));
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Kernels.Dropout.Forward(b.View, b.View, 4, 1f, new DropoutKey(1, 1, 1)));
    }
}
