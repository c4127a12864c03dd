// Kernel timings for `ilgpu-bert bench` and perf/. Each benchmark checks nothing: the numeric
// tests do that. It fills inputs with random data, warms up (first launches compile kernels),
// then times repeated launches between accelerator synchronisations and reports the median.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Bench;

/// <summary>One measured kernel. Compute-bound ops report GFLOP/s, memory-bound ones GB/s.</summary>
public sealed record BenchResult(string Op, string Device, string Shape, double Ms, double? Gflops, double? Gbps)
{
    // A tiny op can time below the clock's resolution (0 ms): its rate is then no number, not infinity
    // (which the JSON writer refuses; `bench adamw --params 10 --json` failed on that).
    public double? Gflops { get; init; } = Finite(Gflops);
    public double? Gbps { get; init; } = Finite(Gbps);

    /// <summary>Throughput of whole-model benchmarks.</summary>
    public double? TokensPerSecond { get => tokensPerSecond; init => tokensPerSecond = Finite(value); }
    private readonly double? tokensPerSecond;

    /// <summary>What else the row says: a comparison made in the same run, or why a peer is missing.</summary>
    public string? Note { get; init; }

    private static double? Finite(double? v) => v is { } x && double.IsFinite(x) ? x : null;
}

public static class KernelBench
{
    public static readonly string[] Ops = ["gemm", "gelu", "layernorm", "softmax-xent", "adamw", "attention", "bert-step"];

