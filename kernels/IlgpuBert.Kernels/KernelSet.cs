// Every kernel family, loaded once for one accelerator and kept (ILGPU reloads are slow, #192).
//
// Launch geometry is the one decision that differs per accelerator, and it is made here only:
// - GPUs get 256-thread groups and many groups; each thread does little.
// - ILGPU's CPU accelerator runs one OS thread per simulated GPU thread, so there each group is a
//   single "fat" thread that owns a whole row (row kernels) or a long grid-stride run (element-wise
//   kernels), and the grid is one group per core. Same kernel source, different shape.
// The CPU accelerator calls each kernel's .NET method directly, often just once per core per
// launch: under tiered compilation that single long call would run unoptimised tier-0 code (every
// ArrayView access a real call), ~10× slower. So every kernel entry point is marked
// AggressiveOptimization, which JITs it fully optimised at once and means nothing to GPU backends.
// Row kernels reduce through a fixed-order shared-memory tree, so a result depends only on the
// group size, never on scheduling.
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;

namespace IlgpuBert.Kernels;

public sealed class KernelSet : IDisposable
{
    private readonly Lazy<GemmKernels> gemm;
    private readonly Lazy<BiasKernels> bias;
    private readonly Lazy<ActivationKernels> activation;
    private readonly Lazy<LayerNormKernels> layerNorm;
    private readonly Lazy<SoftmaxKernels> softmax;
    private readonly Lazy<CrossEntropyKernels> crossEntropy;
    private readonly Lazy<EmbeddingKernels> embeddings;
    private readonly Lazy<DropoutKernels> dropout;
    private readonly Lazy<AdamWKernels> adamW;
    private readonly Lazy<AttentionKernels> attention;
    private readonly Lazy<ElementwiseKernels> elementwise;
    private readonly Lazy<QuantizationKernels> quantization;
    private MemoryBuffer1D<float, Stride1D.Dense>? floatScratch;
    private MemoryBuffer1D<int, Stride1D.Dense>? intScratch;

    /// <param name="accelerator">The accelerator every kernel is loaded for.</param>
    /// <param name="rowGroupSize">Threads per group of row kernels (power of two). Default: 1 on the
    /// CPU accelerator, 256 elsewhere. Tests pass a larger value on the CPU to exercise the GPU's
    /// shared-memory reduction path.</param>
    public KernelSet(Accelerator accelerator, int? rowGroupSize = null)
    {
        Accelerator = accelerator;
        IsCpu = accelerator.AcceleratorType == AcceleratorType.CPU;
        int group = rowGroupSize ?? (IsCpu ? 1 : 256);
        if (group < 1 || (group & (group - 1)) != 0 || group > accelerator.MaxNumThreadsPerGroup)
            throw new ArgumentOutOfRangeException(nameof(rowGroupSize),
                $"row group size {group} must be a power of two no larger than {accelerator.MaxNumThreadsPerGroup}");
        RowGroupSize = group;
        gemm = new(() => new GemmKernels(this));
        bias = new(() => new BiasKernels(this));
        activation = new(() => new ActivationKernels(this));
        layerNorm = new(() => new LayerNormKernels(this));
        softmax = new(() => new SoftmaxKernels(this));
        crossEntropy = new(() => new CrossEntropyKernels(this));
        embeddings = new(() => new EmbeddingKernels(this));
        dropout = new(() => new DropoutKernels(this));
        adamW = new(() => new AdamWKernels(this));
        attention = new(() => new AttentionKernels(this));
        elementwise = new(() => new ElementwiseKernels(this));
        quantization = new(() => new QuantizationKernels(this));
    }

    public Accelerator Accelerator { get; }
    public bool IsCpu { get; }
    public int RowGroupSize { get; }

    public GemmKernels Gemm => gemm.Value;
    public BiasKernels Bias => bias.Value;
    public ActivationKernels Activation => activation.Value;
    public LayerNormKernels LayerNorm => layerNorm.Value;
    public SoftmaxKernels Softmax => softmax.Value;
    public CrossEntropyKernels CrossEntropy => crossEntropy.Value;
    public EmbeddingKernels Embeddings => embeddings.Value;
    public DropoutKernels Dropout => dropout.Value;
    public AdamWKernels AdamW => adamW.Value;
    public AttentionKernels Attention => attention.Value;
    public ElementwiseKernels Elementwise => elementwise.Value;
    public QuantizationKernels Quantization => quantization.Value;

    /// <summary>Bytes the kernel set itself holds in scratch buffers (grow-only, reused).</summary>
    public long ScratchBytes => (floatScratch?.LengthInBytes ?? 0) + (intScratch?.LengthInBytes ?? 0);

