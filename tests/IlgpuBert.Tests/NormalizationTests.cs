using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

/// <summary>Residual + LayerNorm and row softmax.</summary>
public class NormalizationTests
{
    public static TheoryData<string, int, int, bool> LayerNormCases()
    {
        var data = new TheoryData<string, int, int, bool>();
        foreach (var dev in Devices.Names)
            foreach (var (r, c) in new[] { (1, 7), (7, 33), (33, 129), (3, 1) })
                foreach (bool residual in new[] { false, true })
                    data.Add(dev, r, c, residual);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(LayerNormCases))]
    public void LayerNorm_forward_matches_reference(string device, int rows, int cols, bool residual)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows + 3 * cols + (residual ? 1 : 0));
        var x = Rand.Normal(rng, rows * cols);
        for (int j = 0; j < cols; j++) x[j] += 1000f; // a row with a large mean: two-pass variance holds
        var r = Rand.Normal(rng, rows * cols);
        var gamma = Rand.Normal(rng, cols);
        var beta = Rand.Normal(rng, cols);
        float eps = cols == 1 ? 1e-5f : 1e-12f;
        using var bx = d.Upload(x);
        using var br = d.Upload(r);
        using var bg = d.Upload(gamma);
        using var bbeta = d.Upload(beta);
        using var by = d.Poisoned(rows * cols);
        using var bm = d.Poisoned(rows);
        using var brs = d.Poisoned(rows);
        d.Kernels.LayerNorm.Forward(bx.View, residual ? br.View : default, bg.View, bbeta.View, by.View, bm.View, brs.View, rows, cols, eps);
        // The residual sum is an FP32 add (as in PyTorch): the reference starts from its rounded value,
        // which around 1000 is only good to 3e-5.
        var sum = residual ? x.Select((v, i) => (double)(v + r[i])).ToArray() : Rand.ToDouble(x);
        var (y, mean, rstd) = Reference.LayerNorm(sum, null, Rand.ToDouble(gamma), Rand.ToDouble(beta), rows, cols, eps);
        Tol.AssertClose(y, d.Read(by, rows * cols), Tol.F32Reduction, "y");
        Tol.AssertClose(mean, d.Read(bm, rows), Tol.F32Reduction, "mean");
        Tol.AssertClose(rstd, d.Read(brs, rows), Tol.F32Reduction, "rstd");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(LayerNormCases))]
    public void LayerNorm_backward_matches_finite_differences(string device, int rows, int cols, bool residual)
    {
        if (cols == 1) return; // LN over one element is constant: nothing to differentiate
        var d = Devices.Get(device);
        var rng = new Random(17 * rows + cols);
        var x = Rand.Normal(rng, rows * cols);
        var r = Rand.Normal(rng, rows * cols);
        var gamma = Rand.Normal(rng, cols);
        var beta = Rand.Normal(rng, cols);
        var dy = Rand.Normal(rng, rows * cols);
        var dGamma0 = Rand.Normal(rng, cols);
        const float eps = 1e-12f;
        using var bx = d.Upload(x);
        using var br = d.Upload(r);
        using var bg = d.Upload(gamma);
        using var bbeta = d.Upload(beta);
        using var by = d.Poisoned(rows * cols);
        using var bm = d.Poisoned(rows);
        using var brs = d.Poisoned(rows);
        using var bdy = d.Upload(dy);
        using var bdx = d.Poisoned(rows * cols);
        using var bdg = d.Upload(dGamma0);
        using var bdb = d.Poisoned(cols);
        var rv = residual ? br.View : default;
        d.Kernels.LayerNorm.Forward(bx.View, rv, bg.View, bbeta.View, by.View, bm.View, brs.View, rows, cols, eps);
        d.Kernels.LayerNorm.Backward(bx.View, rv, bg.View, bm.View, brs.View, bdy.View, bdx.View, bdg.View, default, rows, cols, accumulateParams: true);
        d.Kernels.LayerNorm.Backward(bx.View, rv, bg.View, bm.View, brs.View, bdy.View, bdx.View, default, bdb.View, rows, cols, accumulateParams: false);

        double[] xd = Rand.ToDouble(x), rd = Rand.ToDouble(r), gd = Rand.ToDouble(gamma), bd = Rand.ToDouble(beta), dyd = Rand.ToDouble(dy);
        double Loss(double[] xv, double[] gv, double[] bv) =>
            Reference.Dot(dyd, Reference.LayerNorm(xv, residual ? rd : null, gv, bv, rows, cols, eps).Y);
        var gx = Reference.NumericGradient(v => Loss(v, gd, bd), xd);
        var gg = Reference.NumericGradient(v => Loss(xd, v, bd), gd);
        var gb = Reference.NumericGradient(v => Loss(xd, gd, v), bd);
        for (int j = 0; j < cols; j++) gg[j] += dGamma0[j];
        Tol.AssertClose(gx, d.Read(bdx, rows * cols), Tol.F32Reduction, "dx");
        Tol.AssertClose(gg, d.Read(bdg, cols), Tol.F32Reduction, "dGamma (accumulated)");
        Tol.AssertClose(gb, d.Read(bdb, cols), Tol.F32Reduction, "dBeta");
    }

    public static TheoryData<string, int, int> SoftmaxShapes()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var (r, c) in new[] { (1, 1), (7, 33), (5, 129) })
                data.Add(dev, r, c);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(SoftmaxShapes))]
    public void Softmax_forward_and_backward(string device, int rows, int cols)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows * cols + 1);
        var x = Rand.Normal(rng, rows * cols, 4.0);
        if (cols > 3) { x[1] = 80f; x[2] = float.NegativeInfinity; } // large logit, and a masked one
        var dy = Rand.Normal(rng, rows * cols);
        using var bx = d.Upload(x);
        using var by = d.Poisoned(rows * cols);
        using var bdy = d.Upload(dy);
        using var bdx = d.Poisoned(rows * cols);
        d.Kernels.Softmax.Forward(bx.View, by.View, rows, cols);
        d.Kernels.Softmax.Backward(by.View, bdy.View, bdx.View, rows, cols);
        var xd = Rand.ToDouble(x);
        Tol.AssertClose(Reference.Softmax(xd, rows, cols), d.Read(by, rows * cols), Tol.F32Reduction, "softmax");
        var dyd = Rand.ToDouble(dy);
        var finite = xd.Select(v => double.IsNegativeInfinity(v) ? 0 : v).ToArray();
        var g = Reference.NumericGradient(v =>
        {
            var masked = v.Select((e, i) => double.IsNegativeInfinity(xd[i]) ? double.NegativeInfinity : e).ToArray();
            return Reference.Dot(dyd, Reference.Softmax(masked, rows, cols));
        }, finite);
        Tol.AssertClose(g, d.Read(bdx, rows * cols), Tol.F32Reduction, "dx");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Softmax_of_a_fully_masked_row_is_zero_not_nan(string device)
    {
        var d = Devices.Get(device);
        var x = new float[2 * 5];
        Array.Fill(x, float.NegativeInfinity, 0, 5);
        using var bx = d.Upload(x);
        using var by = d.Poisoned(10);
        d.Kernels.Softmax.Forward(bx.View, by.View, 2, 5);
        var y = d.Read(by, 10);
        Assert.All(y[..5], v => Assert.Equal(0f, v));
        Assert.All(y[5..], v => Assert.Equal(0.2f, v, 6));
    }
}
