// How every kernel family loads its kernels: as ILGPU's LoadStreamKernel does (a launcher bound to the
// accelerator's default stream), except where the generated code needs correcting first: on OpenCL
// every kernel (below), on CUDA the tensor-core kernels, whose PTX goes through PtxPostPass.
//
// ILGPU 1.5.3 compiles Group.Barrier to `work_group_barrier(CLK_GLOBAL_MEM_FENCE)` on OpenCL. By the
// OpenCL C specification that barrier orders global memory only: shared-memory (local) writes made
// before it need not be visible to the group's other work-items after it. Oclgrind reports exactly
// that as a read-write data race in every kernel that shares data through local memory
// (tools/opencl/oclgrind-check.sh, perf/RESULTS.md); PoCL and most drivers happen to fence both, which
// is why the tests never saw it. So on OpenCL each kernel's source gets both fences before it is built,
// as Group.Barrier means on CUDA (bar.sync orders shared and global memory).
//
// ILGPU offers no hook between code generation and loading, and a compiled kernel is built from an
// entry point ILGPU keeps internal (and PTXCompiledKernel's constructor is internal too): CompiledKernels
// reaches both by reflection (ILGPU is pinned to 1.5.3 in
// Directory.Packages.props; a rename there fails every OpenCL test at the first kernel load).
using System.Reflection;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace IlgpuBert.Kernels;

public sealed partial class KernelSet
{
    public Action<KernelConfig, T1, T2, T3> LoadStreamKernel<T1, T2, T3>(Action<T1, T2, T3> kernel)
        where T1 : struct where T2 : struct where T3 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3>>(kernel.Method);
        return (config, a1, a2, a3) => launch(Accelerator.DefaultStream, config, a1, a2, a3);
    }

    public Action<KernelConfig, T1, T2, T3, T4> LoadStreamKernel<T1, T2, T3, T4>(Action<T1, T2, T3, T4> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4>>(kernel.Method);
        return (config, a1, a2, a3, a4) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5> LoadStreamKernel<T1, T2, T3, T4, T5>(Action<T1, T2, T3, T4, T5> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5, T6> LoadStreamKernel<T1, T2, T3, T4, T5, T6>(Action<T1, T2, T3, T4, T5, T6> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5, a6) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5, a6);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5, T6, T7> LoadStreamKernel<T1, T2, T3, T4, T5, T6, T7>(Action<T1, T2, T3, T4, T5, T6, T7> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5, a6, a7) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5, a6, a7);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8> LoadStreamKernel<T1, T2, T3, T4, T5, T6, T7, T8>(Action<T1, T2, T3, T4, T5, T6, T7, T8> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5, a6, a7, a8) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5, a6, a7, a8);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9> LoadStreamKernel<T1, T2, T3, T4, T5, T6, T7, T8, T9>(Action<T1, T2, T3, T4, T5, T6, T7, T8, T9> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5, a6, a7, a8, a9) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5, a6, a7, a8, a9);
    }

    public Action<KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> LoadStreamKernel<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>(Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct
    {
        if (!Corrected(kernel.Method)) return Accelerator.LoadStreamKernel(kernel);
        var launch = LoadCorrected<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>>(kernel.Method);
        return (config, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) => launch(Accelerator.DefaultStream, config, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10);
    }

    /// <summary>Whether the kernel loads through <see cref="LoadCorrected"/>: every kernel on OpenCL, the tensor-core ones on CUDA.</summary>
    private bool Corrected(MethodInfo method) =>
        Accelerator is CLAccelerator || (Accelerator is CudaAccelerator && method.GetCustomAttribute<NeedsPtxPostPassAttribute>() is not null);

    private TDelegate LoadCorrected<TDelegate>(MethodInfo method) where TDelegate : Delegate
    {
        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(method);
        if (Accelerator is CudaAccelerator cuda)
        {
            var ptx = (PTXCompiledKernel)cuda.Backend.Compile(entry, default);
            return cuda.LoadKernel(CompiledKernels.WithPtx(ptx, PtxPostPass.Apply(ptx.PTXAssembly))).CreateLauncherDelegate<TDelegate>();
        }
        var cl = (CLAccelerator)Accelerator;
        var compiled = (CLCompiledKernel)cl.Backend.Compile(entry, default);
        var corrected = CompiledKernels.WithSource(compiled, OpenCLSource.ForDevice(method, compiled.Source));
        return cl.LoadKernel(corrected).CreateLauncherDelegate<TDelegate>();
    }
}

