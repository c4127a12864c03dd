// Every kernel family, loaded once for one accelerator and kept (ILGPU reloads are slow, #192).
// Each kernel is compiled on its first launch, not with its family: on the CPU accelerator most ops
// run as host SIMD code and never launch their ILGPU kernel, and compiling them all cost an
// inference process 0.3 s before its first token.
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
// Row kernels reduce in a fixed order (GroupReduce.cs: a shared-memory tree, or warp shuffles on
// CUDA), so a result depends only on the group and warp size, never on scheduling.
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;

namespace IlgpuBert.Kernels;

public sealed partial class KernelSet : IDisposable
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
    /// reduction paths.</param>
    /// <param name="rowReduction">How row kernels reduce across a group. Default: warp shuffles on
    /// CUDA, the shared-memory tree elsewhere (OpenCL sub-groups are optional and PoCL has none).</param>
    public KernelSet(Accelerator accelerator, int? rowGroupSize = null, RowReduction? rowReduction = null)
    {
        Accelerator = accelerator;
        IsCpu = accelerator.AcceleratorType == AcceleratorType.CPU;
        int group = rowGroupSize ?? (IsCpu ? 1 : GpuRowGroup);
        int max = Math.Min(accelerator.MaxNumThreadsPerGroup, GroupReduce.MaxGroupSize);
        if (group < 1 || (group & (group - 1)) != 0 || group > max)
            throw new ArgumentOutOfRangeException(nameof(rowGroupSize),
                $"row group size {group} must be a power of two no larger than {max}");
        RowGroupSize = group;
        RowReduction = rowReduction ?? (accelerator.AcceleratorType == AcceleratorType.Cuda ? RowReduction.WarpShuffle : RowReduction.Tree);
        if (RowReduction == RowReduction.WarpShuffle && (accelerator.WarpSize < 2 || group % accelerator.WarpSize != 0))
            throw new ArgumentException($"warp-shuffle reductions need a row group ({group}) that is a multiple of the warp size ({accelerator.WarpSize})");
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
    public RowReduction RowReduction { get; }

    /// <summary>
    /// Row and element-wise ops run as host code (HostRows.cs) instead of through the emulator: on
    /// the CPU accelerator in its runtime shape (single-thread row groups). A GPU-shaped CPU set
    /// keeps the kernels, so tests still run them there.
    /// </summary>
    internal bool UseHostRows => IsCpu && RowGroupSize == 1;

    /// <summary>Threads per group of row kernels on GPUs.</summary>
    public const int GpuRowGroup = 256;

    /// <summary>Threads per group of grid-stride (element-wise) kernels on GPUs.</summary>
    public const int GpuStrideGroup = 256;

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
        long groups = Math.Clamp((n + GpuStrideGroup - 1) / GpuStrideGroup, 1, (long)Accelerator.NumMultiprocessors * 32);
        return new KernelConfig((int)groups, GpuStrideGroup);
    }

    /// <summary>One group of <see cref="RowGroupSize"/> threads per row.</summary>
    internal KernelConfig Rows(int rows) => new(Math.Max(rows, 1), RowGroupSize);

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
    /// instantiated for each variant their constraint admits (activations, reduction strategies).
    /// Code-generation checks compile each for OpenCL and PTX.
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
        var variants = new Dictionary<Type, Type[]>
        {
            [typeof(IActivation)] = activations,
            [typeof(IGroupReduce)] = [typeof(TreeReduce), typeof(WarpReduce)],
            [typeof(IGemmOutput)] = [typeof(PlainOutput), .. activations.Select(a => typeof(ActivatedOutput<>).MakeGenericType(a))],
        };
        foreach (var family in families)
            foreach (var m in family.GetMethods(flags).Where(m => m.Name.EndsWith("Kernel", StringComparison.Ordinal)))
            {
                if (!m.IsGenericMethodDefinition)
                {
                    list.Add((KernelName(m), m));
                    continue;
                }
                IEnumerable<Type[]> combos = [[]];
                foreach (var parameter in m.GetGenericArguments())
                {
                    var options = variants[parameter.GetGenericParameterConstraints().Single(c => c.IsInterface)];
                    combos = combos.SelectMany(c => options.Select(o => c.Append(o).ToArray())).ToList();
                }
                list.AddRange(combos.Select(args => m.MakeGenericMethod(args)).Select(k => (KernelName(k), k)));
            }
        return list;
    }

    /// <summary>
    /// Every kernel an OpenCL device runs: all but the warp-shuffle variants, which ILGPU can emit only
    /// for Intel's sub-group extension and no KernelSet selects on OpenCL (CUDA runs them).
    /// </summary>
    public static IReadOnlyList<(string Name, MethodInfo Method)> OpenCLEntryPoints() =>
        [.. EntryPoints().Where(e => !e.Name.Contains(nameof(WarpReduce), StringComparison.Ordinal))];

    /// <summary>A kernel's name as the reports and tests use it: family.Method&lt;type arguments&gt;.</summary>
    public static string KernelName(MethodInfo kernel)
    {
        static string Pretty(Type t) => t.IsGenericType ? $"{t.Name[..t.Name.IndexOf('`')]}<{string.Join(",", t.GetGenericArguments().Select(Pretty))}>" : t.Name;
        string name = $"{kernel.DeclaringType!.Name.Replace("Kernels", "")}.{kernel.Name}";
        return kernel.IsGenericMethod ? $"{name}<{string.Join(",", kernel.GetGenericArguments().Select(Pretty))}>" : name;
    }

    /// <summary>
    /// A CPU accelerator shaped for fat threads: one multiprocessor per core, and groups of the
    /// smallest size ILGPU allows (a warp of 2). Kernels here launch single-thread groups, so every
    /// launch is in effect a parallel-for over the cores.
    /// </summary>
    public static CPUDevice FatCpuDevice() => new(2, 1, Math.Max(1, Environment.ProcessorCount));

    /// <summary>A CPU accelerator shaped like a GPU: 32-thread warps, 8 warps per group, one multiprocessor.</summary>
    public static CPUDevice GpuShapedCpuDevice() => new(32, 8, 1);

    /// <summary>
    /// Kernels for a <see cref="GpuShapedCpuDevice"/> accelerator that take the GPU paths: 32-thread
    /// row groups reducing by warp shuffles, and the tiled GEMM, attention and int8 kernels instead
    /// of host SIMD code.
    /// </summary>
    public static KernelSet GpuShaped(Accelerator accelerator, RowReduction reduction = RowReduction.WarpShuffle)
    {
        var set = new KernelSet(accelerator, 32, reduction);
        set.Gemm.ForceDeviceKernel = true;
        set.Attention.ForceDeviceKernel = true;
        set.Quantization.ForceDeviceKernel = true;
        return set;
    }
}

/// <summary>
/// The threads per group a kernel's launcher asks of a GPU. The PTX checks hold each kernel's
/// registers and shared memory against it, and the SASS report computes occupancy from it.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class GpuGroupAttribute(int threads) : Attribute
{
    public int Threads { get; } = threads;
}
