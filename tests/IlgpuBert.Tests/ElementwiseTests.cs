using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

/// <summary>Bias add and the fused bias + activation pair.</summary>
public class ElementwiseTests
{
    public static TheoryData<string, int, int> Shapes()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var (r, c) in new[] { (1, 1), (7, 33), (129, 7), (33, 65) })
                data.Add(dev, r, c);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Shapes))]
    public void Bias_forward_and_column_sum_backward(string device, int rows, int cols)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows * 31 + cols);
        var x = Rand.Normal(rng, rows * cols);
        var bias = Rand.Normal(rng, cols);
        var dBias0 = Rand.Normal(rng, cols);
        using var bx = d.Upload(x);
        using var bb = d.Upload(bias);
        using var by = d.Poisoned(rows * cols);
        using var bdb = d.Upload(dBias0);
        d.Kernels.Bias.Forward(bx.View, bb.View, by.View, rows, cols);
        d.Kernels.Bias.Backward(bx.View, bdb.View, rows, cols, accumulate: true); // dy = x here
        var y = new double[rows * cols];
        var colSum = Rand.ToDouble(dBias0);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                y[i * cols + j] = (double)x[i * cols + j] + bias[j];
                colSum[j] += x[i * cols + j];
            }
        Tol.AssertClose(y, d.Read(by, rows * cols), Tol.F32Elementwise, "y");
        Tol.AssertClose(colSum, d.Read(bdb, cols), Tol.F32Reduction, "dBias (accumulated)");
    }

    public static TheoryData<string, ActivationKind> Activations()
    {
        var data = new TheoryData<string, ActivationKind>();
        foreach (var dev in Devices.Names)
            foreach (var kind in Enum.GetValues<ActivationKind>())
                data.Add(dev, kind);
        return data;
    }

    private static double Act(ActivationKind kind, double x) => kind switch
    {
        ActivationKind.GeluErf => Reference.GeluErf(x),
        ActivationKind.GeluTanh => Reference.GeluTanh(x),
        ActivationKind.Tanh => Math.Tanh(x),
        _ => Reference.Relu(x),
    };

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Activations))]
    public void Activation_with_bias_forward_matches_reference(string device, ActivationKind kind)
    {
        var d = Devices.Get(device);
        int rows = 9, cols = 37; // on the CPU: two 16-lane vectors and a scalar tail per row
        var rng = new Random((int)kind + 5);
        var x = Rand.Normal(rng, rows * cols, 3.0);
        // The tails, where naive formulas cancel or overflow to NaN.
        x[0] = -30f; x[1] = -9f; x[2] = 9f; x[3] = 30f; x[4] = 1e-4f; x[5] = -1e-4f; x[6] = 0f;
        var bias = Rand.Normal(rng, cols, 0.1);
        bias[0] = 0; bias[1] = 0; bias[2] = 0; bias[3] = 0; bias[4] = 0; bias[5] = 0; bias[6] = 0;
        using var bx = d.Upload(x);
        using var bb = d.Upload(bias);
        using var by = d.Poisoned(rows * cols);
        d.Kernels.Activation.Forward(kind, bx.View, bb.View, by.View, rows, cols);
        var expected = new double[rows * cols];
        for (int i = 0; i < expected.Length; i++) expected[i] = Act(kind, (double)x[i] + bias[i % cols]);
        Tol.AssertClose(expected, d.Read(by, rows * cols), Tol.F32Elementwise, $"{kind} forward");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Activations))]
    public void Activation_backward_matches_finite_differences(string device, ActivationKind kind)
    {
        var d = Devices.Get(device);
        int rows = 7, cols = 33;
        var rng = new Random((int)kind + 50);
        var x = Rand.Normal(rng, rows * cols, 2.0);
        var bias = Rand.Normal(rng, cols, 0.5);
        var dy = Rand.Normal(rng, rows * cols);
        var dBias0 = Rand.Normal(rng, cols);
        if (kind == ActivationKind.Relu) // keep away from the kink, where differences are meaningless
            for (int i = 0; i < x.Length; i++)
                if (Math.Abs(x[i] + bias[i % cols]) < 1e-3) x[i] += 0.01f;
        using var bx = d.Upload(x);
        using var bb = d.Upload(bias);
        using var bdy = d.Upload(dy);
        using var bdx = d.Poisoned(rows * cols);
        using var bdb = d.Upload(dBias0);
        d.Kernels.Activation.Backward(kind, bx.View, bb.View, bdy.View, bdx.View, bdb.View, rows, cols, accumulateBias: true);

        double[] xd = Rand.ToDouble(x), bd = Rand.ToDouble(bias), dyd = Rand.ToDouble(dy);
        double Loss(double[] xv, double[] bv)
        {
            double s = 0;
            for (int i = 0; i < xv.Length; i++) s += dyd[i] * Act(kind, xv[i] + bv[i % cols]);
            return s;
        }
        var gx = Reference.NumericGradient(v => Loss(v, bd), xd);
        var gb = Reference.NumericGradient(v => Loss(xd, v), bd);
        for (int j = 0; j < cols; j++) gb[j] += dBias0[j];
        Tol.AssertClose(gx, d.Read(bdx, rows * cols), Tol.F32Elementwise, $"{kind} dx");
        Tol.AssertClose(gb, d.Read(bdb, cols), Tol.F32Reduction, $"{kind} dBias");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Gather_and_axpy(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(21);
        var table = Rand.Normal(rng, 9 * 5);
        int[] rows = [4, 0, 8, 4];
        var y0 = Rand.Normal(rng, 20);
        using var bt = d.Upload(table);
        using var bout = d.Poisoned(20);
        using var by = d.Upload(y0);
        d.Kernels.Embeddings.Gather(bt.View, rows, bout.View, 9, 5);
        d.Kernels.Elementwise.Axpy(-0.5f, bout.View, by.View, 20);
        var gathered = rows.SelectMany(r => table.Skip(r * 5).Take(5)).Select(v => (double)v).ToArray();
        Tol.AssertClose(gathered, d.Read(bout, 20), Tol.F32Elementwise, "gather");
        Tol.AssertClose(y0.Select((v, i) => v - 0.5 * gathered[i]).ToArray(), d.Read(by, 20), Tol.F32Elementwise, "axpy");
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Kernels.Embeddings.Gather(bt.View, [9], bout.View, 9, 5));
    }

    [Fact]
    public void Hidden_act_names_map_to_variants()
    {
        Assert.Equal(ActivationKind.GeluErf, ActivationKernels.Parse("gelu"));
        Assert.Equal(ActivationKind.GeluTanh, ActivationKernels.Parse("gelu_new"));
        Assert.Equal(ActivationKind.GeluTanh, ActivationKernels.Parse("gelu_pytorch_tanh"));
        Assert.Equal(ActivationKind.Relu, ActivationKernels.Parse("relu"));
        Assert.Contains("swish", Assert.Throws<ArgumentException>(() => ActivationKernels.Parse("swish")).Message);
    }

    [Fact]
    public void Host_gelu_matches_double_on_a_dense_grid()
    {
        // The CPU accelerator's GELU (HostRows' 16-lane formulas where the hardware has them, the scalar tail for the last
        // value), forward and derivative, on [-10, 10] as floats: the tails, the sign change and everything between.
        var d = Devices.Get("cpu");
        var xs = Enumerable.Range(-4000, 8001).Select(i => (float)(i / 400.0)).ToArray();
        int n = xs.Length;
        using var bx = d.Upload(xs);
        using var bias = d.Upload(new float[n]);
        using var ones = d.Upload(Enumerable.Repeat(1f, n).ToArray());
        using var by = d.Poisoned(n);
        using var bdx = d.Poisoned(n);
        using var bdb = d.Poisoned(n);
        d.Kernels.Activation.Forward(ActivationKind.GeluErf, bx.View, bias.View, by.View, 1, n);
        d.Kernels.Activation.Backward(ActivationKind.GeluErf, bx.View, bias.View, ones.View, bdx.View, bdb.View, 1, n, accumulateBias: false);
        Tol.AssertClose(xs.Select(x => Reference.GeluErf(x)).ToArray(), d.Read(by, n), Tol.F32Elementwise, "GELU");
        Tol.AssertClose(xs.Select(x => 0.5 * Reference.Erfc(-x / Math.Sqrt(2)) + x * Math.Exp(-0.5 * x * x) / Math.Sqrt(2 * Math.PI)).ToArray(),
            d.Read(bdx, n), Tol.F32Elementwise, "GELU'");
    }

    [Fact]
    public void Kernel_math_matches_double_on_a_dense_grid()
    {
        // The scalar helpers are what make GELU accurate on CUDA; check them finely on the host.
        // [-10, 10], rounded to float first: the reference must see the same input the kernel does.
        var xs = Enumerable.Range(-4000, 8001).Select(i => (double)(float)(i / 400.0)).ToArray();
        Tol.AssertClose(xs.Select(Math.Tanh).ToArray(), xs.Select(x => KernelMath.Tanh((float)x)).ToArray(), Tol.F32Elementwise, "tanh");
        Tol.AssertClose(xs.Select(x => Reference.Erfc(x)).ToArray(), xs.Select(x => KernelMath.Erfc((float)x)).ToArray(),
            new Tol(1e-30, 2e-6, "erfc-relative"), "erfc");
        Tol.AssertClose(xs.Select(x => 1 / (1 + Math.Exp(-x))).ToArray(), xs.Select(x => KernelMath.Sigmoid((float)x)).ToArray(),
            Tol.F32Elementwise, "sigmoid");
    }
}
