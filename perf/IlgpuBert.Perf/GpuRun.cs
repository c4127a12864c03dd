// `IlgpuBert.Perf gpu [--device D] [--out DIR] [--quick]`: every benchmark of the GPU issue that
// IlgpuBert can run by itself, in one invocation — GEMM on BERT-base shapes (tokens = 4096) and the
// batched attention shapes, fused vs materialised attention at S = 128 and 512, and a BERT-base
// training step — written to results.jsonl with a short table printed last. Each GEMM runs beside cuBLAS
// (CuBlas.cs) where CUDA and libcublas are there, FP32 and TF32, with the speed ratio and the largest
// difference of the results noted. --quick shrinks every size so the runner itself can be checked on a
// CPU (tools/gpu/check.sh --device cpu); a missing cuBLAS is noted, never faked.
using System.Text.Json;
using IlgpuBert.Bench;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Perf;

public static class GpuRun
{
    public static int Main(string[] args)
    {
        string? device = null, outDir = null;
        bool quick = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--device" when i + 1 < args.Length: device = args[++i]; break;
                case "--out" when i + 1 < args.Length: outDir = args[++i]; break;
                case "--quick": quick = true; break;
                default:
                    Console.Error.WriteLine($"error: unknown argument {args[i]} (gpu [--device D] [--out DIR] [--quick])");
                    return 2;
            }
        }
        using var dev = BertDevice.Open(device is null ? DeviceSpec.FromEnvironment() : DeviceSpec.Parse(device));
        int tokens = quick ? 256 : 4096, scale = quick ? 8 : 1;
        var results = new List<BenchResult>();
        void Add(BenchResult r)
        {
            results.Add(r);
            Console.WriteLine($"  {r.Op} {r.Shape}: {r.Ms:F3} ms{(r.Note is null ? "" : $"  ({r.Note})")}");
        }
        Console.WriteLine($"device {dev.Spec}: {dev.Name}");
        // Linear layers of BERT-base, weights stored [out, in] as in HF (op(B) = T).
        foreach (var (inDim, outDim) in new[] { (768, 2304), (768, 768), (768, 3072), (3072, 768) })
            foreach (var r in KernelBench.GemmBesideCuBlas(dev, tokens, outDim / scale, inDim / scale, Transpose.N, Transpose.T)) Add(r);
        // Attention score and context products: B·NH = 384 batches.
        foreach (int s in new[] { 128, 512 })
        {
            int batch = quick ? 8 : 384;
            foreach (var r in KernelBench.GemmBesideCuBlas(dev, s / (quick ? 4 : 1), s / (quick ? 4 : 1), 64, Transpose.N, Transpose.T, batch)) Add(r);
            foreach (var r in KernelBench.GemmBesideCuBlas(dev, s / (quick ? 4 : 1), 64, s / (quick ? 4 : 1), Transpose.N, Transpose.N, batch)) Add(r);
            foreach (var r in KernelBench.Attention(dev, quick ? 2 : 32, quick ? s / 4 : s, quick ? 2 : 12, 64)) Add(r);
        }
        Add(KernelBench.BertStep(dev, quick ? "tiny" : "base", quick ? 4 : 32, quick ? 32 : 128, quick ? 1000 : 30522));

        if (outDir is not null)
        {
            Directory.CreateDirectory(outDir);
            File.WriteAllLines(Path.Combine(outDir, "results.jsonl"), results.Select(r => JsonSerializer.Serialize(r)));
        }
        Console.WriteLine();
        Console.WriteLine($"{"op",-26} {"shape",-44} {"ms",10} {"GFLOP/s",9} {"tokens/s",9}  note");
        foreach (var r in results)
            Console.WriteLine($"{r.Op,-26} {r.Shape,-44} {r.Ms,10:F3} {(r.Gflops is { } g ? g.ToString("F1") : "-"),9} {(r.TokensPerSecond is { } t ? t.ToString("F0") : "-"),9}  {r.Note}");
        return 0;
    }
}
