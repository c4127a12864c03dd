// Plain double-precision references: the yardstick for every kernel. Written for clarity, not speed,
// straight from the formulas (and PyTorch's definitions where a convention matters).
namespace IlgpuBert.Tests;

public static class Reference
{
    /// <summary>C = α·op(A)·op(B) + β·C + bias, row-major, batched; β = 0 never reads C.</summary>
    public static double[] Gemm(bool ta, bool tb, int m, int n, int k, double alpha, double[] a, int lda, double[] b, int ldb,
        double beta, double[] c, int ldc, double[]? bias = null, int batch = 1, long sa = 0, long sb = 0, long sc = 0)
    {
        var result = (double[])c.Clone();
        for (int z = 0; z < batch; z++)
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int p = 0; p < k; p++)
                    {
                        double av = a[z * sa + (ta ? (long)p * lda + i : (long)i * lda + p)];
                        double bv = b[z * sb + (tb ? (long)j * ldb + p : (long)p * ldb + j)];
                        s += av * bv;
                    }
                    long idx = z * sc + (long)i * ldc + j;
                    double v = alpha * s + (beta != 0 ? beta * c[idx] : 0) + (bias?[j] ?? 0);
                    result[idx] = v;
                }
        return result;
    }

    /// <summary>Σ|α·a·b| + |β·c| + |bias| per element of C: the magnitude a float GEMM's rounding scales with.</summary>
    public static double[] GemmErrorScale(bool ta, bool tb, int m, int n, int k, double alpha, double[] a, int lda, double[] b, int ldb,
        double beta, double[] c, int ldc, double[]? bias = null, int batch = 1, long sa = 0, long sb = 0, long sc = 0)
    {
        var abs = (double[] v) => v.Select(Math.Abs).ToArray();
        var scale = Gemm(ta, tb, m, n, k, Math.Abs(alpha), abs(a), lda, abs(b), ldb, Math.Abs(beta),
            beta != 0 ? abs(c) : c, ldc, bias is null ? null : abs(bias), batch, sa, sb, sc);
        return scale.Select(v => double.IsNaN(v) ? 0 : v).ToArray();
    }

    /// <summary>
    /// x rounded to TF32's 11 significant bits, to nearest with ties away from zero (cvt.rna.tf32.f32),
    /// by scaling the significand to an integer: independent of the bit arithmetic the kernels use.
    /// </summary>
    public static double RoundTf32(double x)
    {
        if (x == 0 || !double.IsFinite(x)) return x;
        double scale = Math.ScaleB(1.0, 10 - Math.ILogB(x));
        return Math.Round(x * scale, MidpointRounding.AwayFromZero) / scale;
    }

    /// <summary>erfc to ~1e-15: Taylor series of erf below 3, Lentz continued fraction above.</summary>
    public static double Erfc(double x)
    {
        if (x < 0) return 2 - Erfc(-x);
        if (x < 3)
        {
            double sum = 0, term = x;
            for (int n = 0; n < 200; n++)
            {
                double t = term / (2 * n + 1);
                sum += t;
                if (Math.Abs(t) < 1e-17 * Math.Abs(sum)) break;
                term *= -x * x / (n + 1);
            }
            return 1 - 2 / Math.Sqrt(Math.PI) * sum;
        }
        // erfc(x) = exp(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …)))))
        double f = x, c = x, d = 0;
        for (int i = 1; i < 300; i++)
        {
            double ai = i / 2.0;
            d = x + ai * d;
            d = 1 / d;
            c = x + ai / c;
            double delta = c * d;
            f *= delta;
            if (Math.Abs(delta - 1) < 1e-16) break;
        }
        return Math.Exp(-x * x) / Math.Sqrt(Math.PI) / f;
    }

    public static double GeluErf(double x) => x * 0.5 * Erfc(-x / Math.Sqrt(2));

    public static double GeluTanh(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    public static double Relu(double x) => Math.Max(x, 0);

    /// <summary>LN(x + r) with biased variance, per row; also returns mean and 1/σ.</summary>
    public static (double[] Y, double[] Mean, double[] Rstd) LayerNorm(double[] x, double[]? r, double[] gamma, double[] beta,
        int rows, int cols, double eps)
    {
        var y = new double[rows * cols];
        var mean = new double[rows];
        var rstd = new double[rows];
        for (int i = 0; i < rows; i++)
        {
            var v = new double[cols];
            for (int j = 0; j < cols; j++) v[j] = x[i * cols + j] + (r?[i * cols + j] ?? 0);
            double mu = v.Average();
            double var = v.Select(e => (e - mu) * (e - mu)).Average();
            double rs = 1 / Math.Sqrt(var + eps);
            for (int j = 0; j < cols; j++) y[i * cols + j] = (v[j] - mu) * rs * gamma[j] + beta[j];
            mean[i] = mu;
            rstd[i] = rs;
        }
        return (y, mean, rstd);
    }

    public static double[] Softmax(double[] x, int rows, int cols)
    {
        var y = new double[x.Length];
        for (int i = 0; i < rows; i++)
        {
            double m = double.NegativeInfinity;
            for (int j = 0; j < cols; j++) m = Math.Max(m, x[i * cols + j]);
            if (double.IsNegativeInfinity(m)) continue; // fully masked row: zeros
            double s = 0;
            for (int j = 0; j < cols; j++) s += Math.Exp(x[i * cols + j] - m);
            for (int j = 0; j < cols; j++) y[i * cols + j] = Math.Exp(x[i * cols + j] - m) / s;
        }
        return y;
    }

    /// <summary>Mean cross-entropy over rows whose label is not −100 (0 when there are none).</summary>
    public static double CrossEntropy(double[] logits, int[] labels, int rows, int vocab)
    {
        double sum = 0;
        int count = 0;
        for (int i = 0; i < rows; i++)
        {
            if (labels[i] == -100) continue;
            double m = double.NegativeInfinity;
            for (int j = 0; j < vocab; j++) m = Math.Max(m, logits[i * vocab + j]);
            double s = 0;
            for (int j = 0; j < vocab; j++) s += Math.Exp(logits[i * vocab + j] - m);
            sum += m + Math.Log(s) - logits[i * vocab + labels[i]];
            count++;
        }
        return count == 0 ? 0 : sum / count;
    }

    /// <summary>Central differences of a scalar function at every coordinate.</summary>
    public static double[] NumericGradient(Func<double[], double> f, double[] x, double h = 1e-6)
    {
        var g = new double[x.Length];
        var xp = (double[])x.Clone();
        for (int i = 0; i < x.Length; i++)
        {
            double orig = xp[i];
            xp[i] = orig + h;
            double fp = f(xp);
            xp[i] = orig - h;
            double fm = f(xp);
            xp[i] = orig;
            g[i] = (fp - fm) / (2 * h);
        }
        return g;
    }

    public static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
