// What NVIDIA's assembler makes of every kernel, without a GPU: each entry point is compiled to PTX
// (ISA 7.8, what CUDA 11.8's ptxas reads), assembled for sm_80 or sm_90 by ptxas, and its SASS
// listed by cuobjdump (tools/cuda/ptxas.sh fetches both). From that: registers, spills, static
// shared memory, the group size the kernel's launcher asks for ([GpuGroup]), occupancy at that
// shape, and the share of FFMA among the machine instructions, the measure of how much of a
// compute-bound kernel is arithmetic rather than addressing and bounds checks.
//
// Used by `ilgpu-bert bench sass` (the table in perf/RESULTS.md) and by the PTX tests, which fail on
// spills, on more than 255 registers, or on a launch a real GPU would refuse.
using System.Diagnostics;
using System.Reflection;
using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime.Cuda;
using IlgpuBert.Kernels;

namespace IlgpuBert.Bench;

/// <summary>One kernel assembled for one architecture.</summary>
public sealed record KernelMachineCode(string Kernel, string Arch, int Threads, int Registers, int SpillStoreBytes, int SpillLoadBytes,
    int StackBytes, int SharedBytes, int Instructions, int Ffma, double Occupancy, int Hmma = 0, int LocalAccesses = 0)
{
    public double FfmaShare => Instructions == 0 ? 0 : (double)Ffma / Instructions;
}

public static partial class SassReport
{
    public const string PtxasVariable = "ILGPU_BERT_PTXAS";
    public const string DefaultPtxas = "/var/cache/cuda-11.8-bin/ptxas";
    public static readonly string[] Architectures = ["sm_80", "sm_90"];

    /// <summary>Static shared memory a group may use without opting in (both architectures).</summary>
    public const int MaxStaticShared = 48 * 1024;

