// Every OpenCL kernel run under Oclgrind (an OpenCL device simulator that reports data races,
// work-group divergence at barriers, out-of-bounds and uninitialised accesses), on launches captured
// from the kernel and model tests on PoCL by tools/opencl/cl-capture.c: the same buffers, scalars and
// launch shapes the tests use. tools/opencl/oclgrind-check.sh captures and then runs this
// (`ilgpu-bert bench oclgrind --captures DIR`).
//
// A capture folder holds NNNN.sim (one launch: shape and every argument's bytes), programNNN.cl (the
// kernel's OpenCL C with concrete address spaces, see cl-capture.c) and verify.log (one line per launch:
// the rewritten kernel against the original on PoCL, bit for bit). Errors are:
//  - anything Oclgrind prints other than a compiler warning, a non-zero exit or a timeout;
//  - a launch whose rewritten kernel did not match the original (verify.log);
//  - an OpenCL kernel of KernelSet that no capture launched (it was not checked);
//  - the planted race not being reported: a copy of one captured reduction kernel with its first
//    group barrier removed must be reported as a data race, or the check could not fail. (It is also
//    reported as reads of uninitialised shared memory; the race detector is run alone on it, so the
//    race is what is checked.)
// Oclgrind compiles with optimisation off: races and bounds are properties of the source, and LLVM's
// `freeze` (from the optimiser) stops Oclgrind's uninitialised-value checker.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using IlgpuBert.Kernels;

namespace IlgpuBert.Bench;

/// <summary>One captured launch checked by Oclgrind.</summary>
public sealed record OclgrindLaunch(string Sim, string Kernel, TimeSpan Time, IReadOnlyList<string> Errors);

public sealed record OclgrindReport(IReadOnlyList<OclgrindLaunch> Launches, IReadOnlyList<string> Errors)
{
    /// <summary>Distinct kernels checked.</summary>
    public int Kernels => Launches.Select(l => l.Kernel).Distinct().Count();

    public int ErrorCount => Errors.Count + Launches.Sum(l => l.Errors.Count);
}

public static partial class OclgrindCheck
{
    public const string Program = "oclgrind-kernel";
    public static readonly string[] Options = ["--data-races", "--uninitialized", "--build-options", "-cl-opt-disable", "--max-errors", "64"];

    /// <summary>
    /// The planted race's options: the race detector alone (without a barrier the readers also see
    /// uninitialised shared memory, and those reports, one per work-item, would come first).
    /// </summary>
    public static readonly string[] RaceOptions = ["--data-races", "--build-options", "-cl-opt-disable", "--max-errors", "64"];

    /// <summary>The kernel whose first barrier the planted-race self-test removes, when it was captured.</summary>
    public const string PlantedKernel = "Softmax.ForwardKernel<TreeReduce>";

    public static string? FindOclgrind() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Where(d => d.Length > 0).Select(d => Path.Combine(d, Program)).FirstOrDefault(File.Exists);

    [GeneratedRegex(@"^# kernel: (.+?) \(captured")]
    private static partial Regex KernelLine();

    [GeneratedRegex(@"^input\.cl:\d+:\d+: warning: ")]
    private static partial Regex WarningStart();

    [GeneratedRegex(@"^\d+ warnings? generated\.$")]
    private static partial Regex WarningsGenerated();

    [GeneratedRegex(@"^(\s*)(work_group_)?barrier\s*\([^;]*\)\s*;\s*$", RegexOptions.Multiline)]
    private static partial Regex BarrierStatement();

    /// <summary>The kernel a .sim file says it launches (its first line, written by cl-capture.c).</summary>
    public static string KernelOf(string sim)
    {
        string first = File.ReadLines(sim).FirstOrDefault() ?? "";
        var m = KernelLine().Match(first);
        return m.Success ? m.Groups[1].Value : throw new InvalidDataException($"{sim}: not a capture of cl-capture.c (first line: {first})");
    }

    /// <summary>
    /// What in Oclgrind's output is an error: every message (messages are separated by blank lines)
    /// except clang's warnings: from a warning's first line through "N warnings generated.", and that
    /// summary line alone, which is all Oclgrind 21.10 prints of its build's warnings.
    /// </summary>
    public static IReadOnlyList<string> Errors(string output)
    {
        var errors = new List<string>();
        var current = new StringBuilder();
        bool inWarning = false;
        foreach (string raw in output.Split('\n'))
        {
            string line = raw.Trim();
            if (WarningStart().IsMatch(line)) inWarning = true;
            if (WarningsGenerated().IsMatch(line))
            {
                inWarning = false;
                continue;
            }
            if (inWarning) continue;
            if (line.Length > 0)
            {
                current.Append(line).Append(' ');
                continue;
            }
            if (current.Length > 0) errors.Add(current.ToString().TrimEnd());
            current.Clear();
        }
        if (current.Length > 0) errors.Add(current.ToString().TrimEnd());
        return errors;
    }

