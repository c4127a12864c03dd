// `IlgpuBert.Perf crosscheck [--device D] [--quick]`: the GPU kernels at BERT-base shapes on one
// device against the CPU accelerator's host path (itself tested against double references), with
// the time of each. Run it inside the PoCL root to check OpenCL at full size:
//   tools/opencl/pocl-root.sh "dotnet perf/IlgpuBert.Perf/bin/Release/net10.0/IlgpuBert.Perf.dll crosscheck --device opencl"
// GEMM agreement is reported as max |Δ| / Σ_k |a_ik·b_kj| (a float product's error is a few units of
// roundoff times that sum: 6e-8 per unit); attention as max |Δ| / max |context|.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Perf;

public static class CrossCheck
{
    public static int Main(string[] args)
    {
        string device = "auto";
        bool quick = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--device" when i + 1 < args.Length: device = args[++i]; break;
                case "--quick": quick = true; break;
                default:
                    Console.Error.WriteLine($"error: unknown argument {args[i]} (crosscheck [--device D] [--quick])");
                    return 2;
            }
        }
        using var dev = BertDevice.Open(DeviceSpec.Parse(device));
        using var cpu = BertDevice.Open(DeviceSpec.Parse("cpu"));
        Console.WriteLine($"device {dev.Spec}: {dev.Name}; reference: {cpu.Spec} host path");
        int tokens = quick ? 256 : 4096, div = quick ? 4 : 1;
        var rows = new List<string>();
        // BERT-base Linear layers (weights [out, in], op(B) = T): QKV, attention output, FFN in and out.
        foreach (var (inDim, outDim) in new[] { (768, 2304), (768, 768), (768, 3072), (3072, 768) })
            rows.Add(Gemm(dev, cpu, tokens, outDim / div, inDim / div));
        foreach (int s in new[] { 128, 512 })
            rows.Add(Attention(dev, cpu, quick ? 2 : 8, s / div, 12, 64));
        Console.WriteLine();
        Console.WriteLine($"| op | shape | agreement | {dev.Spec} ms | cpu ms |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        foreach (var r in rows) Console.WriteLine(r);
        return 0;
    }

    private static float[] Random(long n, int seed)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        return a;
    }

    private static (float[] Result, double Ms) Run(BertDevice d, float[][] inputs, long outLength, Action<BertDevice, ArrayView<float>[], ArrayView<float>> op)
    {
        var buffers = inputs.Select(x => d.Accelerator.Allocate1D(x)).ToArray();
        using var output = d.Accelerator.Allocate1D<float>(outLength);
        try
        {
            var views = buffers.Select(b => (ArrayView<float>)b.View).ToArray();
            op(d, views, output.View); // compiles the kernels
            d.Accelerator.Synchronize();
            var times = new List<double>();
            for (int rep = 0; rep < 3; rep++)
            {
                var sw = Stopwatch.StartNew();
                op(d, views, output.View);
                d.Accelerator.Synchronize();
                times.Add(sw.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            return (output.GetAsArray1D(), times[1]);
        }
        finally
        {
            foreach (var b in buffers) b.Dispose();
        }
    }

    private static string Gemm(BertDevice dev, BertDevice cpu, int m, int n, int k)
    {
        var a = Random((long)m * k, 1);
        var b = Random((long)n * k, 2);
        void Op(BertDevice d, ArrayView<float>[] x, ArrayView<float> c) =>
            d.Kernels.Gemm.Forward(Transpose.N, Transpose.T, m, n, k, 1f, x[0], k, x[1], k, 0f, c, n);
        var (got, ms) = Run(dev, [a, b], (long)m * n, Op);
        var (want, cpuMs) = Run(cpu, [a, b], (long)m * n, Op);
        // Σ_k |a_ik b_jk| for the normalisation, on a sample of rows (exact per element).
        double worst = 0;
        for (int i = 0; i < m; i += Math.Max(1, m / 64))
            for (int j = 0; j < n; j++)
            {
                double scale = 0;
                for (int kk = 0; kk < k; kk++) scale += Math.Abs((double)a[(long)i * k + kk] * b[(long)j * k + kk]);
                worst = Math.Max(worst, Math.Abs(got[(long)i * n + j] - want[(long)i * n + j]) / scale);
            }
        Console.WriteLine($"  GEMM {m}x{n}x{k} NT: {worst:E2} of Σ|a·b|, {ms:F1} ms vs cpu {cpuMs:F1} ms");
        return $"| GEMM NT | M={m} N={n} K={k} | {worst:E1} | {ms:F1} | {cpuMs:F1} |";
    }

    private static string Attention(BertDevice dev, BertDevice cpu, int batch, int s, int heads, int hd)
    {
        var shape = AttentionShape.Create(batch, s, heads, hd);
        var qkv = Random(shape.QkvLength, 3);
        var mask = Enumerable.Range(0, batch * s).Select(e => e % s < s - (e / s) * 7 % s ? 1 : 0).ToArray(); // padded rows
        float[] Op(BertDevice d, out double ms)
        {
            using var q = d.Accelerator.Allocate1D(qkv);
            using var m = d.Accelerator.Allocate1D(mask);
            using var ctx = d.Accelerator.Allocate1D<float>(shape.ContextLength);
            using var lse = d.Accelerator.Allocate1D<float>(shape.RowCount);
            d.Kernels.Attention.Forward(q.View, m.View, ctx.View, lse.View, shape);
            d.Accelerator.Synchronize();
            var sw = Stopwatch.StartNew();
            d.Kernels.Attention.Forward(q.View, m.View, ctx.View, lse.View, shape);
            d.Accelerator.Synchronize();
            ms = sw.Elapsed.TotalMilliseconds;
            return ctx.GetAsArray1D();
        }
        var got = Op(dev, out double devMs);
        var want = Op(cpu, out double cpuMs);
        double max = want.Max(v => Math.Abs((double)v)), worst = got.Select((v, i) => Math.Abs((double)v - want[i])).Max() / max;
        Console.WriteLine($"  attention B={batch} S={s} NH={heads} HD={hd}: {worst:E2} of max|context|, {devMs:F1} ms vs cpu {cpuMs:F1} ms");
        return $"| fused attention forward | B={batch} S={s} NH={heads} HD={hd}, padded | {worst:E1} | {devMs:F1} | {cpuMs:F1} |";
    }
}