    /// <summary>ptxas from ILGPU_BERT_PTXAS, tools/cuda/ptxas.sh's cache folder, or PATH; null when none.</summary>
    public static string? FindPtxas()
    {
        string? env = Environment.GetEnvironmentVariable(PtxasVariable);
        if (!string.IsNullOrEmpty(env)) return File.Exists(env) ? env : throw new FileNotFoundException($"{PtxasVariable}={env}: no such file");
        if (File.Exists(DefaultPtxas)) return DefaultPtxas;
        return (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(d => Path.Combine(d, "ptxas")).FirstOrDefault(File.Exists);
    }

    /// <summary>The threads per group the kernel's launcher asks of a GPU.</summary>
    public static int GpuThreads(MethodInfo kernel) =>
        (kernel.IsGenericMethod ? kernel.GetGenericMethodDefinition() : kernel).GetCustomAttribute<GpuGroupAttribute>()?.Threads
        ?? throw new InvalidOperationException($"{kernel.DeclaringType?.Name}.{kernel.Name} has no [GpuGroup]");

    /// <summary>PTX (ISA 7.8) of one explicitly grouped kernel for sm_80 or sm_90, as it is loaded (after PtxPostPass where the kernel needs it).</summary>
    public static string Ptx(MethodInfo kernel, string arch)
    {
        string ptx = RawPtx(kernel, arch);
        // The tensor-core kernels are loaded after the post-pass (KernelLoading.cs), so that is what is assembled.
        return kernel.GetCustomAttribute<NeedsPtxPostPassAttribute>() is not null ? PtxPostPass.Apply(ptx) : ptx;
    }

    /// <summary>ILGPU's PTX (ISA 7.8) of one kernel, before any post-pass.</summary>
    public static string RawPtx(MethodInfo kernel, string arch)
    {
        var architecture = arch switch
        {
            "sm_80" => CudaArchitecture.SM_80,
            "sm_90" => CudaArchitecture.SM_90,
            _ => throw new ArgumentException($"unsupported architecture {arch} (sm_80, sm_90)"),
        };
        using var context = Context.Create(b => b.EnableAlgorithms());
        var backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture, CudaInstructionSet.ISA_78, null);
        var compiled = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(kernel), default);
        return compiled.PTXAssembly;
    }

    /// <summary>Assembles one kernel; with <paramref name="listSass"/> also counts its machine instructions.</summary>
    public static KernelMachineCode Assemble(string name, MethodInfo kernel, string arch, string ptxas, bool listSass = true)
    {
        string dir = Directory.CreateTempSubdirectory("ilgpu-bert-sass").FullName;
        try
        {
            string ptxFile = Path.Combine(dir, "k.ptx"), cubin = Path.Combine(dir, "k.cubin");
            File.WriteAllText(ptxFile, Ptx(kernel, arch));
            string info = Run(ptxas, ["-arch=" + arch, "-v", ptxFile, "-o", cubin], $"ptxas rejected {name} for {arch}");
            int regs = Int(UsedRegisters().Match(info), 1);
            int smem = Int(UsedShared().Match(info), 1);
            var props = FunctionProperties().Match(info);
            int stack = Int(props, 1), spillStores = Int(props, 2), spillLoads = Int(props, 3);
            int instructions = 0, ffma = 0, hmma = 0, local = 0;
            if (listSass)
            {
                string cuobjdump = Path.Combine(Path.GetDirectoryName(ptxas)!, "cuobjdump");
                foreach (Match m in SassInstruction().Matches(Run(cuobjdump, ["-sass", cubin], $"cuobjdump failed on {name}")))
                {
                    string op = m.Groups[1].Value;
                    if (op == "NOP") continue;
                    instructions++;
                    if (op.StartsWith("FFMA", StringComparison.Ordinal)) ffma++;
                    if (op.StartsWith("HMMA", StringComparison.Ordinal)) hmma++;
                    if (op.StartsWith("LDL", StringComparison.Ordinal) || op.StartsWith("STL", StringComparison.Ordinal)) local++;
                }
            }
            int threads = GpuThreads(kernel);
            return new KernelMachineCode(name, arch, threads, regs, spillStores, spillLoads, stack, smem, instructions, ffma,
                Occupancy(arch, threads, regs, smem), hmma, local);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>Every entry point of <see cref="KernelSet"/> for one architecture.</summary>
    public static IReadOnlyList<KernelMachineCode> All(string arch, string ptxas, Func<string, bool>? filter = null) =>
        KernelSet.EntryPoints().Where(e => filter?.Invoke(e.Name) ?? true)
            .AsParallel().AsOrdered().WithDegreeOfParallelism(Math.Max(1, Environment.ProcessorCount))
            .Select(e => Assemble(e.Name, e.Method, arch, ptxas)).ToList();

    /// <summary>
    /// Resident warps per SM over the maximum (64), from the launch shape and the kernel's
    /// registers and static shared memory: registers are allocated per warp in units of 256,
    /// shared memory per group in units of 128 bytes plus 1 KB the runtime reserves (sm_80+).
    /// </summary>
    public static double Occupancy(string arch, int threads, int registers, int sharedBytes)
    {
        const int maxWarps = 64, maxGroups = 32, registerFile = 65536;
        int smPerSm = arch == "sm_90" ? 228 * 1024 : 164 * 1024;
        int warpsPerGroup = (threads + 31) / 32;
        int regsPerWarp = (Math.Max(registers, 1) * 32 + 255) / 256 * 256;
        int byRegisters = registerFile / regsPerWarp / warpsPerGroup;
        int byShared = smPerSm / ((sharedBytes + 127) / 128 * 128 + 1024);
        int byThreads = maxWarps / warpsPerGroup;
        int groups = Math.Min(Math.Min(byRegisters, byShared), Math.Min(byThreads, maxGroups));
        return Math.Min(maxWarps, groups * warpsPerGroup) / (double)maxWarps;
    }

    /// <summary>A Markdown table of the report.</summary>
    public static string Markdown(IEnumerable<KernelMachineCode> rows)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine("| kernel | arch | threads | registers | spills (B) | smem (B) | occupancy | SASS | FFMA | FFMA share | HMMA | LDL/STL |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
            sb.AppendLine($"| {r.Kernel} | {r.Arch} | {r.Threads} | {r.Registers} | {r.SpillStoreBytes + r.SpillLoadBytes} | {r.SharedBytes} | {r.Occupancy:P0} | {r.Instructions} | {r.Ffma} | {r.FfmaShare:P1} | {r.Hmma} | {r.LocalAccesses} |");
        return sb.ToString();
    }

    private static int Int(Match m, int group) => m.Success ? int.Parse(m.Groups[group].Value) : 0;

    private static string Run(string file, string[] args, string what)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string all = stdout + stderr.Result;
        if (p.ExitCode != 0) throw new InvalidOperationException($"{what}:\n{all}");
        return all;
    }

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex UsedRegisters();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex UsedShared();

    [GeneratedRegex(@"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")]
    private static partial Regex FunctionProperties();

    /// <summary>A SASS line: /*0a30*/  [@P0 ]OPCODE... ; the opcode is group 1.</summary>
    [GeneratedRegex(@"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")]
    private static partial Regex SassInstruction();
}
