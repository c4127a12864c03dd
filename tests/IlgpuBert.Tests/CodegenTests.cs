// Cross-vendor proof without the hardware: every kernel is compiled to OpenCL C by ILGPU's CLBackend
// and that source is compiled by clang as OpenCL C 2.0 for SPIR-V's 64-bit target; every kernel is
// also compiled to sm_90 PTX. No device is needed for either (ILGPU-NOTES.md).
using System.Diagnostics;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class CodegenTests
{
    public static TheoryData<string> Kernels() => new(KernelSet.EntryPoints().Select(e => e.Name));

    private static EntryPointDescription Entry(string name) =>
        EntryPointDescription.FromExplicitlyGroupedKernel(KernelSet.EntryPoints().Single(e => e.Name == name).Method);

    /// <summary>Every kernel an OpenCL device runs (the warp-shuffle variants only run on CUDA; the PTX checks cover them).</summary>
    public static TheoryData<string> OpenCLKernels() => new(KernelSet.OpenCLEntryPoints().Select(e => e.Name));

    /// <summary>ILGPU's OpenCL C 2.0 (with the generic address space), before KernelSet corrects it.</summary>
    private static string GeneratedOpenCL(string kernel)
    {
        using var context = Context.Create(b => b.EnableAlgorithms());
        var capabilities = new CLCapabilityContext(false, false, true, false, false);
        var backend = new CLBackend(context, capabilities, CLDeviceVendor.Other, CLCVersion.CL20);
        return ((CLCompiledKernel)backend.Compile(Entry(kernel), default)).Source;
    }

    /// <summary>The OpenCL C a device builds: ILGPU's, named and with the barrier corrected (KernelLoading.cs).</summary>
    private static string LoadedOpenCL(string kernel) =>
        OpenCLSource.ForDevice(KernelSet.EntryPoints().Single(e => e.Name == kernel).Method, GeneratedOpenCL(kernel));

    [Theory]
    [MemberData(nameof(OpenCLKernels))]
    public void Every_group_barrier_on_OpenCL_fences_local_memory(string kernel)
    {
        string generated = GeneratedOpenCL(kernel), loaded = LoadedOpenCL(kernel);
        int barriers = Regex.Matches(generated, @"work_group_barrier").Count;
        Assert.Equal(barriers, Regex.Matches(loaded, @"work_group_barrier\(CLK_LOCAL_MEM_FENCE \| CLK_GLOBAL_MEM_FENCE\)").Count);
        // ILGPU 1.5.3 fences global memory only (the race Oclgrind reports): if this ever fails because
        // ILGPU emits the local fence itself, the correction in KernelLoading.cs can go.
        if (barriers > 0) Assert.Contains("work_group_barrier ( CLK_GLOBAL_MEM_FENCE )", generated);
    }

    [Fact]
    public void A_barrier_the_correction_does_not_know_is_refused()
    {
        Assert.Equal("work_group_barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);",
            OpenCLSource.FenceLocalMemory("work_group_barrier ( CLK_GLOBAL_MEM_FENCE );"));
        var e = Assert.Throws<NotSupportedException>(() => OpenCLSource.FenceLocalMemory("work_group_barrier(CLK_IMAGE_MEM_FENCE);"));
        Assert.Contains("1 group barrier", e.Message);
        Assert.Throws<NotSupportedException>(() => OpenCLSource.FenceLocalMemory("barrier(CLK_LOCAL_MEM_FENCE);"));
    }

    [Fact]
    public void Every_kernel_family_has_entry_points()
    {
        var names = KernelSet.EntryPoints().Select(e => e.Name).ToList();
        foreach (var family in new[] { "Gemm.", "Bias.", "Activation.", "LayerNorm.", "Softmax.", "CrossEntropy.", "Embedding.", "Dropout.", "AdamW." })
            Assert.Contains(names, n => n.StartsWith(family, StringComparison.Ordinal));
        Assert.True(names.Count >= 20, $"only {names.Count} entry points found");
    }

    [Theory]
    [MemberData(nameof(OpenCLKernels))]
    public void Kernel_compiles_to_valid_OpenCL_C(string kernel)
    {
        string source = LoadedOpenCL(kernel);
        Assert.Contains("kernel void ", source);
        string? clang = FindClang();
        if (clang is null)
        {
            // .ci/run installs clang and sets this, so CI can never pass without the compile step.
            Assert.False(Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_CLANG") == "1", "clang is required but not found");
            Assert.Skip("clang not found: OpenCL C was generated but not compiled (apt-get install clang)");
        }
        string dir = Directory.CreateTempSubdirectory("ilgpu-bert-cl").FullName;
        try
        {
            string file = Path.Combine(dir, "kernel.cl");
            File.WriteAllText(file, source);
            var psi = new ProcessStartInfo(clang, ["-cl-std=CL2.0", "-Xclang", "-finclude-default-header", "-target", "spir64",
                "-c", "-emit-llvm", "-o", Path.Combine(dir, "kernel.bc"), file])
            { RedirectStandardError = true, RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            string errors = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"clang rejected the OpenCL C for {kernel}:\n{errors}");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// ILGPU's OpenCL backend turns dynamic shared memory (and shared memory allocated in a
    /// non-inlined helper) into a program-scope pointer every work-group writes: a race wherever
    /// groups' local memory lives at different addresses (PoCL, CPU OpenCL runtimes). Regression
    /// for the OpenCL attention bug: no kernel may declare local memory at program scope.
    /// </summary>
    [Theory]
    [MemberData(nameof(OpenCLKernels))]
    public void Kernel_declares_no_program_scope_local_memory(string kernel)
    {
        string source = LoadedOpenCL(kernel);
        string programScope = source[..source.IndexOf("kernel void ", StringComparison.Ordinal)];
        var declarations = programScope.Split('\n').Where(l => l.TrimStart().StartsWith("local ", StringComparison.Ordinal)).ToList();
        Assert.True(declarations.Count == 0, $"{kernel} declares program-scope local memory: {string.Join("; ", declarations)}");
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_compiles_to_sm90_PTX(string kernel)
    {
        using var context = Context.Create(b => b.EnableAlgorithms());
        var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
            CudaInstructionSet.ISA_88, null);
        var ptx = ((PTXCompiledKernel)backend.Compile(Entry(kernel), default)).PTXAssembly;
        // ILGPU 1.5.3 emits `.target sm_80` for any newer architecture; the driver JITs it (ILGPU-NOTES.md).
        Assert.Matches(@"\.target sm_[89]0", ptx);
        Assert.Contains(".entry", ptx);
        // The accurate math helpers exist because tanh.approx misses FP32 tolerances.
        Assert.DoesNotContain("tanh.approx", ptx);
        // FP64 is 1/64 rate on consumer GPUs and absent on some OpenCL devices: no kernel may use it.
        Assert.DoesNotContain(".f64", ptx);
    }

    [Fact]
    public void Tiled_gemm_ptx_keeps_its_accumulators_in_registers()
    {
        using var context = Context.Create(b => b.EnableAlgorithms());
        var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90,
            CudaInstructionSet.ISA_88, null);
        var ptx = ((PTXCompiledKernel)backend.Compile(Entry("Gemm.Tile128Kernel<PlainOutput>"), default)).PTXAssembly;
        Assert.DoesNotContain(".local", ptx);
        Assert.Contains(".shared", ptx);
        Assert.Contains("bar.sync", ptx);
    }

    private static string? FindClang()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            if (dir.Length == 0 || !Directory.Exists(dir)) continue;
            if (File.Exists(Path.Combine(dir, "clang"))) return Path.Combine(dir, "clang");
            var versioned = Directory.GetFiles(dir, "clang-*").Where(f => int.TryParse(Path.GetFileName(f)[6..], out _)).OrderBy(f => int.Parse(Path.GetFileName(f)[6..])).LastOrDefault();
            if (versioned is not null) return versioned;
        }
        return null;
    }
}