    /// <summary>Runs <paramref name="action"/> until about <paramref name="budgetMs"/> is spent (3..200 times) and returns the median ms.</summary>
    public static double Time(Accelerator accelerator, Action action, double budgetMs = 400)
    {
        action();
        accelerator.Synchronize();
        var sw = Stopwatch.StartNew();
        action();
        accelerator.Synchronize();
        double first = sw.Elapsed.TotalMilliseconds;
        int reps = (int)Math.Clamp(budgetMs / Math.Max(first, 1e-3), 3, 200);
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            sw.Restart();
            action();
            accelerator.Synchronize();
            times[i] = sw.Elapsed.TotalMilliseconds;
        }
        Array.Sort(times);
        return times[reps / 2];
    }

    private static PooledBuffer Random(BertDevice device, long n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var host = new float[n];
        for (long i = 0; i < n; i++) host[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        var b = device.Pool.Rent(n);
        b.View.CopyFromCPU(device.Accelerator.DefaultStream, host);
        return b;
    }

    public static BenchResult Gemm(BertDevice device, int m, int n, int k, Transpose ta = Transpose.N, Transpose tb = Transpose.N, int batch = 1)
    {
        using var a = Random(device, (long)m * k * batch, 1);
        using var b = Random(device, (long)k * n * batch, 2);
        using var c = device.Pool.Rent((long)m * n * batch);
        int lda = ta == Transpose.N ? k : m, ldb = tb == Transpose.N ? n : k;
        double ms = Time(device.Accelerator, () => device.Kernels.Gemm.Forward(ta, tb, m, n, k, 1f, a.View, lda, b.View, ldb, 0f, c.View, n,
            default, batch, (long)m * k, (long)k * n, (long)m * n));
        string shape = $"m={m} n={n} k={k} op={ta}{tb}" + (batch > 1 ? $" batch={batch}" : "");
        return new("gemm", device.Spec, shape, ms, 2.0 * m * n * k * batch / (ms * 1e6), null);
    }

    /// <summary>
    /// Our GEMM beside cuBLAS on the same operands, in the same run: FP32 products on both sides, and
    /// TF32 tensor cores on both where the device has them (sm_80+). Each cuBLAS row notes its speed
    /// ratio to ours and the largest difference of the two results, relative to max|C|. Without CUDA or
    /// libcublas only our FP32 row comes back, noting why cuBLAS is missing.
    /// </summary>
    public static IEnumerable<BenchResult> GemmBesideCuBlas(BertDevice device, int m, int n, int k, Transpose ta, Transpose tb, int batch = 1)
    {
        var gemm = device.Kernels.Gemm;
        bool tensorCores = gemm.UseTensorCores;
        using var cublas = CuBlas.TryOpen(device.Accelerator, out string why);
        using var a = Random(device, (long)m * k * batch, 1);
        using var b = Random(device, (long)k * n * batch, 2);
        using var ours = device.Pool.Rent((long)m * n * batch);
        using var theirs = device.Pool.Rent((long)m * n * batch);
        int lda = ta == Transpose.N ? k : m, ldb = tb == Transpose.N ? n : k;
        long sa = (long)m * k, sb = (long)k * n, sc = (long)m * n;
        string shape = $"m={m} n={n} k={k} op={ta}{tb}" + (batch > 1 ? $" batch={batch}" : "");
        double flops = 2.0 * m * n * k * batch;
        var results = new List<BenchResult>();
        try
        {
            foreach (bool tf32 in tensorCores ? new[] { false, true } : [false])
            {
                gemm.UseTensorCores = tf32;
                string precision = tf32 ? "tf32" : "fp32";
                double ms = Time(device.Accelerator, () => gemm.Forward(ta, tb, m, n, k, 1f, a.View, lda, b.View, ldb, 0f, ours.View, n, default, batch, sa, sb, sc));
                results.Add(new($"gemm {precision}", device.Spec, shape, ms, flops / (ms * 1e6), null) { Note = cublas is null ? $"cuBLAS not measured: {why}" : null });
                if (cublas is null) continue;
                double theirMs = Time(device.Accelerator, () => cublas.Gemm(ta, tb, m, n, k, 1f, a.View, lda, b.View, ldb, 0f, theirs.View, n, batch, sa, sb, sc, tf32));
                var x = new float[ours.View.Length];
                var y = new float[theirs.View.Length];
                ours.View.CopyToCPU(device.Accelerator.DefaultStream, x);
                theirs.View.CopyToCPU(device.Accelerator.DefaultStream, y);
                double maxAbs = y.Max(v => Math.Abs((double)v)), maxDiff = x.Zip(y, (p, q) => Math.Abs((double)p - q)).Max();
                results.Add(new($"gemm {precision} (cuBLAS)", device.Spec, shape, theirMs, flops / (theirMs * 1e6), null)
                    { Note = $"ours/cuBLAS speed {theirMs / ms:F2}x; max |ours - cuBLAS| / max|C| = {maxDiff / Math.Max(maxAbs, 1e-30):E1}" });
            }
        }
        finally
        {
            gemm.UseTensorCores = tensorCores;
        }
        return results;
    }

    /// <summary>
    /// The bfloat16 host GEMM (AVX512_BF16 where the CPU has it) on C [M, N] = A [M, K]·Bᵀ, B [N, K] as a Linear
    /// weight: with B packed once beforehand (inference), and with B packed inside each call (a training step, whose
    /// weights change), beside the FP32 GEMM on the same operands (op NT) in the same run.
    /// </summary>
    public static IEnumerable<BenchResult> GemmBf16(BertDevice device, int m, int n, int k)
    {
        var rng = new Random(1);
        var a = Enumerable.Range(0, m * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var b = Enumerable.Range(0, n * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var c = new float[(long)m * n];
        var packed = HostBf16Gemm.Pack(b, n, k);
        string kernel = HostBf16Gemm.UsesBf16Instructions ? "VDPBF16PS" : "FP32 fallback";
        string shape = $"m={m} n={n} k={k} op=NT";
        double flops = 2.0 * m * n * k;
        double ms = Time(device.Accelerator, () => HostBf16Gemm.Run(a, m, packed, c));
        yield return new($"gemm-bf16 ({kernel})", "host", shape, ms, flops / (ms * 1e6), null);
        ms = Time(device.Accelerator, () => HostBf16Gemm.Run(a, m, b, n, k, c));
        yield return new("gemm-bf16, B packed per call", "host", shape, ms, flops / (ms * 1e6), null);
        yield return Gemm(device, m, n, k, Transpose.N, Transpose.T);
    }

    public static IEnumerable<BenchResult> Gelu(BertDevice device, int rows, int cols, ActivationKind kind = ActivationKind.GeluErf)
    {
        long n = (long)rows * cols;
        using var x = Random(device, n, 3, 3f);
        using var bias = Random(device, cols, 4);
        using var y = device.Pool.Rent(n);
        using var dx = device.Pool.Rent(n);
        var act = device.Kernels.Activation;
        string shape = $"rows={rows} cols={cols} act={kind}";
        double fwd = Time(device.Accelerator, () => act.Forward(kind, x.View, bias.View, y.View, rows, cols));
        double bwd = Time(device.Accelerator, () => act.Backward(kind, x.View, bias.View, y.View, dx.View, default, rows, cols, false));
        yield return new("gelu", device.Spec, shape, fwd, null, 8.0 * n / (fwd * 1e6));
        yield return new("gelu-backward", device.Spec, shape, bwd, null, 12.0 * n / (bwd * 1e6));
    }

    public static IEnumerable<BenchResult> LayerNorm(BertDevice device, int rows, int cols)
    {
        long n = (long)rows * cols;
        using var x = Random(device, n, 5);
        using var r = Random(device, n, 6);
        using var gamma = Random(device, cols, 7);
        using var beta = Random(device, cols, 8);
        using var y = device.Pool.Rent(n);
        using var mean = device.Pool.Rent(rows);
        using var rstd = device.Pool.Rent(rows);
        using var dx = device.Pool.Rent(n);
        using var dGamma = device.Pool.Rent(cols);
        using var dBeta = device.Pool.Rent(cols);
        var ln = device.Kernels.LayerNorm;
        string shape = $"rows={rows} cols={cols} residual=yes";
        double fwd = Time(device.Accelerator, () => ln.Forward(x.View, r.View, gamma.View, beta.View, y.View, mean.View, rstd.View, rows, cols, 1e-12f));
        double bwd = Time(device.Accelerator, () => ln.Backward(x.View, r.View, gamma.View, mean.View, rstd.View, y.View, dx.View,
            dGamma.View, dBeta.View, rows, cols, false));
        yield return new("layernorm", device.Spec, shape, fwd, null, 12.0 * n / (fwd * 1e6));
        yield return new("layernorm-backward", device.Spec, shape, bwd, null, 16.0 * n / (bwd * 1e6));
    }

    public static IEnumerable<BenchResult> SoftmaxCrossEntropy(BertDevice device, int rows, int vocab)
    {
        long n = (long)rows * vocab;
        using var logits = Random(device, n, 9, 5f);
        using var dlogits = device.Pool.Rent(n);
        using var lse = device.Pool.Rent(rows);
        using var loss = device.Pool.Rent(2);
        var rng = new Random(10);
        var labels = Enumerable.Range(0, rows).Select(_ => rng.Next(vocab)).ToArray();
        using var labelBuffer = device.Accelerator.Allocate1D(labels);
        var ce = device.Kernels.CrossEntropy;
        string shape = $"rows={rows} vocab={vocab}";
        double fwd = Time(device.Accelerator, () => ce.Forward(logits.View, labelBuffer.View, lse.View, loss.View, rows, vocab));
        double bwd = Time(device.Accelerator, () => ce.Backward(logits.View, labelBuffer.View, lse.View, loss.View, dlogits.View, rows, vocab));
        yield return new("softmax-xent", device.Spec, shape, fwd, null, 4.0 * n / (fwd * 1e6));
        yield return new("softmax-xent-backward", device.Spec, shape, bwd, null, 8.0 * n / (bwd * 1e6));
    }

    public static IEnumerable<BenchResult> AdamW(BertDevice device, long n)
    {
        using var p = Random(device, n, 11);
        using var g = Random(device, n, 12);
        using var m = Random(device, n, 13, 0.1f);
        using var v = Random(device, n, 14, 0.0f);
        using var norm = device.Pool.Rent(1);
        var views = new List<ArrayView<float>> { g.View };
        var adam = device.Kernels.AdamW;
        int step = 1;
        double normMs = Time(device.Accelerator, () => adam.GlobalNorm(views, norm.View));
        double ms = Time(device.Accelerator, () => adam.Update(p.View, g.View, m.View, v.View, norm.View, n, AdamWStep.Bert(1e-4f, step++)));
        yield return new("adamw", device.Spec, $"n={n}", ms, null, 28.0 * n / (ms * 1e6));
        yield return new("grad-norm", device.Spec, $"n={n}", normMs, null, 4.0 * n / (normMs * 1e6));
    }

    /// <summary>
    /// Fused attention forward and backward, and the materialised path (GEMM, mask, softmax,
    /// GEMM) in the same run. Effective FLOP/s count 4·B·NH·S²·HD for a forward (two S×S×HD
    /// products) and 10·B·NH·S²·HD for the backward (five).
    /// </summary>
    public static IEnumerable<BenchResult> Attention(BertDevice device, int batch, int seqLen, int heads, int headDim)
    {
        var shape = AttentionShape.Create(batch, seqLen, heads, headDim);
        using var qkv = Random(device, shape.QkvLength, 15);
        using var context = device.Pool.Rent(shape.ContextLength);
        using var dContext = Random(device, shape.ContextLength, 16);
        using var dQkv = device.Pool.Rent(shape.QkvLength);
        using var lse = device.Pool.Rent(shape.RowCount);
        var attention = device.Kernels.Attention;
        string shapeText = $"b={batch} s={seqLen} nh={heads} hd={headDim}";
        double flops = 4.0 * batch * heads * seqLen * (double)seqLen * headDim;
        double fused = Time(device.Accelerator, () => attention.Forward(qkv.View, default, context.View, lse.View, shape));
        double backward = Time(device.Accelerator, () => attention.Backward(qkv.View, default, context.View, lse.View, dContext.View, dQkv.View, shape));
        double naive;
        using (var probs = device.Pool.Rent(shape.RowCount * seqLen))
            naive = Time(device.Accelerator, () => attention.NaiveForward(qkv.View, default, context.View, probs.View, shape));
        yield return new("attention-fused", device.Spec, shapeText, fused, flops / (fused * 1e6), null);
        yield return new("attention-naive", device.Spec, shapeText, naive, flops / (naive * 1e6), null);
        yield return new("attention-fused-backward", device.Spec, shapeText, backward, 2.5 * flops / (backward * 1e6), null);
    }

    /// <summary>
    /// One BertForPreTraining forward and backward (MLM at 15% of positions, NSP, dropout on) on
    /// random tokens, reported in tokens per second: what pretraining throughput is built from.
    /// </summary>
    public static BenchResult BertStep(BertDevice device, string size, int batch, int seqLen, int vocab = 8192)
    {
        var config = Model.BertConfig.ForSize(size, vocab);
        using var model = new Model.BertForPreTraining(device, config);
        model.Parameters.Initialize(1);
        var rng = new Random(2);
        int n = batch * seqLen;
        var ids = Enumerable.Range(0, n).Select(_ => rng.Next(5, vocab)).ToArray();
        var labels = Enumerable.Range(0, n).Select(i => rng.NextDouble() < 0.15 ? ids[i] : -100).ToArray();
        var inputs = new Model.BertInputs(batch, seqLen, ids, new int[n], Enumerable.Repeat(1, n).ToArray(), labels,
            Enumerable.Range(0, batch).Select(i => i % 2).ToArray());
        using var optimizer = new Training.AdamWOptimizer(device, model.Parameters.All, new Training.AdamWSettings());
        uint step = 0;
        double ms = Time(device.Accelerator, () =>
        {
            using (var tape = new Autograd.Tape())
            {
                model.Forward(tape, inputs, Model.Dropouts.Training(config, 1, ++step), maskedOnly: true);
                tape.Backward();
            }
            optimizer.Update(1e-5f); // what a training step does after backward: clip to the global norm, AdamW
        }, budgetMs: 2000);
        return new("bert-step", device.Spec, $"size={size} b={batch} s={seqLen} vocab={vocab} +adamw", ms, null, null) { TokensPerSecond = n / (ms / 1000) };
    }

    /// <summary>
    /// Inference as a user runs it: each model folder's encoder forward (dropout off, no tape bookkeeping,
    /// last hidden state copied to the host) on the same random tokens, after a warm-up run. An int8
    /// folder (`quantize`) runs its Linear layers in int8, as `predict` does. Several folders are timed
    /// in turn, <paramref name="rounds"/> times over (so a slow spell of the machine hits them alike),
    /// and each reports the median of its rounds.
    /// </summary>
    public static List<BenchResult> Forward(BertDevice device, IReadOnlyList<string> dirs, int batch, int seqLen, int rounds = 1)
    {
        var models = new List<(string Name, Action Encode, IDisposable Owner)>();
        try
        {
            foreach (var dir in dirs)
            {
                var config = Model.BertConfig.Read(Path.Combine(dir, Model.BertFolder.ConfigFile));
                var rng = new Random(3);
                int n = batch * seqLen;
                var inputs = new Model.BertInputs(batch, seqLen, Enumerable.Range(0, n).Select(_ => rng.Next(5, config.VocabSize)).ToArray(), new int[n],
                    Enumerable.Repeat(1, n).ToArray());
                string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
                if (Compression.Int8Model.IsQuantized(config))
                {
                    var loaded = Compression.LoadedModel.Load(device, dir);
                    var q = device.Kernels.Quantization; // which int8 instructions run: a reader of the table needs to know
                    string kernel = q.UseHostLinear ? q.HostKernel.ToString() : "kernels";
                    models.Add(($"{name} int8 ({kernel})", () =>
                    {
                        using var tape = new Autograd.Tape(recording: false);
                        loaded.Model.Bert.Forward(tape, inputs, Model.Dropouts.Off, hooks: loaded.Hooks).LastHiddenState.Value.ToHost();
                    }, loaded));
                }
                else
                {
                    var pipeline = Pipelines.BertPipeline.Load(device, dir);
                    models.Add((name, () => pipeline.Encode(inputs), pipeline));
                }
            }
            var times = models.Select(_ => new List<double>()).ToList();
            for (int r = 0; r < rounds; r++)
                for (int i = 0; i < models.Count; i++)
                    times[i].Add(Time(device.Accelerator, models[i].Encode, budgetMs: 2000));
            return models.Select((model, i) =>
            {
                double ms = times[i].Order().ElementAt(rounds / 2);
                return new BenchResult("forward", device.Spec, $"{model.Name} b={batch} s={seqLen}", ms, null, null) { TokensPerSecond = batch * seqLen / (ms / 1000) };
            }).ToList();
        }
        finally
        {
            foreach (var model in models) model.Owner.Dispose();
        }
    }
}
