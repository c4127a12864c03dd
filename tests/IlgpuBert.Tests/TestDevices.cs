// The accelerators every kernel test runs on:
// - "cpu": ILGPU's CPU accelerator shaped as the runtime uses it (fat single-thread groups, host SIMD GEMM);
// - "cpu-gpu-shaped": a CPU accelerator with 256-thread groups, row kernels in 32-thread groups and
//   the tiled GEMM and attention kernels forced, so the code paths CUDA and OpenCL run (shared memory, barriers,
//   tree reductions, tile edges) are exercised without a GPU;
// - "cuda": when a CUDA device is present.
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using IlgpuBert.Kernels;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace IlgpuBert.Tests;

public sealed class TestDevice : IDisposable
{
    private TestDevice(string name, Context context, Accelerator accelerator, int? rowGroup, bool forceDeviceKernels)
    {
        Name = name;
        Context = context;
        Accelerator = accelerator;
        Kernels = new KernelSet(accelerator, rowGroup);
        Kernels.Gemm.ForceDeviceKernel = forceDeviceKernels;
        Kernels.Attention.ForceDeviceKernel = forceDeviceKernels;
        Kernels.Quantization.ForceDeviceKernel = forceDeviceKernels;
    }

    public string Name { get; }
    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public KernelSet Kernels { get; }

    public static TestDevice Cpu(string name, CPUDevice device, int? rowGroup, bool forceDeviceKernels)
    {
        var context = Context.Create(b => b.CPU(device).EnableAlgorithms());
        return new TestDevice(name, context, context.CreateCPUAccelerator(0), rowGroup, forceDeviceKernels);
    }

    public static TestDevice? Cuda()
    {
        try
        {
            var context = Context.Create(b => b.Cuda().EnableAlgorithms());
            if (context.GetCudaDevices().Count == 0)
            {
                context.Dispose();
                return null;
            }
            return new TestDevice("cuda", context, context.CreateCudaAccelerator(0), null, false);
        }
        catch (Exception)
        {
            return null;
        }
    }

    public MemoryBuffer1D<float, Stride1D.Dense> Upload(float[] data)
    {
        var b = Accelerator.Allocate1D<float>(Math.Max(data.Length, 1));
        if (data.Length > 0) b.View.SubView(0, data.Length).CopyFromCPU(data);
        return b;
    }

    public MemoryBuffer1D<int, Stride1D.Dense> Upload(int[] data)
    {
        var b = Accelerator.Allocate1D<int>(Math.Max(data.Length, 1));
        if (data.Length > 0) b.View.SubView(0, data.Length).CopyFromCPU(data);
        return b;
    }

    /// <summary>A buffer filled with NaN, so any element a kernel fails to write fails the test.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Poisoned(long n)
    {
        var host = new float[Math.Max(n, 1)];
        Array.Fill(host, float.NaN);
        return Upload(host);
    }

    public float[] Read(MemoryBuffer1D<float, Stride1D.Dense> buffer, long n)
    {
        Accelerator.Synchronize();
        var host = new float[n];
        if (n > 0) buffer.View.SubView(0, n).CopyToCPU(host);
        return host;
    }

    public override string ToString() => Name;

    public void Dispose()
    {
        Kernels.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }
}

public static class Devices
{
    private static readonly Lazy<TestDevice> Fat = new(() => TestDevice.Cpu("cpu", KernelSet.FatCpuDevice(), null, false));
    private static readonly Lazy<TestDevice> GpuShaped = new(() => TestDevice.Cpu("cpu-gpu-shaped", new CPUDevice(32, 8, 1), 32, true));
    private static readonly Lazy<TestDevice?> CudaDevice = new(TestDevice.Cuda);

    /// <summary>Both CPU shapes always, CUDA when present.</summary>
    public static IReadOnlyList<string> Names =>
        CudaDevice.Value is null ? ["cpu", "cpu-gpu-shaped"] : ["cpu", "cpu-gpu-shaped", "cuda"];

    /// <summary>Device names for [Theory] tests.</summary>
    public static TheoryData<string> All => new(Names);

    public static TestDevice Get(string name) => name switch
    {
        "cpu" => Fat.Value,
        "cpu-gpu-shaped" => GpuShaped.Value,
        "cuda" => CudaDevice.Value ?? throw new InvalidOperationException("no CUDA device"),
        _ => throw new ArgumentException(name),
    };
}
