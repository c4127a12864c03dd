// The device runtime: one ILGPU context, one accelerator, its kernels and its buffer pool.
//
// Accelerators are tried in the order CUDA, OpenCL, CPU. The CPU accelerator is shaped for fat
// threads (KernelSet.FatCpuDevice): one single-thread group per core. OpenGpuShapedCpu gives the
// other shape the tests use: the CPU accelerator running the GPU kernels in GPU launch shapes.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using IlgpuBert.Kernels;

namespace IlgpuBert.Runtime;

/// <summary>One line of <c>ilgpu-bert devices</c>.</summary>
public sealed record DeviceInfo(string Spec, DeviceKind Kind, string Name, long MemoryBytes, int WarpSize,
    int MaxGroupSize, int Multiprocessors, string? ComputeCapability, bool IsAutoChoice);

/// <summary>One ILGPU accelerator (CUDA, OpenCL or the CPU) with its kernels and buffer pool; open with <see cref="Open"/>.</summary>
public sealed class BertDevice : IDisposable
{
    private BertDevice(Context context, Accelerator accelerator, string spec, KernelSet? kernels = null)
    {
        Context = context;
        Accelerator = accelerator;
        Spec = spec;
        Kernels = kernels ?? new KernelSet(accelerator);
        Pool = new BufferPool(accelerator);
    }

    /// <summary>The ILGPU context the accelerator belongs to.</summary>
    public Context Context { get; }
    /// <summary>The ILGPU accelerator everything runs on.</summary>
    public Accelerator Accelerator { get; }
    /// <summary>Every kernel family, compiled for this accelerator.</summary>
    public KernelSet Kernels { get; }
    /// <summary>The device memory pool tensors draw from.</summary>
    public BufferPool Pool { get; }

    /// <summary>The concrete device chosen, e.g. "cuda:0" or "cpu:0".</summary>
    public string Spec { get; }

    /// <summary>Which kind of accelerator this is.</summary>
    public DeviceKind Kind => KindOf(Accelerator.AcceleratorType);

    /// <summary>The accelerator's name as ILGPU reports it.</summary>
    public string Name => Accelerator.Name;

    /// <summary>Opens the device the spec names; throws <see cref="DeviceException"/> when it is absent.</summary>
    /// <param name="localRank">
    /// With no index in <paramref name="spec"/>, the device is the local rank's turn among the
    /// devices of the first candidate's kind (rank 0 cuda:0, rank 1 cuda:1, …, wrapping around):
    /// data-parallel ranks on one machine spread over its GPUs. 0 for one process.
    /// </param>
    public static BertDevice Open(DeviceSpec spec, int localRank = 0)
    {
        var context = CreateContext();
        try
        {
            var candidates = Candidates(context, spec.Kind);
            int index = spec.Index ?? 0;
            if (spec.Index is null && localRank > 0 && candidates.Count > 0)
            {
                var first = candidates[0].AcceleratorType;
                index = localRank % candidates.Count(d => d.AcceleratorType == first);
            }
            if (index >= candidates.Count)
            {
                string have = candidates.Count == 0 ? "none is present" : $"only {candidates.Count} present";
                throw new DeviceException($"no {(spec.Kind == DeviceKind.Auto ? "" : spec.Kind.ToString().ToLowerInvariant() + " ")}device {index}: {have} (see `ilgpu-bert devices`)");
            }
            var device = candidates[index];
            var accelerator = device.CreateAccelerator(context);
            return new BertDevice(context, accelerator, SpecOf(context, device));
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>
    /// ILGPU's CPU accelerator shaped like a GPU (32-thread warps, groups up to 256 threads) with
    /// every op on its GPU kernel: tiled GEMM and attention, 32-thread row groups reducing by warp
    /// shuffles. Slow; it exists so the GPU code paths can be checked on any machine.
    /// </summary>
    public static BertDevice OpenGpuShapedCpu()
    {
        var context = Context.Create(builder => builder.CPU(KernelSet.GpuShapedCpuDevice()).EnableAlgorithms());
        try
        {
            var accelerator = context.CreateCPUAccelerator(0);
            return new BertDevice(context, accelerator, "cpu-gpu-shaped", KernelSet.GpuShaped(accelerator));
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>Opens the device named by ILGPU_BERT_DEVICE, or auto.</summary>
    public static BertDevice OpenDefault() => Open(DeviceSpec.FromEnvironment());

    /// <summary>Every accelerator ILGPU finds, in the order auto tries them, the first marked.</summary>
    public static IReadOnlyList<DeviceInfo> List()
    {
        using var context = CreateContext();
        var all = Candidates(context, DeviceKind.Auto);
        return all.Select((d, i) => new DeviceInfo(SpecOf(context, d), KindOf(d.AcceleratorType), DisplayName(d), MemoryOf(d),
            d.WarpSize, d.MaxNumThreadsPerGroup, d.NumMultiprocessors,
            d is CudaDevice cuda ? $"{(int)cuda.Architecture.GetValueOrDefault().Major}.{cuda.Architecture.GetValueOrDefault().Minor}" : null,
            i == 0)).ToList();
    }

    /// <summary>ILGPU names every CPU device "CPUAccelerator"; say which processor it emulates on.</summary>
    private static string DisplayName(Device d)
    {
        if (d.AcceleratorType != AcceleratorType.CPU)
            return d.Name;
        string model = "CPU";
        try
        {
            model = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))
                ?.Split(':', 2)[1].Trim() ?? model;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return $"{model} (ILGPU CPU accelerator)";
    }

    /// <summary>The CPU accelerator reports long.MaxValue; its memory is the host's.</summary>
    private static long MemoryOf(Device d) =>
        d.AcceleratorType == AcceleratorType.CPU ? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes : d.MemorySize;

    private static Context CreateContext() =>
        Context.Create(builder => builder
            .Cuda()
            .OpenCL()
            .CPU(KernelSet.FatCpuDevice())
            .EnableAlgorithms());

    private static List<Device> Candidates(Context context, DeviceKind kind)
    {
        IEnumerable<Device> Of(AcceleratorType t) => context.Devices.Where(d => d.AcceleratorType == t);
        return kind switch
        {
            DeviceKind.Cuda => Of(AcceleratorType.Cuda).ToList(),
            DeviceKind.OpenCL => Of(AcceleratorType.OpenCL).ToList(),
            DeviceKind.Cpu => Of(AcceleratorType.CPU).ToList(),
            _ => Of(AcceleratorType.Cuda).Concat(Of(AcceleratorType.OpenCL)).Concat(Of(AcceleratorType.CPU)).ToList(),
        };
    }

    private static string SpecOf(Context context, Device device)
    {
        var kind = KindOf(device.AcceleratorType);
        int index = Candidates(context, kind).IndexOf(device);
        return new DeviceSpec(kind, index).ToString();
    }

    private static DeviceKind KindOf(AcceleratorType type) => type switch
    {
        AcceleratorType.Cuda => DeviceKind.Cuda,
        AcceleratorType.OpenCL => DeviceKind.OpenCL,
        _ => DeviceKind.Cpu,
    };

    /// <summary>Frees the pooled buffers, the accelerator and its context.</summary>
    public void Dispose()
    {
        // Buffers, then the accelerator, then the context (ILGPU-NOTES.md).
        Accelerator.Synchronize();
        Pool.Dispose();
        Kernels.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }
}
