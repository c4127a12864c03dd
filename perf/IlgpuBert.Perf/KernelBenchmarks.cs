// One BenchmarkDotNet class per kernel family. Each opens the device once, fills its inputs with
// random data, and times one launch (forward or backward) followed by a synchronisation, so the
// figure is the kernel's wall time on the device. Sizes are BERT-base shapes (tokens = 4096 = 32×128)
// or smaller where the CPU accelerator would take too long.
using BenchmarkDotNet.Attributes;
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Perf;

[MemoryDiagnoser]
public abstract class KernelBenchmark
{
    protected BertDevice Device = null!;
    private readonly List<PooledBuffer> buffers = [];

    protected KernelSet K => Device.Kernels;

    [GlobalSetup]
    public void Setup()
    {
        Device = BertDevice.OpenDefault();
        Prepare();
    }

    protected abstract void Prepare();

    protected ArrayView<float> Random(long n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var host = new float[n];
        for (long i = 0; i < n; i++) host[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        var b = Device.Pool.Rent(n);
        b.View.CopyFromCPU(Device.Accelerator.DefaultStream, host);
        buffers.Add(b);
        return b.View;
    }

    protected void Sync() => Device.Accelerator.Synchronize();

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var b in buffers) b.Dispose();
        Device.Dispose();
    }
}

public class GemmBenchmark : KernelBenchmark
{
    private ArrayView<float> a, b, c;

    [Params(512, 1024)] public int Size;

    protected override void Prepare()
    {
        a = Random((long)Size * Size, 1);
        b = Random((long)Size * Size, 2);
        c = Random((long)Size * Size, 3);
    }

    [Benchmark] public void NN() { K.Gemm.Forward(Transpose.N, Transpose.N, Size, Size, Size, 1f, a, Size, b, Size, 0f, c, Size); Sync(); }
    [Benchmark] public void NT() { K.Gemm.Forward(Transpose.N, Transpose.T, Size, Size, Size, 1f, a, Size, b, Size, 0f, c, Size); Sync(); }
    [Benchmark] public void TN() { K.Gemm.Forward(Transpose.T, Transpose.N, Size, Size, Size, 1f, a, Size, b, Size, 0f, c, Size); Sync(); }
}

public class ActivationBenchmark : KernelBenchmark
{
    private const int Rows = 1024, Cols = 3072;
    private ArrayView<float> x, bias, y, dx;

    [Params(ActivationKind.GeluErf, ActivationKind.GeluTanh)] public ActivationKind Kind;

    protected override void Prepare()
    {
        x = Random((long)Rows * Cols, 1, 3f);
        bias = Random(Cols, 2);
        y = Random((long)Rows * Cols, 3);
        dx = Random((long)Rows * Cols, 4);
    }

    [Benchmark] public void Forward() { K.Activation.Forward(Kind, x, bias, y, Rows, Cols); Sync(); }
    [Benchmark] public void Backward() { K.Activation.Backward(Kind, x, bias, y, dx, default, Rows, Cols, false); Sync(); }
}

public class LayerNormBenchmark : KernelBenchmark
{
    private const int Rows = 4096, Cols = 768;
    private ArrayView<float> x, r, gamma, beta, y, mean, rstd, dx, dGamma, dBeta;

    protected override void Prepare()
    {
        x = Random((long)Rows * Cols, 1); r = Random((long)Rows * Cols, 2);
        gamma = Random(Cols, 3); beta = Random(Cols, 4);
        y = Random((long)Rows * Cols, 5); mean = Random(Rows, 6); rstd = Random(Rows, 7);
        dx = Random((long)Rows * Cols, 8); dGamma = Random(Cols, 9); dBeta = Random(Cols, 10);
        Forward();
    }

    [Benchmark] public void Forward() { K.LayerNorm.Forward(x, r, gamma, beta, y, mean, rstd, Rows, Cols, 1e-12f); Sync(); }
    [Benchmark] public void Backward() { K.LayerNorm.Backward(x, r, gamma, mean, rstd, y, dx, dGamma, dBeta, Rows, Cols, false); Sync(); }
}

public class SoftmaxCrossEntropyBenchmark : KernelBenchmark
{
    private const int Rows = 512, Vocab = 30522;
    private ArrayView<float> logits, dlogits, lse, loss, probs;
    private MemoryBuffer1D<int, Stride1D.Dense> labels = null!;

    protected override void Prepare()
    {
        logits = Random((long)Rows * Vocab, 1, 5f);
        dlogits = Random((long)Rows * Vocab, 2);
        probs = Random((long)Rows * Vocab, 3);
        lse = Random(Rows, 4);
        loss = Random(2, 5);
        var rng = new Random(6);
        labels = Device.Accelerator.Allocate1D(Enumerable.Range(0, Rows).Select(_ => rng.Next(Vocab)).ToArray());
        CrossEntropyForward();
    }

