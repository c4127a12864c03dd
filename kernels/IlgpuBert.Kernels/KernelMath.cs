// Scalar math that must stay FP32-accurate on every accelerator.
//
// ILGPU lowers tanh to tanh.approx.f32 on CUDA (abs. error ~5e-4, see ILGPU-NOTES.md), which would
// miss FP32 tolerances in GELU and the pooler. Everything here is built from exp, whose CUDA
// lowering (ex2.approx) is good to a few ulp, and is written so that no result comes from the
// difference of two nearly equal numbers.
using System.Runtime.CompilerServices;

namespace IlgpuBert.Kernels;

public static class KernelMath
{
    /// <summary>1 / (1 + e^-x), without overflow to NaN at either end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sigmoid(float x)
    {
        if (x >= 0f)
            return 1f / (1f + MathF.Exp(-x));
        float e = MathF.Exp(x);
        return e / (1f + e);
    }

    /// <summary>tanh(x) = 2·sigmoid(2x) − 1 for |x| ≥ 0.25; an odd Taylor polynomial below, where
    /// that difference would cancel. Relative error ≲ 2e-7 on both branches.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Tanh(float x)
    {
        float a = MathF.Abs(x);
        if (a < 0.25f)
        {
            // x − x³/3 + 2x⁵/15 − 17x⁷/315 + 62x⁹/2835: next term < 2e-9 at 0.25.
            float x2 = x * x;
            return x + x * x2 * (-1f / 3f + x2 * (2f / 15f + x2 * (-17f / 315f + x2 * (62f / 2835f))));
        }
        float e = MathF.Exp(-2f * a);
        float t = (1f - e) / (1f + e);
        return x < 0f ? -t : t;
    }

    /// <summary>
    /// e^(−c·a²) for a ≥ 0 and c a power of two, to a few ulp. Evaluating −c·a² in float first
    /// would err by c·a²·2⁻²⁴ in the exponent, i.e. ~1e-6 relative at a = 4. Instead a is split
    /// into a head with 8 fractional bits (whose square is exact below 16) and the rest:
    /// a² = h² + (a − h)(a + h), and the two exponentials multiply.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ExpNegSquare(float a, float c)
    {
        float h = MathF.Floor(a * 256f) * (1f / 256f);
        return MathF.Exp(-c * (h * h)) * MathF.Exp(-c * ((a - h) * (a + h)));
    }

    /// <summary>
    /// Complementary error function with fractional error below 1.2e-7 everywhere (the Chebyshev
    /// fit of Numerical Recipes' erfcc: erfc(a) = t·e^(−a² + P(t)), t = 1/(1 + a/2)). Being a
    /// product, not a difference, it keeps full relative accuracy in the tail.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Erfc(float z)
    {
        float a = MathF.Abs(z);
        float r = ErfcTail(a, ExpNegSquare(a, 1f));
        return z >= 0f ? r : 2f - r;
    }

    /// <summary>The erfc fit's polynomial P(t) = C0 + t·(C1 + … + t·C9) (also evaluated on 16 lanes by the CPU host path).</summary>
    internal const float ErfcC0 = -1.26551223f, ErfcC1 = 1.00002368f, ErfcC2 = 0.37409196f, ErfcC3 = 0.09678418f, ErfcC4 = -0.18628806f,
        ErfcC5 = 0.27886807f, ErfcC6 = -1.13520398f, ErfcC7 = 1.48851587f, ErfcC8 = -0.82215223f, ErfcC9 = 0.17087277f;

    /// <summary>erfc(a) for a ≥ 0, given e^(−a²).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ErfcTail(float a, float expNegA2)
    {
        float t = 1f / (1f + 0.5f * a);
        float poly = ErfcC0 + t * (ErfcC1 + t * (ErfcC2 + t * (ErfcC3 +
            t * (ErfcC4 + t * (ErfcC5 + t * (ErfcC6 + t * (ErfcC7 +
            t * (ErfcC8 + t * ErfcC9))))))));
        return t * expNegA2 * MathF.Exp(poly);
    }

    /// <summary>
    /// Standard normal CDF Φ(x) = ½·erfc(−x/√2). The Gaussian factor is computed as e^(−x²/2)
    /// from x itself, so rounding x/√2 does not enter the exponent.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float NormalCdf(float x)
    {
        float ax = MathF.Abs(x);
        float half = 0.5f * ErfcTail(ax * 0.70710678118654752f, ExpNegSquare(ax, 0.5f));
        return x >= 0f ? 1f - half : half;
    }

    /// <summary>Standard normal density φ(x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float NormalPdf(float x) => 0.39894228040143268f * ExpNegSquare(MathF.Abs(x), 0.5f);
}
