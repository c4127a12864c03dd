using System.CommandLine;
using System.Text.Json;
using IlgpuBert.Bench;
using IlgpuBert.Kernels;

namespace IlgpuBert.Cli;

/// <summary>
/// <c>ilgpu-bert bench [gemm|gelu|layernorm|softmax-xent|adamw|attention|bert-step] [sizes] [--json]</c>:
/// kernel timings as a table, or one JSON object per line. No op runs them all. <c>bench sass</c>
/// needs no device: it assembles every kernel for a GPU architecture with NVIDIA's ptxas
/// (tools/cuda/ptxas.sh) and reports registers, spills, shared memory, occupancy and FFMA share.
/// </summary>
public static class BenchCommand
{
    public static Command Create(TextWriter stdout)
    {
        var op = new Argument<string?>("op")
        {
            Description = "gemm, gelu, layernorm, softmax-xent, adamw, attention or bert-step (default: all); forward --model DIR for a model folder's encoder; sass for the machine-code report",
            Arity = ArgumentArity.ZeroOrOne,
        };
        op.AcceptOnlyFromAmong([.. KernelBench.Ops, "forward", "sass", "oclgrind"]);
        var captures = new Option<string?>("--captures") { Description = "oclgrind: the folder of launches tools/opencl/cl-capture.c captured" };
        var jobs = new Option<int>("--jobs") { Description = "oclgrind: simulations at a time", DefaultValueFactory = _ => Environment.ProcessorCount };
        var arch = new Option<string>("--arch") { Description = "sass: sm_80 or sm_90", DefaultValueFactory = _ => "sm_90" };
        var kernel = new Option<string?>("--kernel") { Description = "sass: only kernels whose name contains this" };
        var markdown = new Option<bool>("--markdown") { Description = "sass: a Markdown table (as in perf/RESULTS.md)" };
        var m = new Option<int>("--m") { Description = "GEMM rows of C", DefaultValueFactory = _ => 512 };
        var n = new Option<int>("--n") { Description = "GEMM columns of C", DefaultValueFactory = _ => 512 };
        var k = new Option<int>("--k") { Description = "GEMM inner dimension", DefaultValueFactory = _ => 512 };
        var trans = new Option<string>("--trans") { Description = "GEMM op(A)op(B): NN, NT, TN or TT", DefaultValueFactory = _ => "NN" };
        var precision = new Option<string>("--precision") { Description = "gemm: fp32, or bf16 (the host bfloat16 GEMM, op NT, beside FP32 in the same run)", DefaultValueFactory = _ => "fp32" };
        var batch = new Option<int>("--batch") { Description = "GEMM strided batches", DefaultValueFactory = _ => 1 };
        var rows = new Option<int?>("--rows") { Description = "rows (tokens) for gelu, layernorm, softmax-xent" };
        var cols = new Option<int?>("--cols") { Description = "columns: hidden size, or vocabulary for softmax-xent" };
        var parameters = new Option<long>("--params") { Description = "adamw: parameter count", DefaultValueFactory = _ => 4_000_000 };
        var attnBatch = new Option<int?>("--b") { Description = "batch size: attention (default 32), bert-step and forward (default 16)" };
        var attnSeq = new Option<int>("--s") { Description = "sequence length: attention, bert-step and forward", DefaultValueFactory = _ => 128 };
        var attnHeads = new Option<int>("--nh") { Description = "attention heads", DefaultValueFactory = _ => 12 };
        var attnHeadDim = new Option<int>("--hd") { Description = "attention head dim (≤ 128)", DefaultValueFactory = _ => 64 };
        var modelSize = new Option<string>("--size", "--model-size") { Description = "bert-step: tiny, mini, small, medium, base or large (as init)", DefaultValueFactory = _ => "tiny" };
        var modelDir = new Option<string[]>("--model") { Description = "forward: the model folder whose encoder is timed (repeat it to time several in turn)", AllowMultipleArgumentsPerToken = true };
        var rounds = new Option<int>("--rounds") { Description = "forward: rounds over the models, each reporting its median round", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "one JSON object per line instead of a table" };

        var command = new Command("bench", "Time the kernels on a device, or report their machine code (sass).")
            { op, m, n, k, trans, precision, batch, rows, cols, parameters, attnBatch, attnSeq, attnHeads, attnHeadDim, modelSize, modelDir, rounds, json, arch, kernel, markdown, captures, jobs };
        command.SetAction(parse =>
        {
            if (parse.GetValue(op) == "oclgrind")
                return Oclgrind(stdout, parse.GetValue(captures) ?? throw new ArgumentException("bench oclgrind needs --captures DIR (tools/opencl/oclgrind-check.sh makes one)"),
                    parse.GetValue(jobs));
            if (parse.GetValue(op) == "sass")
                return Sass(stdout, parse.GetValue(arch)!, parse.GetValue(kernel), parse.GetValue(markdown), parse.GetValue(json));
            string t = parse.GetValue(trans)!.ToUpperInvariant();
            if (t is not ("NN" or "NT" or "TN" or "TT"))
                throw new ArgumentException($"--trans must be NN, NT, TN or TT, got {t}");
            foreach (var (name, value) in new[] { ("--m", parse.GetValue(m)), ("--n", parse.GetValue(n)), ("--k", parse.GetValue(k)), ("--batch", parse.GetValue(batch)),
                ("--b", parse.GetValue(attnBatch) ?? 1), ("--s", parse.GetValue(attnSeq)), ("--nh", parse.GetValue(attnHeads)), ("--hd", parse.GetValue(attnHeadDim)) })
                if (value < 1) throw new ArgumentException($"{name} must be positive, got {value}");
            if (parse.GetValue(rows) is < 1 || parse.GetValue(cols) is < 1 || parse.GetValue(parameters) < 1)
                throw new ArgumentException("--rows, --cols and --params must be positive");
            if (parse.GetValue(op) == "forward" && parse.GetValue(modelDir) is not { Length: > 0 })
                throw new ArgumentException("bench forward needs --model DIR (a model folder)");
            if (parse.GetValue(rounds) < 1) throw new ArgumentException($"--rounds must be positive, got {parse.GetValue(rounds)}");

            using var device = Cli.OpenDevice(parse);
            string? which = parse.GetValue(op);
            var results = new List<BenchResult>();
            bool asJson = parse.GetValue(json);
            void Emit(BenchResult r)
            {
                results.Add(r);
                if (asJson)
                    stdout.WriteLine(JsonSerializer.Serialize(new { op = r.Op, device = r.Device, shape = r.Shape, ms = r.Ms,
                        gflops = r.Gflops, tflops = r.Gflops / 1000, gbps = r.Gbps, tokens_per_s = r.TokensPerSecond },
                        new JsonSerializerOptions { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull }));
            }
            foreach (string o in which is null ? KernelBench.Ops : [which])
            {
                switch (o)
                {
                    case "gemm" when parse.GetValue(precision) == "bf16":
                        foreach (var r in KernelBench.GemmBf16(device, parse.GetValue(m), parse.GetValue(n), parse.GetValue(k))) Emit(r);
                        break;
                    case "gemm":
                        if (parse.GetValue(precision) is not "fp32") throw new ArgumentException($"--precision must be fp32 or bf16, got {parse.GetValue(precision)}");
                        Emit(KernelBench.Gemm(device, parse.GetValue(m), parse.GetValue(n), parse.GetValue(k),
                            t[0] == 'T' ? Transpose.T : Transpose.N, t[1] == 'T' ? Transpose.T : Transpose.N, parse.GetValue(batch)));
                        break;
                    case "gelu":
                        foreach (var r in KernelBench.Gelu(device, parse.GetValue(rows) ?? 1024, parse.GetValue(cols) ?? 3072)) Emit(r);
                        break;
                    case "layernorm":
                        foreach (var r in KernelBench.LayerNorm(device, parse.GetValue(rows) ?? 4096, parse.GetValue(cols) ?? 768)) Emit(r);
                        break;
                    case "softmax-xent":
                        foreach (var r in KernelBench.SoftmaxCrossEntropy(device, parse.GetValue(rows) ?? 512, parse.GetValue(cols) ?? 30522)) Emit(r);
                        break;
                    case "attention":
                        foreach (var r in KernelBench.Attention(device, parse.GetValue(attnBatch) ?? 32, parse.GetValue(attnSeq), parse.GetValue(attnHeads), parse.GetValue(attnHeadDim))) Emit(r);
                        break;
                    case "bert-step":
                        Emit(KernelBench.BertStep(device, parse.GetValue(modelSize)!, parse.GetValue(attnBatch) ?? 16, parse.GetValue(attnSeq)));
                        break;
                    case "forward":
                        foreach (var r in KernelBench.Forward(device, parse.GetValue(modelDir)!, parse.GetValue(attnBatch) ?? 16, parse.GetValue(attnSeq), parse.GetValue(rounds))) Emit(r);
                        break;
                    case "adamw":
                        foreach (var r in KernelBench.AdamW(device, parse.GetValue(parameters))) Emit(r);
                        break;
                }
            }
            if (!asJson)
            {
                int width = results.Select(r => r.Shape.Length).Append(36).Max(); // model folders name their shape rows
                stdout.WriteLine($"{"op",-26} {"device",-8} {"shape".PadRight(width)} {"ms",10} {"GFLOP/s",9} {"GB/s",8}");
                foreach (var r in results)
                    stdout.WriteLine($"{r.Op,-26} {r.Device,-8} {r.Shape.PadRight(width)} {r.Ms,10:F3} {(r.Gflops is { } g ? g.ToString("F1") : "-"),9} {(r.Gbps is { } b ? b.ToString("F1") : "-"),8}{(r.TokensPerSecond is { } tps ? $"  {tps:F0} tokens/s" : "")}");
            }
            return 0;
        });
        return command;
    }

