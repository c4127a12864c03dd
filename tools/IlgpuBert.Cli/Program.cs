// ilgpu-bert: the command-line face of IlgpuBert. Each verb lives in its own file; this one wires
// them up and turns expected failures (an absent device, a bad argument) into one line on stderr
// and exit code 2, never a stack trace.
using System.CommandLine;
using IlgpuBert.Cli;

return Cli.Run(args, Console.Out, Console.Error);

namespace IlgpuBert.Cli
{
    using IlgpuBert.Distributed;
    using IlgpuBert.Runtime;

    public static class Cli
    {
        /// <summary>--device, on every verb; its default comes from ILGPU_BERT_DEVICE, else auto.</summary>
        public static readonly Option<string?> DeviceOption = new("--device")
        {
            Description = $"auto|cuda|opencl|cpu, optionally :N (default: ${DeviceSpec.EnvironmentVariable} or auto)",
            Recursive = true,
        };

        public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
        {
            var root = new RootCommand("IlgpuBert: BERT on GPUs through ILGPU kernels.");
            root.Options.Add(DeviceOption);
            root.Subcommands.Add(DevicesCommand.Create(stdout));
            root.Subcommands.Add(BenchCommand.Create(stdout));
            root.Subcommands.Add(PretrainCommand.Create(stdout));
            root.Subcommands.Add(AnalyzeCommand.Create(stdout));
            foreach (var command in FineTuneCommands.Create(stdout))
                root.Subcommands.Add(command);
            foreach (var command in ModelCommands.Create(stdout, stderr))
                root.Subcommands.Add(command);
            foreach (var command in CompressCommands.Create(stdout))
                root.Subcommands.Add(command);
            foreach (var command in RealModelCommands.Create(stdout, stderr))
                root.Subcommands.Add(command);
            try
            {
                var parse = root.Parse(args.Length == 0 ? ["--help"] : args); // alone, the tool shows what it can do
                if (parse.Errors.Count > 0)
                {
                    foreach (var error in parse.Errors)
                        stderr.WriteLine($"error: {error.Message}");
                    return 2;
                }
                return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
            }
            catch (Exception e) when (group is { Size: > 1 } g)
            {
                // One rank failed: it names itself, and MPI_Abort ends every rank now (the others may
                // be waiting in a collective that would never complete).
                stderr.WriteLine($"error: {g.Describe()}: {(Expected(e) ? OneLine(e.Message) : e.ToString())}");
                stderr.Flush();
                g.Abort(2);
                return 2;
            }
            catch (Exception e) when (Expected(e))
            {
                stderr.WriteLine($"error: {OneLine(e.Message)}");
                return 2;
            }
            finally
            {
                group?.Dispose();
                group = null;
            }
        }

        /// <summary>A message as one line (a line break inside some text it quotes would split it), at most 1,000 characters.</summary>
        private static string OneLine(string message)
        {
            string line = string.Join(' ', message.Split((char[])['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            return line.Length <= 1000 ? line : line[..1000] + "…";
        }

        /// <summary>Failures the user can act on: one line, no stack trace.</summary>
        private static bool Expected(Exception e) => e is DeviceException or ArgumentException or IOException or InvalidOperationException
            or Checkpoints.CheckpointException or System.Text.Json.JsonException or UnauthorizedAccessException
            or Pretraining.NonFiniteLossException or FineTuning.DataFormatException;

        [ThreadStatic] private static ProcessGroup? group; // per thread: the tests run verbs in parallel in one process
        private static System.Runtime.InteropServices.PosixSignalRegistration? terminated;

        /// <summary>--distributed on the training verbs: single (default), mpi or nccl.</summary>
        public static Option<string> DistributedOption() => Opt("--distributed",
            "single, or data-parallel across the processes mpirun starts: mpi (any device) or nccl (CUDA devices; MPI starts them)", "single");

        /// <summary>
        /// The ranks this process trains with (per --distributed), and where it writes: rank 0 to
        /// <paramref name="stdout"/>, the others nowhere (their errors still reach stderr).
        /// </summary>
        public static (ProcessGroup Group, TextWriter Log) OpenGroup(ParseResult parse, Option<string> option, TextWriter stdout)
        {
            group?.Dispose();
            group = parse.GetValue(option) switch
            {
                "single" => ProcessGroup.Single(),
                "mpi" => new MpiProcessGroup(),
                "nccl" => new NcclProcessGroup(new MpiProcessGroup()),
                var other => throw new ArgumentException($"--distributed must be single, mpi or nccl, got \"{other}\""),
            };
            if (group.Size > 1)
            {
                var g = group;
                terminated ??= System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, _ =>
                    Console.Error.WriteLine($"error: {g.Describe()}: stopped by the launcher (another rank failed, and mpirun names it; or mpirun was interrupted)"));
            }
            return (group, group.IsRoot ? stdout : TextWriter.Null);
        }

        /// <summary>
        /// Makes <paramref name="output"/> a model folder that is never replaced by accident: an --out that
        /// already holds a model (config.json) is refused before anything runs unless --overwrite is given
        /// (or <paramref name="continuing"/> says this run continues the one in that folder).
        /// </summary>
        public static void ProtectModelOutput(Command command, Option<string> output, Func<System.CommandLine.Parsing.CommandResult, bool>? continuing = null)
        {
            var overwrite = new Option<bool>("--overwrite") { Description = "replace a model already in --out" };
            command.Options.Add(overwrite);
            command.Validators.Add(result =>
            {
                string? dir = result.GetValue(output);
                if (dir is null || result.GetValue(overwrite) || !File.Exists(Path.Combine(dir, Model.BertFolder.ConfigFile)) || continuing?.Invoke(result) == true)
                    return;
                result.AddError($"{dir} already holds a model ({Model.BertFolder.ConfigFile}): choose another --out, or pass --overwrite to replace it");
            });
        }

        /// <summary>A required string option.</summary>
        public static Option<string> Required(string name, string description) => new(name) { Description = description, Required = true };

        /// <summary>An option with a description and a default shown in --help.</summary>
        public static Option<T> Opt<T>(string name, string description, T fallback) =>
            new(name) { Description = description, DefaultValueFactory = _ => fallback };

        /// <summary>Runs a long job; Ctrl-C calls <paramref name="stop"/> (the job saves and returns) instead of killing the process.</summary>
        public static void Interruptible(Action run, Action stop)
        {
            ConsoleCancelEventHandler onCancel = (_, e) =>
            {
                e.Cancel = true;
                stop();
            };
            Console.CancelKeyPress += onCancel;
            try { run(); }
            finally { Console.CancelKeyPress -= onCancel; }
        }

        /// <summary>The device the user asked for (flag, then environment, then auto).</summary>
        public static BertDevice OpenDevice(ParseResult parse)
        {
            string? text = parse.GetValue(DeviceOption);
            var spec = text is null ? DeviceSpec.FromEnvironment() : DeviceSpec.Parse(text);
            return BertDevice.Open(spec, group is { Size: > 1 } ? ProcessGroup.LocalRank() : 0);
        }
    }
}
