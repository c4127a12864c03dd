// `ilgpu-bert distill | quantize | prune | compare`: BERTology §6 on the user's fine-tuned model,
// each writing a model folder the other commands (and evaluate/predict) read, and a table that
// puts them side by side.
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Cli;

public static class CompressCommands
{
    private static Option<T> Opt<T>(string name, string description, T fallback) => Cli.Opt(name, description, fallback);

    public static IEnumerable<Command> Create(TextWriter stdout) => [Distill(stdout), Quantize(stdout), Prune(stdout), Compare(stdout)];

    /// <summary>Examples from a file in the task's format, or the embedded default task's training or held-out split.</summary>
    private static List<TaskExample> Examples(string? path, TaskSpec task, ColumnSpec columns, bool heldOut, bool labelled, TextWriter log)
    {
        if (path is not null) return TaskData.Read(path, task.Kind, columns, labelled);
        var (train, held) = DefaultTask.Build();
        var examples = heldOut ? held : train;
        if (task.Kind != TaskKind.Classification || examples.Select(e => e.Label!).Distinct().Any(l => !task.Labels.Contains(l)))
            throw new ArgumentException("the model was not fine-tuned on the embedded default task: give its data file");
        log.WriteLine($"using the embedded default task's {(heldOut ? "held-out" : "training")} split ({examples.Count} examples)");
        return examples;
    }

    private static List<TaskBatch> Batches(BertForTask model, string dir, IReadOnlyList<TaskExample> examples, int batchSize, int maxLength, bool labelled)
    {
        var featurizer = new Featurizer(BertTextEncoder.Load(dir), model.Task, Math.Min(maxLength, model.Config.MaxPositionEmbeddings));
        var features = examples.Select(e => featurizer.Make(e, labelled)).ToList();
        return features.Chunk(batchSize).Select(c => featurizer.Collate(c, labelled)).ToList();
    }

    private static void CopyTokenizerFiles(string from, string to)
    {
        foreach (var name in new[] { BertFolder.VocabFile, Text.TokenizerJson.FileName, "tokenizer_config.json" })
            if (File.Exists(Path.Combine(from, name))) BertFolder.CopyInto(Path.Combine(from, name), to, name);
    }

