// `ilgpu-bert finetune | evaluate | predict`: a task head on a pretrained model, trained on the
// user's labelled files (or the embedded default task), evaluated with the task's metrics, and
// used to label new text from a file or standard input.
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Cli;

public static class FineTuneCommands
{
    private static Option<T> Opt<T>(string name, string description, T fallback) => Cli.Opt(name, description, fallback);

    internal sealed record ColumnOptions(Option<string> Text, Option<string?> Pair, Option<string> Label, Option<bool> NoHeader)
    {
        public static ColumnOptions Create() => new(
            Opt("--text-column", "TSV/CSV column or JSONL key of the text (name, or 0-based index)", "text"),
            new Option<string?>("--text-pair-column") { Description = "column of the second text (default text_pair for pair tasks)" },
            Opt("--label-column", "column of the label", "label"),
            new Option<bool>("--no-header") { Description = "the TSV/CSV file has no header row (columns are indices)" });

        public IEnumerable<Option> All => [Text, Pair, Label, NoHeader];

        public ColumnSpec Read(ParseResult p) => new(p.GetValue(Text)!, p.GetValue(Pair), p.GetValue(Label)!, !p.GetValue(NoHeader));
    }

    public static IEnumerable<Command> Create(TextWriter stdout) => [FineTune(stdout), Evaluate(stdout), Predict(stdout)];