    /// <summary>
    /// Grid-stride geometry for element-wise kernels over <paramref name="n"/> items: one fat
    /// thread per core on the CPU accelerator, 256-thread groups on GPUs.
    /// </summary>
    internal KernelConfig GridStride(long n)
    {
        if (IsCpu)
        {
            int threads = Math.Max(1, Accelerator.NumMultiprocessors);
            return new KernelConfig(threads, 1);
        }
        const int group = 256;
        long groups = Math.Clamp((n + group - 1) / group, 1, (long)Accelerator.NumMultiprocessors * 32);
        return new KernelConfig((int)groups, group);
    }

    /// <summary>One group per row, <see cref="RowGroupSize"/> threads and as many floats of shared memory.</summary>
    internal KernelConfig Rows(int rows) =>
        new(Math.Max(rows, 1), RowGroupSize, SharedMemoryConfig.RequestDynamic<float>(RowGroupSize));

    /// <summary>A grow-only float workspace; valid until the next call that asks for one.</summary>
    internal ArrayView<float> FloatScratch(long length)
    {
        if (floatScratch is null || floatScratch.Length < length)
        {
            Accelerator.Synchronize();
            floatScratch?.Dispose();
            floatScratch = Accelerator.Allocate1D<float>(Math.Max(length, 1024));
        }
        return floatScratch.View.SubView(0, length);
    }

    /// <summary>A grow-only int workspace, filled from the host; valid until the next call.</summary>
    internal ArrayView<int> IntScratch(ReadOnlySpan<int> values)
    {
        if (intScratch is null || intScratch.Length < values.Length)
        {
            Accelerator.Synchronize();
            intScratch?.Dispose();
            intScratch = Accelerator.Allocate1D<int>(Math.Max(values.Length, 1024));
        }
        var view = intScratch.View.SubView(0, values.Length);
        if (values.Length > 0)
            view.CopyFromCPU(Accelerator.DefaultStream, values);
        return view;
    }

    public void Dispose()
    {
        floatScratch?.Dispose();
        intScratch?.Dispose();
    }

    /// <summary>
    /// Every kernel entry point (all explicitly grouped), by family and name, with generic kernels
    /// instantiated for each variant. Code-generation checks compile each for OpenCL and PTX.
    /// </summary>
    public static IReadOnlyList<(string Name, MethodInfo Method)> EntryPoints()
    {
        const BindingFlags flags = BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public;
        var list = new List<(string, MethodInfo)>();
        Type[] families =
        [
            typeof(GemmKernels), typeof(BiasKernels), typeof(ActivationKernels), typeof(LayerNormKernels),
            typeof(SoftmaxKernels), typeof(CrossEntropyKernels), typeof(EmbeddingKernels), typeof(DropoutKernels),
            typeof(AdamWKernels), typeof(AttentionKernels), typeof(ElementwiseKernels), typeof(QuantizationKernels),
        ];
        Type[] activations = [typeof(GeluErf), typeof(GeluTanh), typeof(Relu), typeof(TanhActivation)];
        foreach (var family in families)
            foreach (var m in family.GetMethods(flags).Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal)))
            {
                string name = $"{family.Name.Replace("Kernels", "")}.{m.Name}";
                if (m.IsGenericMethodDefinition)
                    list.AddRange(activations.Select(a => ($"{name}<{a.Name}>", m.MakeGenericMethod(a))));
                else
                    list.Add((name, m));
            }
        return list;
    }

    /// <summary>
    /// A CPU accelerator shaped for fat threads: one multiprocessor per core, and groups of the
    /// smallest size ILGPU allows (a warp of 2). Kernels here launch single-thread groups, so every
    /// launch is in effect a parallel-for over the cores.
    /// </summary>
    public static CPUDevice FatCpuDevice() => new(2, 1, Math.Max(1, Environment.ProcessorCount));
}

/// <summary>
/// Fixed-order reductions across one group through dynamic shared memory. Each thread passes its
/// partial value; all threads get the result. Works for any power-of-two group size, 1 included.
/// </summary>
internal static class GroupReduce
{
    public static float Sum(ArrayView<float> shared, float value)
    {
        int t = Group.IdxX;
        shared[t] = value;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s)
                shared[t] += shared[t + s];
            Group.Barrier();
        }
        float result = shared[0];
        Group.Barrier();
        return result;
    }

    public static float Max(ArrayView<float> shared, float value)
    {
        int t = Group.IdxX;
        shared[t] = value;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s)
                shared[t] = MathF.Max(shared[t], shared[t + s]);
            Group.Barrier();
        }
        float result = shared[0];
        Group.Barrier();
        return result;
    }
}