    /// <summary>Runs Oclgrind on one .sim file (in its folder); the messages that are errors.</summary>
    public static (IReadOnlyList<string> Errors, TimeSpan Time) Run(string oclgrind, string sim, TimeSpan timeout, string[]? options = null)
    {
        var psi = new ProcessStartInfo(oclgrind) { WorkingDirectory = Path.GetDirectoryName(Path.GetFullPath(sim))!, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string o in options ?? Options) psi.ArgumentList.Add(o);
        psi.ArgumentList.Add(Path.GetFileName(sim));
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(true);
            return ([$"timed out after {timeout.TotalSeconds:F0} s"], clock.Elapsed);
        }
        p.WaitForExit();
        var errors = Errors(stdout.Result + "\n" + stderr.Result).ToList();
        if (p.ExitCode != 0) errors.Add($"{Program} exited with {p.ExitCode}");
        return (errors, clock.Elapsed);
    }

    /// <summary>
    /// A copy of <paramref name="sim"/> (and its program) whose kernel has its first group barrier
    /// removed, in <paramref name="folder"/>; null when the kernel has no barrier.
    /// </summary>
    public static string? PlantRace(string sim, string folder)
    {
        var lines = File.ReadAllLines(sim);
        int programLine = Array.FindIndex(lines, l => l.Length > 0 && !l.StartsWith('#'));
        string program = lines[programLine].Trim();
        string source = File.ReadAllText(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(sim))!, program));
        var barrier = BarrierStatement().Match(source);
        if (!barrier.Success) return null;
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "planted.cl"), source.Remove(barrier.Index, barrier.Length).Insert(barrier.Index, $"{barrier.Groups[1].Value}// barrier removed: a planted race\n"));
        lines[programLine] = "planted.cl";
        string copy = Path.Combine(folder, "planted.sim");
        File.WriteAllLines(copy, lines);
        return copy;
    }

    /// <summary>Checks every capture in <paramref name="folder"/>, <paramref name="jobs"/> at a time.</summary>
    public static OclgrindReport Check(string oclgrind, string folder, int jobs, TimeSpan timeout, IProgress<OclgrindLaunch>? progress = null)
    {
        var sims = Directory.GetFiles(folder, "*.sim").Where(f => Path.GetFileName(f)[0] is >= '0' and <= '9').Order(StringComparer.Ordinal).ToList();
        var errors = new List<string>();
        if (sims.Count == 0) errors.Add($"{folder}: no captured launches (*.sim)");
        string verify = Path.Combine(folder, "verify.log");
        if (!File.Exists(verify)) errors.Add($"{verify} is missing: the rewrite was not checked against the original kernels (CAPTURE_VERIFY=1)");
        else
        {
            var lines = File.ReadAllLines(verify);
            errors.AddRange(lines.Where(l => !l.StartsWith("OK ", StringComparison.Ordinal)).Select(l => $"rewrite check: {l}"));
            if (lines.Length != sims.Count) errors.Add($"verify.log has {lines.Length} lines for {sims.Count} captured launches");
        }

        var launches = new ConcurrentBag<OclgrindLaunch>();
        // Largest captures first (their size stands in for their time, up to ~200 s each), so that no
        // long one starts last while the other workers sit idle.
        var bySize = sims.OrderByDescending(f => new FileInfo(f).Length).ThenBy(f => f, StringComparer.Ordinal).ToList();
        Parallel.ForEach(Partitioner.Create(bySize, EnumerablePartitionerOptions.NoBuffering), new ParallelOptions { MaxDegreeOfParallelism = jobs }, sim =>
        {
            var (found, time) = Run(oclgrind, sim, timeout);
            var launch = new OclgrindLaunch(Path.GetFileName(sim), KernelOf(sim), time, found);
            launches.Add(launch);
            progress?.Report(launch);
        });

        var checkedKernels = launches.Select(l => l.Kernel).ToHashSet();
        errors.AddRange(KernelSet.OpenCLEntryPoints().Select(e => e.Name).Where(n => !checkedKernels.Contains(n))
            .Select(n => $"{n}: no OpenCL test launched it, so Oclgrind did not check it"));

        string? plantedFrom = sims.FirstOrDefault(s => KernelOf(s) == PlantedKernel && GroupSize(s) > 1);
        if (plantedFrom is null) errors.Add($"no capture of {PlantedKernel} with more than one work-item per group to plant a race in");
        else
        {
            string planted = PlantRace(plantedFrom, Path.Combine(folder, "planted"))
                ?? throw new InvalidOperationException($"{PlantedKernel} has no group barrier to remove");
            var (found, _) = Run(oclgrind, planted, timeout, RaceOptions);
            if (!found.Any(e => e.Contains("data race", StringComparison.OrdinalIgnoreCase)))
                errors.Add($"the planted race (the first barrier of {PlantedKernel} removed, {Path.GetFileName(plantedFrom)}) was not reported: {(found.Count == 0 ? "Oclgrind printed nothing" : found[0])}");
        }
        return new OclgrindReport([.. launches.OrderBy(l => l.Sim, StringComparer.Ordinal)], errors);
    }

    /// <summary>Work-items per group of a capture (after the program, the kernel and the global sizes).</summary>
    private static long GroupSize(string sim)
    {
        var numbers = File.ReadLines(sim).Where(l => l.Length > 0 && !l.StartsWith('#')).Skip(3).First()
            .Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse);
        return numbers.Aggregate(1L, (a, b) => a * b);
    }
}
