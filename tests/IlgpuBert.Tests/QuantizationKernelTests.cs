using ILGPU.Runtime;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

/// <summary>
/// The int8 kernels against exact integer references (quantize, GEMM) and the float rescale and
/// head-scaling kernels against double references, on awkward shapes.
/// </summary>
public class QuantizationKernelTests
{
    public static TheoryData<string, int, int, int> GemmShapes()
    {
        var data = new TheoryData<string, int, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var (m, n, k) in new[] { (1, 1, 1), (7, 33, 5), (33, 7, 129), (129, 65, 33), (5, 3, 0) })
                data.Add(dev, m, n, k);
        return data;
    }

    private static sbyte[] RandomInt8(Random rng, int n)
    {
        var v = new sbyte[n];
        for (int i = 0; i < n; i++) v[i] = (sbyte)rng.Next(-127, 128);
        if (n > 1) { v[0] = 127; v[^1] = -127; } // the extremes always appear
        return v;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(GemmShapes))]
    public void Int8_gemm_equals_the_integer_reference_exactly(string device, int m, int n, int k)
    {
        var d = Devices.Get(device);
        var rng = new Random(m * 1000 + n * 10 + k);
        var a = RandomInt8(rng, m * k);
        var b = RandomInt8(rng, n * k);
        using var ba = d.Accelerator.Allocate1D(a.Length == 0 ? new sbyte[1] : a);
        using var bb = d.Accelerator.Allocate1D(b.Length == 0 ? new sbyte[1] : b);
        var poison = Enumerable.Repeat(int.MinValue, m * n).ToArray();
        using var bc = d.Accelerator.Allocate1D(poison);
        d.Kernels.Quantization.Gemm(ba.View, bb.View, bc.View, m, n, k);
        var got = bc.GetAsArray1D();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                long expected = 0;
                for (int t = 0; t < k; t++) expected += a[i * k + t] * b[j * k + t];
                Assert.True(expected == got[i * n + j], $"acc[{i}, {j}] = {got[i * n + j]}, expected {expected}");
            }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Int8_gemm_is_exact_at_the_largest_products(string device)
    {
        // Every product 127·127 or −127·127: the sums reach 127²·K without overflow or rounding.
        var d = Devices.Get(device);
        const int m = 5, n = 6, k = 2049;
        var a = Enumerable.Range(0, m * k).Select(i => (sbyte)(i % 3 == 0 ? -127 : 127)).ToArray();
        var b = Enumerable.Repeat((sbyte)127, n * k).ToArray();
        using var ba = d.Accelerator.Allocate1D(a);
        using var bb = d.Accelerator.Allocate1D(b);
        using var bc = d.Accelerator.Allocate1D(new int[m * n]);
        d.Kernels.Quantization.Gemm(ba.View, bb.View, bc.View, m, n, k);
        var got = bc.GetAsArray1D();
        for (int i = 0; i < m; i++)
        {
            long expected = 0;
            for (int t = 0; t < k; t++) expected += a[i * k + t] * 127L;
            for (int j = 0; j < n; j++) Assert.Equal(expected, got[i * n + j]);
        }
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Quantize_rounds_and_clamps_exactly_as_the_host_definition(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(3);
        const float scale = 0.05f;
        // Random values, values past the clamp, exact halves and their neighbours, zero and negative zero.
        var x = Rand.Normal(rng, 257, 3.0).Concat([7f, -7f, 100f, -100f, 0.025f, -0.025f, 0.075f, -0.075f, 0f, -0f, 6.35f, -6.35f, 6.375f]).ToArray();
        using var bx = d.Upload(x);
        using var bq = d.Accelerator.Allocate1D(Enumerable.Repeat(sbyte.MinValue, x.Length).ToArray()); // −128 is never a result
        d.Kernels.Quantization.Quantize(bx.View, bq.View, x.Length, scale);
        var got = bq.GetAsArray1D();
        for (int i = 0; i < x.Length; i++)
        {
            sbyte expected = QuantizationKernels.QuantizeValue(x[i], 1f / scale);
            Assert.True(expected == got[i], $"q({x[i]}) = {got[i]}, expected {expected}");
            double exact = Math.Clamp(Math.Floor(x[i] * (double)(1f / scale) + 0.5), -127, 127);
            Assert.True(Math.Abs(exact - got[i]) <= 1, $"q({x[i]}) = {got[i]} is not the rounding of {x[i] / scale}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Kernels.Quantization.Quantize(bx.View, bq.View, x.Length, 0f));
        Assert.Throws<ArgumentOutOfRangeException>(() => d.Kernels.Quantization.Quantize(bx.View, bq.View, x.Length, float.NaN));
    }

    public static TheoryData<int, int, int, bool, Int8HostKernel> HostLinearCases()
    {
        var data = new TheoryData<int, int, int, bool, Int8HostKernel>();
        foreach (var kernel in Enum.GetValues<Int8HostKernel>())
        {
            data.Add(1, 1, 1, true, kernel);
            data.Add(7, 33, 5, false, kernel);
            data.Add(13, 17, 130, true, kernel);  // K not a whole number of groups or pairs, N not of 16-column panels
            data.Add(13, 48, 130, true, kernel);  // three column panels: AVX-512 VNNI's second panel of a pair missing
            data.Add(129, 65, 33, true, kernel);
            data.Add(200, 300, 70, false, kernel); // split over several blocks and cores
            data.Add(5, 3, 0, true, kernel);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(HostLinearCases))]
    public void Int8_linear_on_the_host_equals_quantize_gemm_rescale_and_bias_bit_for_bit(int m, int n, int k, bool bias, Int8HostKernel kernel)
    {
        var d = Devices.Get("cpu");
        var q = d.Kernels.Quantization;
        if (!q.UseHostLinear) Assert.Skip("this CPU has neither VNNI nor AVX-512BW: int8 Linear layers run Quantize, Gemm and Dequantize (tested above)");
        if (!QuantizationKernels.HostKernelRuns(kernel)) Assert.Skip($"this CPU (or OS) cannot run the {kernel} kernel");
        var before = q.HostKernel;
        q.HostKernel = kernel;
        try { HostLinearCase(d, q, m, n, k, bias); }
        finally { q.HostKernel = before; }
    }

    [Theory]
    [InlineData("HostInt8Vnni512", "vpdpbusd")]
    [InlineData("HostBf16Avx512", "vdpbf16ps")]
    public void The_AVX512_machine_code_is_what_its_listing_assembles_to(string kernel, string mnemonic)
    {
        // Each kernel's .cs embeds the bytes tools/x86/assemble.sh prints for its .s; a listing edited without
        // regenerating them (or bytes edited by hand) fails here wherever binutils are installed.
        if (!OperatingSystem.IsLinux() || !new[] { "/usr/bin/as", "/usr/bin/objdump" }.All(File.Exists))
            Assert.Skip("binutils (as, objdump) are not installed");
        string listing = ReadmeExample.RepoFile($"kernels/IlgpuBert.Kernels/{kernel}.s");
        string root = Path.GetDirectoryName(ReadmeExample.RepoFile("IlgpuBert.sln"))!;
        var start = new System.Diagnostics.ProcessStartInfo("bash", [Path.Combine(root, "tools/x86/assemble.sh"), listing])
        {
            RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = System.Diagnostics.Process.Start(start)!;
        string bytes = process.StandardOutput.ReadToEnd(), errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, errors);
        Assert.Contains(mnemonic, bytes);
        string source = File.ReadAllText(ReadmeExample.RepoFile($"kernels/IlgpuBert.Kernels/{kernel}.cs")).Replace("\r\n", "\n");
        Assert.True(source.Contains("[\n" + bytes + "    ];"), $"{kernel}.cs does not hold what tools/x86/assemble.sh prints for the listing");
    }

    private static void HostLinearCase(TestDevice d, QuantizationKernels q, int m, int n, int k, bool bias)
    {
        var rng = new Random(m * 7919 + n * 31 + k);
        const float sx = 0.021f;
        // Inputs past the clamp (±127·s and far beyond), exact halves of a step, zeros.
        var x = Rand.Normal(rng, m * k, 1.5).ToArray();
        for (int i = 0; i < x.Length; i += 11) x[i] = (i % 3) switch { 0 => 1e30f, 1 => -4f, _ => 0.5f * sx };
        var w = RandomInt8(rng, n * k);
        var ws = Rand.Normal(rng, n).Select(v => MathF.Abs(v) * 0.01f + 1e-4f).ToArray();
        var b = Rand.Normal(rng, n);
        using var bx = d.Upload(x.Length == 0 ? [0f] : x);
        using var bw = d.Accelerator.Allocate1D(w.Length == 0 ? new sbyte[1] : w);
        using var bws = d.Upload(ws);
        using var bb = d.Upload(b);
        using var by = d.Poisoned(m * n);
        var packed = q.PackForHost(bw.View.SubView(0, w.Length), n, k);
        q.LinearOnHost(bx.View.SubView(0, x.Length), packed, bws.View, sx, bias ? bb.View : default, null, by.View, m);
        var got = d.Read(by, m * n);
        var linear = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                int acc = 0;
                for (int t = 0; t < k; t++) acc += QuantizationKernels.QuantizeValue(x[i * k + t], 1f / sx) * w[j * k + t];
                float expected = acc * (sx * ws[j]);
                if (bias) expected += b[j];
                linear[i * n + j] = expected;
                Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(got[i * n + j]),
                    $"y[{i}, {j}] = {got[i * n + j]:R}, expected {expected:R}");
            }
        // The activation in the same pass (GELU) or after it (tanh), against double on the exact linear values.
        foreach (var (act, f) in new (ActivationKind, Func<double, double>)[] { (ActivationKind.GeluErf, Reference.GeluErf), (ActivationKind.Tanh, Math.Tanh) })
        {
            using var ya = d.Poisoned(m * n);
            q.LinearOnHost(bx.View.SubView(0, x.Length), packed, bws.View, sx, bias ? bb.View : default, act, ya.View, m);
            Tol.AssertClose(linear.Select(v => f(v)).ToArray(), d.Read(ya, m * n), Tol.F32Elementwise, $"{act}(y)");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => q.LinearOnHost(bx.View, packed, bws.View, 0f, default, null, by.View, m));
        Assert.Throws<ArgumentException>(() => q.LinearOnHost(bx.View, packed, bws.View, sx, default, null, by.View, m + 1000));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Dequantize_rescales_by_the_input_and_channel_scales(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(5);
        const int m = 9, n = 13;
        var acc = Enumerable.Range(0, m * n).Select(_ => rng.Next(-2_000_000, 2_000_000)).ToArray();
        var ws = Rand.Normal(rng, n).Select(v => MathF.Abs(v) * 0.01f + 1e-4f).ToArray();
        const float sx = 0.037f;
        using var bacc = d.Accelerator.Allocate1D(acc);
        using var bws = d.Upload(ws);
        using var by = d.Poisoned(m * n);
        d.Kernels.Quantization.Dequantize(bacc.View, bws.View, by.View, m, n, sx);
        var expected = new double[m * n];
        for (int i = 0; i < m * n; i++) expected[i] = acc[i] * ((double)sx * ws[i % n]);
        Tol.AssertClose(expected, d.Read(by, m * n), Tol.F32Elementwise, "y");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void ScaleBlocks_and_BlockDot_match_the_double_reference(string device)
    {
        var d = Devices.Get(device);
        var rng = new Random(7);
        const int rows = 11, heads = 3, hd = 5, cols = heads * hd;
        var x = Rand.Normal(rng, rows * cols);
        var dy = Rand.Normal(rng, rows * cols);
        var xi = Rand.Normal(rng, heads);
        var d0 = Rand.Normal(rng, heads);
        using var bx = d.Upload(x);
        using var bdy = d.Upload(dy);
        using var bxi = d.Upload(xi);
        using var by = d.Poisoned(rows * cols);
        using var bd = d.Upload(d0);
        d.Kernels.Elementwise.ScaleBlocks(bx.View, bxi.View, by.View, rows, cols, hd);
        d.Kernels.Elementwise.BlockDot(bdy.View, bx.View, bd.View, rows, cols, hd, accumulate: true);
        var y = new double[rows * cols];
        var dxi = Rand.ToDouble(d0);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                y[r * cols + c] = (double)x[r * cols + c] * xi[c / hd];
                dxi[c / hd] += (double)dy[r * cols + c] * x[r * cols + c];
            }
        Tol.AssertClose(y, d.Read(by, rows * cols), Tol.F32Elementwise, "y");
        Tol.AssertClose(dxi, d.Read(bd, heads), Tol.F32Reduction, "dξ (accumulated)");
        Assert.Throws<ArgumentException>(() => d.Kernels.Elementwise.ScaleBlocks(bx.View, bxi.View, by.View, rows, cols, 4));
    }
}
