// The bfloat16 GEMM (AVX512_BF16's VDPBF16PS as machine code, and its FP32 fallback) against a double reference
// over awkward shapes: K odd (the padded pair), M and N not multiples of the 6 × 32 tile, one column panel
// alone, K past one cache block (2,049: three blocks meeting in C). Bounds come from the error model, not tuning: on the bf16-rounded inputs the products are exact in
// FP32 and only the K − 1 additions round, |error| ≤ K·2⁻²⁴·Σ|aₖbₖ|; against the FP32 inputs each rounded
// product adds at most (2·2⁻⁸ + 2⁻¹⁶)·|aₖbₖ| (bf16 keeps 8 significant bits: unit roundoff 2⁻⁸). Outputs are poisoned; a wrong lane or pair fails the first bound.
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class Bf16GemmTests
{
    public static TheoryData<int, int, int, bool> Shapes()
    {
        var data = new TheoryData<int, int, int, bool>();
        foreach (var (m, n, k) in new[] { (1, 1, 1), (5, 17, 3), (6, 32, 64), (7, 33, 129), (13, 16, 2), (50, 71, 97), (2, 100, 768), (7, 40, 2049) })
            foreach (bool fallback in new[] { false, true })
                data.Add(m, n, k, fallback);
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void The_bf16_gemm_matches_the_double_reference_within_its_error_model(int m, int n, int k, bool fallback)
    {
        if (!fallback && !HostBf16Gemm.UsesBf16Instructions) Assert.Skip("this CPU has no AVX512_BF16 (the fallback is tested)");
        var rng = new Random(m * 1000 + n * 10 + k);
        var a = Rand.Normal(rng, m * k);
        var b = Rand.Normal(rng, n * k);
        var c = Enumerable.Repeat(float.NaN, m * n).ToArray();
        bool before = HostBf16Gemm.ForceFallback;
        HostBf16Gemm.ForceFallback = fallback;
        try { HostBf16Gemm.Run(a, m, b, n, k, c); }
        finally { HostBf16Gemm.ForceFallback = before; }
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double onRounded = 0, onInputs = 0, magnitude = 0;
                for (int t = 0; t < k; t++)
                {
                    double x = a[i * k + t], y = b[j * k + t];
                    onRounded += (double)BFloat16.RoundToFloat(a[i * k + t]) * BFloat16.RoundToFloat(b[j * k + t]);
                    onInputs += x * y;
                    magnitude += Math.Abs(x * y);
                }
                double got = c[i * n + j];
                double accumulation = k * Math.Pow(2, -24) * magnitude * 1.01; // the rounded products' magnitudes are within 1% of the inputs'
                Assert.True(Math.Abs(got - onRounded) <= accumulation, $"C[{i}, {j}] = {got}, bf16 inputs give {onRounded} (bound {accumulation})");
                double rounding = (2 * Math.Pow(2, -8) + Math.Pow(2, -16)) * magnitude; // bf16 keeps 8 significant bits: unit roundoff 2⁻⁸
                Assert.True(Math.Abs(got - onInputs) <= rounding + accumulation, $"C[{i}, {j}] = {got}, FP32 inputs give {onInputs} (bound {rounding + accumulation})");
            }
    }

    [Fact]
    public void A_packed_weight_serves_many_products_and_bad_shapes_are_refused()
    {
        var rng = new Random(3);
        int n = 40, k = 33;
        var b = Rand.Normal(rng, n * k);
        var packed = HostBf16Gemm.Pack(b, n, k);
        foreach (int m in new[] { 1, 6, 11 })
        {
            var a = Rand.Normal(rng, m * k);
            var once = new float[m * n];
            var again = new float[m * n];
            HostBf16Gemm.Run(a, m, packed, once);
            HostBf16Gemm.Run(a, m, b, n, k, again);
            Assert.Equal(once, again);
        }
        Assert.Throws<ArgumentException>(() => HostBf16Gemm.Pack(b, n, k + 1));
        Assert.Throws<ArgumentException>(() => HostBf16Gemm.Run(new float[5], 1, packed, new float[n]));
        Assert.Throws<ArgumentException>(() => HostBf16Gemm.Run(new float[k], 1, packed, new float[n - 1]));
    }
}