    /// <summary>Every captured launch under Oclgrind; a line per kernel, then every error, then the count.</summary>
    private static int Oclgrind(TextWriter stdout, string folder, int jobs)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"--captures {folder}: no such folder");
        if (jobs < 1) throw new ArgumentException($"--jobs must be positive, got {jobs}");
        string oclgrind = OclgrindCheck.FindOclgrind() ?? throw new FileNotFoundException($"{OclgrindCheck.Program} not found on PATH (apt-get install oclgrind)");
        int total = Directory.GetFiles(folder, "*.sim").Length, done = 0;
        var progress = new Progress<OclgrindLaunch>(l =>
        {
            int n = Interlocked.Increment(ref done);
            if (n % 50 == 0 || l.Errors.Count > 0) Console.Error.WriteLine($"[{n}/{total}] {l.Sim} {l.Kernel}: {l.Time.TotalSeconds:F1} s, {l.Errors.Count} errors");
        });
        var report = OclgrindCheck.Check(oclgrind, folder, jobs, TimeSpan.FromMinutes(10), progress);
        int width = report.Launches.Select(l => l.Kernel.Length).Append(10).Max();
        stdout.WriteLine($"{"kernel".PadRight(width)} {"launches",8} {"errors",6} {"slowest s",9}");
        foreach (var g in report.Launches.GroupBy(l => l.Kernel).OrderBy(g => g.Key, StringComparer.Ordinal))
            stdout.WriteLine($"{g.Key.PadRight(width)} {g.Count(),8} {g.Sum(l => l.Errors.Count),6} {g.Max(l => l.Time.TotalSeconds),9:F1}");
        foreach (var l in report.Launches.Where(l => l.Errors.Count > 0))
            foreach (string e in l.Errors.Take(3)) stdout.WriteLine($"error: {l.Sim} {l.Kernel}: {e}");
        foreach (string e in report.Errors) stdout.WriteLine($"error: {e}");
        stdout.WriteLine($"{report.Kernels} kernels, {report.ErrorCount} errors ({report.Launches.Count} launches)");
        return report.ErrorCount == 0 ? 0 : 1;
    }

    private static int Sass(TextWriter stdout, string arch, string? filter, bool markdown, bool json)
    {
        if (!SassReport.Architectures.Contains(arch))
            throw new ArgumentException($"--arch must be one of {string.Join(", ", SassReport.Architectures)}, got {arch}");
        string ptxas = SassReport.FindPtxas()
            ?? throw new ArgumentException($"ptxas not found: run tools/cuda/ptxas.sh (no GPU needed) or set {SassReport.PtxasVariable}");
        var rows = SassReport.All(arch, ptxas, filter is null ? null : name => name.Contains(filter, StringComparison.OrdinalIgnoreCase));
        if (rows.Count == 0) throw new ArgumentException($"no kernel name contains \"{filter}\"");
        if (markdown)
            stdout.Write(SassReport.Markdown(rows));
        else if (json)
            foreach (var r in rows) stdout.WriteLine(JsonSerializer.Serialize(r with { }, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        else
        {
            stdout.WriteLine($"{"kernel",-44} {"arch",-5} {"threads",7} {"regs",5} {"spills",7} {"smem",6} {"occup.",7} {"SASS",6} {"FFMA",5} {"FFMA %",7} {"HMMA",5} {"LDL/STL",7}");
            foreach (var r in rows)
                stdout.WriteLine($"{r.Kernel,-44} {r.Arch,-5} {r.Threads,7} {r.Registers,5} {r.SpillStoreBytes + r.SpillLoadBytes,7} {r.SharedBytes,6} {r.Occupancy,7:P0} {r.Instructions,6} {r.Ffma,5} {r.FfmaShare,7:P1} {r.Hmma,5} {r.LocalAccesses,7}");
        }
        return 0;
    }
}
