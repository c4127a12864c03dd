// The accelerators every kernel test runs on:
// - "cpu": ILGPU's CPU accelerator shaped as the runtime uses it (fat single-thread groups, host SIMD GEMM);
// - "cpu-gpu-shaped": a CPU accelerator with 256-thread groups, row kernels in 32-thread groups reducing
//   by warp shuffles, and the tiled GEMM and attention kernels forced, so the code paths CUDA runs
//   (shared memory, barriers, shuffles, tile edges) are exercised without a GPU;
// - "opencl": when an OpenCL device is present (CI runs this leg inside a PoCL root, tools/pocl-root.sh);
// - "cuda": when a CUDA device is present.
// ILGPU_BERT_TEST_DEVICES=a,b restricts the list (CI's OpenCL leg runs only "opencl");
// ILGPU_BERT_REQUIRE_OPENCL=1 (ILGPU_BERT_REQUIRE_CUDA=1) makes a missing OpenCL (CUDA) device fail
// every device test instead of leaving it out, so that leg can never pass by silently running nothing
// (tools/gpu/check.sh sets the CUDA one).
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;
using ILGPU.Runtime.OpenCL;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace IlgpuBert.Tests;

public sealed class TestDevice : IDisposable
{
    private TestDevice(string name, Context context, Accelerator accelerator, int? rowGroup, bool gpuShaped)
    {
        Name = name;
        Context = context;
        Accelerator = accelerator;
        Kernels = gpuShaped ? KernelSet.GpuShaped(accelerator) : new KernelSet(accelerator, rowGroup);
    }

    public string Name { get; }
    public Context Context { get; }
    public Accelerator Accelerator { get; }
    public KernelSet Kernels { get; }

    public static TestDevice Cpu(string name, CPUDevice device, int? rowGroup, bool gpuShaped)
    {
        var context = Context.Create(b => b.CPU(device).EnableAlgorithms());
        return new TestDevice(name, context, context.CreateCPUAccelerator(0), rowGroup, gpuShaped);
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

    public static TestDevice? OpenCL()
    {
        try
        {
            var context = Context.Create(b => b.OpenCL().EnableAlgorithms());
            if (context.GetCLDevices().Count == 0)
            {
                context.Dispose();
                return null;
            }
            return new TestDevice("opencl", context, context.CreateCLAccelerator(0), null, false);
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
    private static readonly Lazy<TestDevice> GpuShaped = new(() => TestDevice.Cpu("cpu-gpu-shaped", KernelSet.GpuShapedCpuDevice(), 32, true));
    private static readonly Lazy<TestDevice?> CudaDevice = new(TestDevice.Cuda);
    private static readonly Lazy<TestDevice?> OpenCLDevice = new(TestDevice.OpenCL);
    private static readonly Lazy<IReadOnlyList<string>> Present = new(FindPresent);

    /// <summary>Both CPU shapes always, OpenCL and CUDA when present, filtered by ILGPU_BERT_TEST_DEVICES.</summary>
    public static IReadOnlyList<string> Names => Present.Value;

    private static IReadOnlyList<string> FindPresent()
    {
        var only = Environment.GetEnvironmentVariable("ILGPU_BERT_TEST_DEVICES")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        bool Wanted(string name) => only is null || only.Length == 0 || only.Contains(name);
        var names = new List<string>();
        if (Wanted("cpu")) names.Add("cpu");
        if (Wanted("cpu-gpu-shaped")) names.Add("cpu-gpu-shaped");
        if (Wanted("opencl"))
        {
            if (OpenCLDevice.Value is not null) names.Add("opencl");
            else if (Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_OPENCL") == "1")
                throw new InvalidOperationException("ILGPU_BERT_REQUIRE_OPENCL=1 but ILGPU finds no OpenCL device (run inside tools/pocl-root.sh)");
        }
        if (Wanted("cuda"))
        {
            if (CudaDevice.Value is not null) names.Add("cuda");
            else if (Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_CUDA") == "1")
                throw new InvalidOperationException("ILGPU_BERT_REQUIRE_CUDA=1 but ILGPU finds no CUDA device (is libcuda.so on the library path?)");
        }
        if (names.Count == 0)
            throw new InvalidOperationException($"ILGPU_BERT_TEST_DEVICES={string.Join(",", only ?? [])} names no device present here");
        return names;
    }

    /// <summary>Device names for [Theory] tests.</summary>
    public static TheoryData<string> All => new(Names);

    public static TestDevice Get(string name) => name switch
    {
        "cpu" => Fat.Value,
        "cpu-gpu-shaped" => GpuShaped.Value,
        "opencl" => OpenCLDevice.Value ?? throw new InvalidOperationException("no OpenCL device"),
        "cuda" => CudaDevice.Value ?? throw new InvalidOperationException("no CUDA device"),
        _ => throw new ArgumentException(name),
    };

    /// <summary>A runtime device (model, tape, pool) on the accelerator a test device name stands for.</summary>
    public static BertDevice OpenBert(string name) => name switch
    {
        "cpu-gpu-shaped" => BertDevice.OpenGpuShapedCpu(),
        _ => BertDevice.Open(DeviceSpec.Parse(name)),
    };
}