/// <summary>Corrections to the OpenCL C ILGPU generates (see KernelLoading.cs).</summary>
public static partial class OpenCLSource
{
    /// <summary>How the source of each kernel the KernelSet loads on OpenCL begins.</summary>
    public const string NameComment = "// IlgpuBert kernel: ";

    private const string LocalAndGlobal = "work_group_barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)";

    [GeneratedRegex(@"work_group_barrier\s*\(\s*CLK_GLOBAL_MEM_FENCE\s*\)")]
    private static partial Regex GlobalOnlyBarrier();

    [GeneratedRegex(@"\bwork_group_barrier\b|\bbarrier\s*\(")]
    private static partial Regex AnyBarrier();

    /// <summary>
    /// What an OpenCL device builds of a kernel: ILGPU's source with its barriers fenced, after a first
    /// line naming the kernel, for tools that see only the source (tools/opencl/cl-capture.c).
    /// </summary>
    public static string ForDevice(MethodInfo kernel, string generated) =>
        $"{NameComment}{KernelSet.KernelName(kernel)}\n{FenceLocalMemory(generated)}";

    /// <summary>
    /// The source with every group barrier fencing local as well as global memory. Throws when a
    /// barrier of another form is left (a new ILGPU would need this reviewed, not silently passed).
    /// </summary>
    public static string FenceLocalMemory(string source)
    {
        string fenced = GlobalOnlyBarrier().Replace(source, LocalAndGlobal);
        int barriers = AnyBarrier().Count(fenced), corrected = fenced.Split(LocalAndGlobal).Length - 1;
        if (barriers != corrected)
            throw new NotSupportedException($"the OpenCL C has {barriers - corrected} group barrier(s) of a form KernelLoading.cs does not know");
        return fenced;
    }
}

/// <summary>A compiled kernel with other code: what ILGPU 1.5.3 keeps internal, reached by reflection.</summary>
public static class CompiledKernels
{
    private const string Review = "review KernelLoading.cs for this ILGPU version";

    private static readonly PropertyInfo EntryPointProperty =
        typeof(CompiledKernel).GetProperty("EntryPoint", BindingFlags.Instance | BindingFlags.NonPublic)
        ?? throw new MissingMemberException($"ILGPU's CompiledKernel.EntryPoint (internal) is gone: {Review}");

    private static readonly ConstructorInfo PtxConstructor =
        typeof(PTXCompiledKernel).GetConstructor(BindingFlags.Instance | BindingFlags.NonPublic,
            [typeof(Context), typeof(EntryPoint), typeof(CompiledKernel.KernelInfo), typeof(string)])
        ?? throw new MissingMemberException($"ILGPU's PTXCompiledKernel(Context, EntryPoint, KernelInfo, string) (internal) is gone: {Review}");

    /// <summary>The same compiled kernel with other OpenCL C.</summary>
    public static CLCompiledKernel WithSource(CLCompiledKernel kernel, string source) =>
        new(kernel.Context, (SeparateViewEntryPoint)EntryPointProperty.GetValue(kernel)!, kernel.Info, source, kernel.CVersion);

    /// <summary>The same compiled kernel with other PTX.</summary>
    public static PTXCompiledKernel WithPtx(PTXCompiledKernel kernel, string ptx) =>
        (PTXCompiledKernel)PtxConstructor.Invoke([kernel.Context, EntryPointProperty.GetValue(kernel), kernel.Info, ptx]);
}