    private static Command FineTune(TextWriter stdout)
    {
        var d = new FineTuneOptions();
        var model = new Option<string?>("--model") { Description = "pretrained model folder (config.json, model.safetensors, vocab.txt)" };
        var initFrom = new Option<string?>("--init-from") { Description = "two-stage fine-tuning: a model fine-tuned on an intermediate task (its encoder is kept, the head is new)" };
        var task = Opt("--task", "classification, pair-classification, regression, token-classification or qa", "classification");
        var train = new Option<string?>("--train") { Description = "training file: TSV/CSV/JSONL, CoNLL (token-classification) or SQuAD JSON (qa); default: the embedded default task" };
        var eval = new Option<string?>("--eval") { Description = "held-out file in the same format" };
        var output = Cli.Required("--out", "output folder");
        var epochs = Opt("--epochs", "passes over the training data", d.Epochs);
        var lr = new Option<float?>("--lr") { Description = "peak learning rate (default: 5e-5·(768/hidden_size)^1.5, e.g. 5e-5 for base, 7e-4 for tiny)" };
        var batch = Opt("--batch-size", "examples per step (split between the ranks with --distributed)", d.BatchSize);
        var distributed = Cli.DistributedOption();
        var maxLength = Opt("--max-length", "word pieces per example, special tokens included", d.MaxLength);
        var seed = Opt("--seed", "seed of the head's initialisation, data order and dropout", d.Seed);
        var warmup = Opt("--warmup-ratio", "share of the steps spent warming the learning rate up", d.WarmupRatio);
        var decay = Opt("--weight-decay", "AdamW weight decay", d.WeightDecay);
        var pooling = Opt("--pooling", "mean, cls, concat-last4 or scalar-mix: which layers and positions the head reads (default: mean; per-token tasks read each token)", "");
        var freelbSteps = Opt("--freelb-steps", "FreeLB adversarial ascent steps K (0: off)", d.FreeLbSteps);
        var freelbEps = Opt("--freelb-eps", "FreeLB: radius of the L2 ball around the embeddings (0: unbounded)", d.FreeLbEps);
        var freelbLr = Opt("--freelb-lr", "FreeLB: ascent step size", d.FreeLbLr);
        var smartWeight = Opt("--smart-weight", "SMART smoothness regularisation weight λ (0: off)", d.SmartWeight);
        var smartEps = Opt("--smart-eps", "SMART: ∞-norm bound of the perturbation", d.SmartEps);
        var smartStep = Opt("--smart-step", "SMART: ascent step size", d.SmartStep);
        var smartNoise = Opt("--smart-noise", "SMART: standard deviation of the initial noise", d.SmartNoise);
        var mixout = Opt("--mixout", "Mixout probability p for the encoder's Linear weights (0: off)", d.Mixout);
        var qat = new Option<string?>("--qat") { Description = "int8: quantization-aware training (Q8BERT): every Linear layer computes with fake-quantized int8 weights and inputs; `quantize` then uses the learned input ranges" };
        var freezeEmbeddings = new Option<bool>("--freeze-embeddings") { Description = "do not train the embedding layer" };
        var freezeLayers = Opt("--freeze-layers", "do not train the lowest N encoder layers", d.FreezeLayers);
        var layerDecay = Opt("--layer-lr-decay", "layer-wise learning-rate decay ξ (1: off)", d.LayerLrDecay);
        var columns = ColumnOptions.Create();

        var command = new Command("finetune", "Fine-tune a pretrained model on a classification, regression, tagging or QA task.")
        {
            model, initFrom, task, train, eval, output, epochs, lr, batch, maxLength, seed, warmup, decay, pooling,
            freelbSteps, freelbEps, freelbLr, smartWeight, smartEps, smartStep, smartNoise, mixout, qat, freezeEmbeddings, freezeLayers, layerDecay, distributed,
        };
        Cli.ProtectModelOutput(command, output);
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            var options = new FineTuneOptions
            {
                Model = parse.GetValue(model), InitFrom = parse.GetValue(initFrom), Task = TaskSpec.ParseKind(parse.GetValue(task)!),
                Train = parse.GetValue(train), Eval = parse.GetValue(eval), Columns = columns.Read(parse),
                Epochs = parse.GetValue(epochs), LearningRate = parse.GetValue(lr), BatchSize = parse.GetValue(batch),
                MaxLength = parse.GetValue(maxLength), Seed = parse.GetValue(seed), WarmupRatio = parse.GetValue(warmup),
                WeightDecay = parse.GetValue(decay), Pooling = parse.GetValue(pooling) is { Length: > 0 } p ? TaskSpec.ParsePooling(p) : null,
                FreeLbSteps = parse.GetValue(freelbSteps), FreeLbEps = parse.GetValue(freelbEps), FreeLbLr = parse.GetValue(freelbLr),
                SmartWeight = parse.GetValue(smartWeight), SmartEps = parse.GetValue(smartEps), SmartStep = parse.GetValue(smartStep),
                SmartNoise = parse.GetValue(smartNoise), Mixout = parse.GetValue(mixout), Qat = parse.GetValue(qat), FreezeEmbeddings = parse.GetValue(freezeEmbeddings),
                FreezeLayers = parse.GetValue(freezeLayers), LayerLrDecay = parse.GetValue(layerDecay),
            };
            options.Validate();
            var (group, log) = Cli.OpenGroup(parse, distributed, stdout);
            using var device = Cli.OpenDevice(parse);
            var tuner = new FineTuner(device, log, group);
            Cli.Interruptible(() => tuner.Run(options, parse.GetValue(output)!), () => tuner.StopRequested = true);
            return 0;
        });
        return command;
    }

    private static Command Evaluate(TextWriter stdout)
    {
        var model = Cli.Required("--model", "fine-tuned model folder");
        var eval = Cli.Required("--eval", "labelled file in the training format");
        var batch = Opt("--batch-size", "examples per forward pass", 32);
        var maxLength = Opt("--max-length", "word pieces per example", 128);
        var output = new Option<string?>("--out") { Description = "also write the metrics to this JSON file" };
        var columns = ColumnOptions.Create();
        var command = new Command("evaluate", "Score a fine-tuned model on a labelled file with its task's metrics.") { model, eval, batch, maxLength, output };
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            using var device = Cli.OpenDevice(parse);
            string dir = parse.GetValue(model)!;
            using var loaded = LoadedModel.Load(device, dir); // float or int8
            var m = loaded.Model;
            var examples = TaskData.Read(parse.GetValue(eval)!, m.Task.Kind, columns.Read(parse));
            var featurizer = new Featurizer(BertTextEncoder.Load(dir), m.Task, Math.Min(parse.GetValue(maxLength), m.Config.MaxPositionEmbeddings));
            var features = examples.Select(e => featurizer.Make(e, labelled: true)).ToList();
            var metrics = Predictor.Metrics(m.Task, loaded.Predict(featurizer, features, parse.GetValue(batch)));
            string json = metrics.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
            stdout.WriteLine(json);
            if (parse.GetValue(output) is { } path) Checkpoints.AtomicFile.WriteText(path, json + "\n");
            return 0;
        });
        return command;
    }

    private static Command Predict(TextWriter stdout)
    {
        var model = Cli.Required("--model", "fine-tuned model folder");
        var input = new Option<string?>("--input") { Description = "a file of texts, one per line (pairs and QA: two texts separated by a tab); default: standard input" };
        var batch = Opt("--batch-size", "examples per forward pass", 32);
        var maxLength = Opt("--max-length", "word pieces per example", 128);
        var command = new Command("predict", "Label texts with a fine-tuned model: label and probability, value, tags, or answer span per line.") { model, input, batch, maxLength };
        command.SetAction(parse =>
        {
            using var device = Cli.OpenDevice(parse);
            string dir = parse.GetValue(model)!;
            using var loaded = LoadedModel.Load(device, dir); // float or int8
            var m = loaded.Model;
            string? path = parse.GetValue(input);
            if (path is not null && !File.Exists(path)) throw new IOException($"{path}: no such file");
            List<TaskExample> examples;
            using (var reader = path is null ? Console.In : new StreamReader(path))
                examples = TaskData.ReadPlain(reader, m.Task.Kind, path ?? "stdin");
            if (examples.Count == 0) throw new ArgumentException("no texts to predict");
            var featurizer = new Featurizer(BertTextEncoder.Load(dir), m.Task, Math.Min(parse.GetValue(maxLength), m.Config.MaxPositionEmbeddings));
            var features = examples.Select(e => featurizer.Make(e, labelled: false)).ToList();
            int printed = 0; // input lines answered so far: a blank input line gets a blank output line
            foreach (var p in loaded.Predict(featurizer, features, parse.GetValue(batch)))
            {
                for (printed++; printed < p.Example.Line; printed++) stdout.WriteLine();
                stdout.WriteLine(Format(m.Task, p));
            }
            return 0;
        });
        return command;
    }

    /// <summary>label TAB probability | value | word/TAG … | answer TAB score.</summary>
    public static string Format(TaskSpec task, Prediction p) => task.Kind switch
    {
        TaskKind.Regression => p.Value.ToString("G6", CultureInfo.InvariantCulture),
        TaskKind.TokenClassification => string.Join(" ", p.Example.Words!.Zip(p.Tags!, (w, t) => $"{w}/{t}")),
        TaskKind.QuestionAnswering => $"{p.Answer}\t{p.Score.ToString("F4", CultureInfo.InvariantCulture)}",
        _ => $"{task.Labels[p.Label]}\t{p.Probability.ToString("F4", CultureInfo.InvariantCulture)}",
    };
}