    private static Command Distill(TextWriter stdout)
    {
        var d = new DistillOptions();
        var f = new FineTuneOptions();
        var teacher = Cli.Required("--teacher", "fine-tuned teacher model folder");
        var studentSize = Opt("--student-size", "half (every other teacher layer, initialised from them), or tiny, mini, small, medium, base (random init)", d.StudentSize);
        var student = new Option<string?>("--student") { Description = "a pretrained model folder whose encoder starts the student (instead of --student-size)" };
        var output = Cli.Required("--out", "output folder for the student");
        var temperature = Opt("--temperature", "softmax temperature T of the soft targets", d.Temperature);
        var alpha = Opt("--alpha", "weight of the soft-target loss (the hard loss gets 1 − α)", d.Alpha);
        var hidden = Opt("--hidden-weight", "weight of the hidden-state MSE (TinyBERT; 0: off)", d.HiddenWeight);
        var attention = Opt("--attention-weight", "weight of the attention-map MSE (TinyBERT; 0: off)", d.AttentionWeight);
        var layerMap = new Option<string?>("--layer-map") { Description = "student:teacher layer pairs, 1-based, e.g. 1:2,2:4 (default: uniform)" };
        var train = new Option<string?>("--train") { Description = "training file in the teacher's task format (default: the embedded default task)" };
        var eval = new Option<string?>("--eval") { Description = "held-out file" };
        var epochs = Opt("--epochs", "passes over the training data", f.Epochs);
        var lr = new Option<float?>("--lr") { Description = "peak learning rate (default: by the student's width, as finetune)" };
        var batch = Opt("--batch-size", "examples per step (split between the ranks with --distributed)", f.BatchSize);
        var maxLength = Opt("--max-length", "word pieces per example", f.MaxLength);
        var distributed = Cli.DistributedOption();
        var seed = Opt("--seed", "seed of initialisation, data order and dropout", f.Seed);
        var columns = FineTuneCommands.ColumnOptions.Create();
        var command = new Command("distill", "Distil a fine-tuned teacher into a smaller student (soft targets, optional hidden-state and attention losses).")
        {
            teacher, studentSize, student, output, temperature, alpha, hidden, attention, layerMap, train, eval, epochs, lr, batch, maxLength, seed, distributed,
        };
        Cli.ProtectModelOutput(command, output);
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var options = new DistillOptions
            {
                Teacher = parse.GetValue(teacher)!, StudentSize = parse.GetValue(studentSize)!, Student = parse.GetValue(student),
                Temperature = parse.GetValue(temperature), Alpha = parse.GetValue(alpha), HiddenWeight = parse.GetValue(hidden),
                AttentionWeight = parse.GetValue(attention), LayerMap = parse.GetValue(layerMap),
                Training = new FineTuneOptions
                {
                    Train = parse.GetValue(train), Eval = parse.GetValue(eval), Columns = columns.Read(parse), Epochs = parse.GetValue(epochs),
                    LearningRate = parse.GetValue(lr), BatchSize = parse.GetValue(batch), MaxLength = parse.GetValue(maxLength), Seed = parse.GetValue(seed),
                },
            };
            var (group, log) = Cli.OpenGroup(parse, distributed, stdout);
            using var device = Cli.OpenDevice(parse);
            var distiller = new Distiller(device, log, group);
            Cli.Interruptible(() => distiller.Run(options, parse.GetValue(output)!), () => distiller.RequestStop());
            return 0;
        });
        return command;
    }

    private static Command Quantize(TextWriter stdout)
    {
        var model = Cli.Required("--model", "fine-tuned model folder");
        var output = Cli.Required("--out", "output folder for the int8 model");
        var calibrate = new Option<string?>("--calibrate") { Description = "examples to measure activation ranges on, in the task's format (default: the embedded default task's training split)" };
        var count = Opt("--calibration-examples", "how many calibration examples to use", 256);
        var batch = Opt("--batch-size", "examples per forward pass", 32);
        var maxLength = Opt("--max-length", "word pieces per example", 128);
        var columns = FineTuneCommands.ColumnOptions.Create();
        var command = new Command("quantize", "int8 quantization: int8 weights per output channel, activations per tensor from calibration data (post-training) or from the ranges a --qat int8 fine-tuning learned.")
        {
            model, output, calibrate, count, batch, maxLength,
        };
        Cli.ProtectModelOutput(command, output);
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            if (parse.GetValue(count) < 1) throw new ArgumentException("--calibration-examples must be positive");
            using var device = Cli.OpenDevice(parse);
            string dir = parse.GetValue(model)!, outDir = parse.GetValue(output)!;
            var m = BertForTask.Load(device, dir);
            Int8Model int8;
            int used;
            Dictionary<Var, float>? learned;
            try
            {
                learned = QuantizationAware.FromConfig(m.Config, m.Parameters, Path.Combine(dir, BertFolder.ConfigFile));
                if (learned is not null && parse.GetValue(calibrate) is not null)
                    throw new ArgumentException($"{dir} was fine-tuned quantization-aware: its input ranges were learned in training, so --calibrate has nothing to do");
                used = 0;
                var ranges = learned;
                if (ranges is null)
                {
                    var examples = Examples(parse.GetValue(calibrate), m.Task, columns.Read(parse), heldOut: false, labelled: false, stdout).Take(parse.GetValue(count)).ToList();
                    used = examples.Count;
                    ranges = Int8Model.Calibrate(m, Batches(m, dir, examples, parse.GetValue(batch), parse.GetValue(maxLength), labelled: false));
                }
                int8 = Int8Model.Quantize(m, ranges);
            }
            catch
            {
                m.Dispose();
                throw;
            }
            using (int8)
            {
                int8.Save(outDir, Path.Combine(dir, BertFolder.VocabFile), learned is null ? used : null);
                CopyTokenizerFiles(dir, outDir);
                stdout.WriteLine($"wrote {outDir}: {int8.QuantizedLayers} Linear layers in int8, activation ranges "
                    + (learned is null ? $"from {used} calibration examples" : "learned in quantization-aware training (EMA of max |x|)"));
            }
            return 0;
        });
        return command;
    }

    private static Command Prune(TextWriter stdout)
    {
        var model = Cli.Required("--model", "fine-tuned model folder (a pretrained one for --magnitude alone)");
        var output = Cli.Required("--out", "output folder for the pruned model");
        var heads = new Option<int?>("--heads") { Description = "attention heads to remove in all" };
        var headsFraction = new Option<double?>("--heads-fraction") { Description = "share of the attention heads to remove (0.5: half)" };
        var method = Opt("--method", "importance (Michel et al. 2019: least |∂L/∂ξ_h| first) or random", "importance");
        var data = new Option<string?>("--train") { Description = "labelled examples for head importance, in the task's format (default: the embedded default task)" };
        var count = Opt("--importance-examples", "how many examples the importance scores average over", 512);
        var magnitude = new Option<double?>("--magnitude") { Description = "unstructured magnitude pruning: the share of encoder Linear weights set to zero (kept zero by later fine-tuning)" };
        var dropLayers = new Option<string?>("--drop-layers") { Description = "encoder layers to remove, 0-based, e.g. 4,5" };
        var seed = Opt("--seed", "seed of random head selection", 42);
        var batch = Opt("--batch-size", "examples per pass", 32);
        var maxLength = Opt("--max-length", "word pieces per example", 128);
        var columns = FineTuneCommands.ColumnOptions.Create();
        var command = new Command("prune", "Remove attention heads (by importance or at random), whole layers, or small weights.")
        {
            model, output, heads, headsFraction, method, data, count, magnitude, dropLayers, seed, batch, maxLength,
        };
        Cli.ProtectModelOutput(command, output);
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!, outDir = parse.GetValue(output)!;
            int? headCount = parse.GetValue(heads);
            double? fraction = parse.GetValue(headsFraction);
            var layers = parse.GetValue(dropLayers) is { } list ? list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(v => int.TryParse(v, out int l) ? l : throw new ArgumentException($"--drop-layers: \"{v}\" is not a layer number")).ToArray() : null;
            double? sparsity = parse.GetValue(magnitude);
            if (headCount is not null && fraction is not null) throw new ArgumentException("give --heads or --heads-fraction, not both");
            if (fraction is < 0 or >= 1) throw new ArgumentException("--heads-fraction must be in [0, 1)");
            if (headCount is null && fraction is null && layers is null && sparsity is null)
                throw new ArgumentException("nothing to prune: give --heads/--heads-fraction, --drop-layers or --magnitude");
            string how = parse.GetValue(method)!;
            if (how is not ("importance" or "random")) throw new ArgumentException($"--method must be importance or random, got \"{how}\"");
            using var device = Cli.OpenDevice(parse);
            var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
            var report = new JsonObject { ["source"] = dir };

            if (TaskSpec.FromConfig(config) is null)
            {
                // A pretrained model: magnitude pruning only (Gordon et al. prune before fine-tuning).
                if (headCount is not null || fraction is not null || layers is not null)
                    throw new ArgumentException($"{dir} has no task head: head importance needs a fine-tuned model's loss (and layer dropping a fine-tuned model); only --magnitude applies");
                using var pretrained = BertFolder.Load(device, dir, stdout);
                long zeroed = Pruning.PruneMagnitude(pretrained.Bert, pretrained.Config, sparsity!.Value, out var sparse);
                BertFolder.Save(sparse, pretrained.Parameters, outDir, Path.Combine(dir, BertFolder.VocabFile));
                CopyTokenizerFiles(dir, outDir);
                report["magnitude"] = new JsonObject { ["sparsity"] = sparsity, ["zeroed"] = zeroed };
                AtomicFile.WriteText(Path.Combine(outDir, "pruning.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                stdout.WriteLine($"wrote {outDir}: {zeroed} encoder weights set to zero ({sparsity:P0}); fine-tuning it keeps them zero");
                return 0;
            }

            var current = BertForTask.Load(device, dir);
            try
            {
                if (headCount is not null || fraction is not null)
                {
                    int total = current.Bert.Layers.Sum(l => l.Heads);
                    int n = headCount ?? (int)Math.Round(fraction!.Value * total);
                    Dictionary<int, int[]> chosen;
                    if (how == "random")
                        chosen = Pruning.RandomHeads(current.Config, n, parse.GetValue(seed));
                    else
                    {
                        var examples = Examples(parse.GetValue(data), current.Task, columns.Read(parse), heldOut: false, labelled: true, stdout).Take(parse.GetValue(count)).ToList();
                        var importance = Pruning.Importance(current, Batches(current, dir, examples, parse.GetValue(batch), parse.GetValue(maxLength), labelled: true));
                        chosen = Pruning.LeastImportant(importance, n);
                        report["importance"] = importance.ToJson();
                    }
                    var next = Pruning.PruneHeads(current, chosen);
                    current.Dispose();
                    current = next;
                    report["pruned_heads"] = new JsonObject(chosen.Select(kv => KeyValuePair.Create(kv.Key.ToString(), (JsonNode?)new JsonArray(kv.Value.Select(h => (JsonNode)h).ToArray()))));
                    report["method"] = how;
                    stdout.WriteLine($"removed {n} of {total} heads by {how}: {string.Join("; ", chosen.OrderBy(kv => kv.Key).Select(kv => $"layer {kv.Key}: {string.Join(",", kv.Value)}"))}");
                }
                if (layers is not null)
                {
                    var next = Pruning.DropLayers(current, layers);
                    current.Dispose();
                    current = next;
                    report["dropped_layers"] = new JsonArray(layers.Select(l => (JsonNode)l).ToArray());
                    stdout.WriteLine($"dropped layers {string.Join(", ", layers)}: {current.Config.NumHiddenLayers} left");
                }
                var saveConfig = current.Config;
                if (sparsity is not null)
                {
                    long zeroed = Pruning.PruneMagnitude(current.Bert, current.Config, sparsity.Value, out saveConfig);
                    report["magnitude"] = new JsonObject { ["sparsity"] = sparsity, ["zeroed"] = zeroed };
                    stdout.WriteLine($"set {zeroed} encoder weights to zero ({sparsity:P0})");
                }
                BertFolder.Save(saveConfig, current.Parameters, outDir, Path.Combine(dir, BertFolder.VocabFile));
                CopyTokenizerFiles(dir, outDir);
                AtomicFile.WriteText(Path.Combine(outDir, "pruning.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                stdout.WriteLine($"wrote {outDir} ({current.Parameters.All.Sum(p => p.Var.Length):N0} parameters)");
            }
            finally
            {
                current.Dispose();
            }
            return 0;
        });
        return command;
    }

    private static Command Compare(TextWriter stdout)
    {
        var models = new Option<string[]>("--models") { Description = "model folders to compare (the first is the reference)", Required = true, AllowMultipleArgumentsPerToken = true };
        var eval = new Option<string?>("--eval") { Description = "labelled evaluation file in the models' task format (default: the embedded default task's held-out split)" };
        var output = new Option<string?>("--out") { Description = "Markdown file to write the table to, a .csv with the same name beside it (default: the table is printed only)" };
        var batch = Opt("--batch-size", "batch size of the throughput measurement", 32);
        var latency = Opt("--latency-examples", "single examples the latency median is taken over", 50);
        var maxLength = Opt("--max-length", "word pieces per example", 128);
        var columns = FineTuneCommands.ColumnOptions.Create();
        var command = new Command("compare", "Parameters, file size, latency, throughput and task metric of several models, side by side.")
        {
            models, eval, output, batch, latency, maxLength,
        };
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var dirs = parse.GetValue(models)!;
            if (dirs.Length == 0) throw new ArgumentException("--models needs at least one folder");
            using var device = Cli.OpenDevice(parse);
            TaskSpec task;
            using (var first = LoadedModel.Load(device, dirs[0])) task = first.Model.Task;
            var examples = Examples(parse.GetValue(eval), task, columns.Read(parse), heldOut: true, labelled: true, stdout);
            var rows = Comparison.Run(device, dirs, examples, parse.GetValue(batch), parse.GetValue(maxLength), parse.GetValue(latency), stdout);
            string table = Comparison.Markdown(rows, $"{device.Spec} ({device.Name}, {Environment.ProcessorCount} cores)", parse.GetValue(batch), examples.Count);
            stdout.WriteLine();
            stdout.Write(table);
            if (parse.GetValue(output) is not { } path) return 0; // nothing written unless asked: no stray files in the current folder
            string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
            if (folder is not null) Directory.CreateDirectory(folder);
            AtomicFile.WriteText(path, table);
            AtomicFile.WriteText(Path.ChangeExtension(path, ".csv"), Comparison.Csv(rows));
            stdout.WriteLine($"wrote {path} and {Path.ChangeExtension(path, ".csv")}");
            return 0;
        });
        return command;
    }
}
