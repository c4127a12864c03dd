// Every kernel as NVIDIA's assembler sees it, for Ampere (sm_80) and Hopper (sm_90), without a GPU:
// tools/cuda/ptxas.sh fetches CUDA 11.8's ptxas (CI runs it; ILGPU_BERT_REQUIRE_PTXAS=1 makes a
// missing assembler a failure there instead of a skip). A kernel fails on register spills, on more
// than 255 registers, or on a launch a GPU would refuse at the group size its launcher uses: more
// than 1,024 threads, more static shared memory than 48 KB, or more registers than the SM has.
using IlgpuBert.Bench;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class PtxasTests
{
    public static TheoryData<string, string> KernelsAndArchitectures()
    {
        var data = new TheoryData<string, string>();
        foreach (var (name, _) in KernelSet.EntryPoints())
            foreach (var arch in SassReport.Architectures)
                data.Add(name, arch);
        return data;
    }

    internal static string Ptxas()
    {
        string? ptxas = SassReport.FindPtxas();
        if (ptxas is null)
        {
            Assert.False(Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_PTXAS") == "1", "ptxas is required but not found (tools/cuda/ptxas.sh)");
            Assert.Skip("ptxas not found: run tools/cuda/ptxas.sh (no GPU needed)");
        }
        return ptxas;
    }

    [Fact]
    public void Every_kernel_declares_a_GPU_group_size_a_GPU_accepts()
    {
        foreach (var (name, method) in KernelSet.EntryPoints())
        {
            int threads = SassReport.GpuThreads(method);
            Assert.True(threads is > 0 and <= 1024 && threads % 32 == 0, $"{name}: {threads} threads per group");
        }
    }

    [Theory]
    [MemberData(nameof(KernelsAndArchitectures))]
    public void Kernel_assembles_without_spills_within_the_launch_limits(string kernel, string arch)
    {
        string ptxas = Ptxas();
        var method = KernelSet.EntryPoints().Single(e => e.Name == kernel).Method;
        var code = SassReport.Assemble(kernel, method, arch, ptxas, listSass: false);
        Assert.True(code.SpillStoreBytes == 0 && code.SpillLoadBytes == 0,
            $"{kernel} on {arch} spills {code.SpillStoreBytes} bytes and reloads {code.SpillLoadBytes}");
        Assert.True(code.Registers is > 0 and <= 255, $"{kernel} on {arch} uses {code.Registers} registers");
        Assert.True(code.SharedBytes <= SassReport.MaxStaticShared, $"{kernel} on {arch} uses {code.SharedBytes} bytes of shared memory");
        Assert.True((long)code.Registers * code.Threads <= 65536, $"{kernel} on {arch}: {code.Registers} registers × {code.Threads} threads exceed the register file");
        Assert.True(code.Occupancy > 0, $"{kernel} on {arch} cannot be resident at {code.Threads} threads");
    }

    public static TheoryData<string, string> FlashAttentionKernels()
    {
        var data = new TheoryData<string, string>();
        foreach (var (name, _) in KernelSet.EntryPoints().Where(e => e.Name.StartsWith("Attention.Flash", StringComparison.Ordinal)))
            foreach (var arch in SassReport.Architectures)
                data.Add(name, arch);
        return data;
    }

    /// <summary>
    /// The FlashAttention-2 kernels (forward and backward, every head dim) stay register-tiled: at
    /// least a quarter of their machine code is FFMA (the general kernels they replaced were at 3.5–4 %).
    /// </summary>
    [Theory]
    [MemberData(nameof(FlashAttentionKernels))]
    public void Flash_attention_kernels_are_a_quarter_FFMA(string kernel, string arch)
    {
        var method = KernelSet.EntryPoints().Single(e => e.Name == kernel).Method;
        var code = SassReport.Assemble(kernel, method, arch, Ptxas());
        Assert.True(code.FfmaShare >= 0.25, $"{kernel} on {arch}: {code.Ffma} FFMA of {code.Instructions} instructions ({code.FfmaShare:P1})");
    }
}
