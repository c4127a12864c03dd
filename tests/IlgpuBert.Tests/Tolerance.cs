// One tolerance rule for every numeric test: |got − ref| ≤ atol + rtol·|ref|, with named presets.
// A failure names the worst element, both values and both errors.
namespace IlgpuBert.Tests;

public readonly record struct Tol(double Atol, double Rtol, string Name)
{
    /// <summary>One float op per element against double (activations, dropout, adds).</summary>
    public static readonly Tol F32Elementwise = new(1e-6, 1e-5, "f32-elementwise");

    /// <summary>Float accumulation over up to a few hundred terms of O(1) (GEMM, norms, softmax rows).</summary>
    public static readonly Tol F32Reduction = new(1e-5, 1e-4, "f32-reduction");

    /// <summary>
    /// A float dot product or GEMM element: the textbook forward-error bound is a few units of
    /// roundoff (u = 2⁻²⁴) times Σ|terms|, not times |result|, which cancellation can make tiny.
    /// Use with the <c>scale</c> overload, scale_i = Σ|α·a·b| + |β·c| + |bias|. Atol = 8u.
    /// </summary>
    public static readonly Tol F32Dot = new(8.0 / (1 << 24), 0, "f32-dot (8u·Σ|terms|)");

    public static void AssertClose(double[] expected, float[] got, Tol tol, string what) =>
        AssertClose(expected, got, tol, what, null);

    /// <summary>The same rule with atol scaled per element: |got − ref| ≤ atol·scale_i + rtol·|ref|.</summary>
    public static void AssertClose(double[] expected, float[] got, Tol tol, string what, double[]? scale)
    {
        Assert.True(expected.Length == got.Length, $"{what}: expected {expected.Length} values, got {got.Length}");
        int worst = -1;
        double worstExcess = double.NegativeInfinity;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], g = got[i];
            double bound = tol.Atol * (scale?[i] ?? 1) + tol.Rtol * Math.Abs(e);
            double err = Math.Abs(g - e);
            double excess = double.IsNaN(g) != double.IsNaN(e) || double.IsNaN(err) ? double.PositiveInfinity : err - bound;
            if (double.IsNaN(e) && double.IsNaN(g)) excess = double.NegativeInfinity;
            if (excess > worstExcess)
            {
                worstExcess = excess;
                worst = i;
            }
        }
        if (worst >= 0 && worstExcess > 0)
        {
            double e = expected[worst], g = got[worst];
            double abs = Math.Abs(g - e), rel = abs / Math.Max(Math.Abs(e), 1e-300);
            Assert.Fail($"{what}: worst element [{worst}] got {g:R}, expected {e:R}: abs error {abs:G3}, rel error {rel:G3} > {tol.Name} (atol {tol.Atol:G2}, rtol {tol.Rtol:G2})");
        }
    }
}

public static class Rand
{
    public static float[] Normal(Random rng, long n, double scale = 1.0)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    public static double[] ToDouble(float[] a) => Array.ConvertAll(a, v => (double)v);
}