    [Benchmark] public void CrossEntropyForward() { K.CrossEntropy.Forward(logits, labels.View, lse, loss, Rows, Vocab); Sync(); }
    [Benchmark] public void CrossEntropyBackward() { K.CrossEntropy.Backward(logits, labels.View, lse, loss, dlogits, Rows, Vocab); Sync(); }
    [Benchmark] public void Softmax() { K.Softmax.Forward(logits, probs, Rows, Vocab); Sync(); }
}

public class EmbeddingDropoutBenchmark : KernelBenchmark
{
    private const int Batch = 32, Seq = 128, Hidden = 768, Vocab = 30522;
    private ArrayView<float> word, pos, type, output, dOut, dWord;
    private MemoryBuffer1D<int, Stride1D.Dense> ids = null!, positions = null!, types = null!;
    private int[] hostIds = [], hostPositions = [], hostTypes = [];
    private EmbeddingShape shape;

    protected override void Prepare()
    {
        shape = new EmbeddingShape { Tokens = Batch * Seq, SeqLen = Seq, Hidden = Hidden, VocabSize = Vocab, MaxPositions = 512, TypeVocabSize = 2 };
        var rng = new Random(1);
        hostIds = Enumerable.Range(0, shape.Tokens).Select(_ => rng.Next(Vocab)).ToArray();
        hostTypes = Enumerable.Range(0, shape.Tokens).Select(t => t % Seq < Seq / 2 ? 0 : 1).ToArray();
        hostPositions = Enumerable.Range(0, shape.Tokens).Select(t => t % Seq).ToArray();
        ids = Device.Accelerator.Allocate1D(hostIds);
        positions = Device.Accelerator.Allocate1D(hostPositions);
        types = Device.Accelerator.Allocate1D(hostTypes);
        word = Random((long)Vocab * Hidden, 2); pos = Random(512L * Hidden, 3); type = Random(2L * Hidden, 4);
        output = Random((long)shape.Tokens * Hidden, 5); dOut = Random((long)shape.Tokens * Hidden, 6);
        dWord = Random((long)Vocab * Hidden, 7);
    }

    [Benchmark] public void EmbeddingsForward() { K.Embeddings.Forward(ids.View, positions.View, types.View, word, pos, type, output, shape); Sync(); }
    [Benchmark] public void EmbeddingsBackwardWord() { K.Embeddings.Backward(dOut, hostIds, hostPositions, hostTypes, dWord, default, default, shape); Sync(); }
    [Benchmark] public void Dropout() { K.Dropout.Forward(dOut, output, (long)shape.Tokens * Hidden, 0.1f, new DropoutKey(1, 1, 1)); Sync(); }
}

public class AdamWBenchmark : KernelBenchmark
{
    private const long N = 4_000_000;
    private ArrayView<float> p, g, m, v, norm;
    private int step;

    protected override void Prepare()
    {
        p = Random(N, 1); g = Random(N, 2); m = Random(N, 3, 0.1f); v = Random(N, 4, 0f); norm = Random(1, 5);
    }

    [Benchmark] public void GlobalNorm() { K.AdamW.GlobalNorm([g], norm); Sync(); }
    [Benchmark] public void Update() { K.AdamW.Update(p, g, m, v, norm, N, AdamWStep.Bert(1e-4f, ++step)); Sync(); }
}

public class AttentionBenchmark : KernelBenchmark
{
    private ArrayView<float> qkv, context, lse, dContext, dQkv, probs;
    private AttentionShape shape;

    [Params(128, 512)] public int SeqLen;

    protected override void Prepare()
    {
        // BERT-base heads; the batch keeps B·S = 1024 tokens so both lengths fit the CPU's time.
        shape = AttentionShape.Create(1024 / SeqLen, SeqLen, 12, 64);
        qkv = Random(shape.QkvLength, 1);
        context = Random(shape.ContextLength, 2);
        dContext = Random(shape.ContextLength, 3);
        dQkv = Random(shape.QkvLength, 4);
        lse = Random(shape.RowCount, 5);
        probs = Random(shape.RowCount * SeqLen, 6);
        Fused();
    }

    [Benchmark(Baseline = true)] public void Naive() { K.Attention.NaiveForward(qkv, default, context, probs, shape); Sync(); }
    [Benchmark] public void Fused() { K.Attention.Forward(qkv, default, context, lse, shape); Sync(); }
    [Benchmark] public void FusedBackward() { K.Attention.Backward(qkv, default, context, lse, dContext, dQkv, shape); Sync(); }
}
