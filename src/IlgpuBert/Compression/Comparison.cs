// The trade-off table of BERTology §6 for the user's own models: for each model folder (the
// original and its distilled, quantized and pruned versions) the parameter count, the size of
// model.safetensors, the latency of one example (batch 1, median), the throughput at a batch size,
// and the task metric on the same evaluation examples, all measured in one run on one device.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Compression;

/// <summary>A fine-tuned model ready for inference: float, or int8 with the hooks that run it so.</summary>
public sealed class LoadedModel : IDisposable
{
    private readonly IDisposable owner;

    private LoadedModel(BertForTask model, BertHooks? hooks, IDisposable owner, string kind)
    {
        Model = model;
        Hooks = hooks;
        this.owner = owner;
        Kind = kind;
    }

    public BertForTask Model { get; }
    public BertHooks? Hooks { get; }
    /// <summary>"float32" or "int8".</summary>
    public string Kind { get; }

    public static LoadedModel Load(BertDevice device, string dir)
    {
        var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
        if (Int8Model.IsQuantized(config))
        {
            var int8 = Int8Model.Load(device, dir);
            return new LoadedModel(int8.Model, int8.Hooks, int8, "int8");
        }
        var model = BertForTask.Load(device, dir);
        return new LoadedModel(model, new PackedLinears().Hooks, model, "float32"); // inference only: weights packed once
    }

    public List<Prediction> Predict(Featurizer featurizer, IReadOnlyList<Feature> features, int batchSize) =>
        Predictor.Predict(Model, featurizer, features, batchSize, Hooks);

    public void Dispose() => owner.Dispose();
}

/// <summary>One row of the comparison table.</summary>
public sealed record ComparisonRow(string Model, string Kind, int Layers, int Heads, long Parameters, long FileBytes,
    double LatencyMs, double ExamplesPerSecond, string Metric, double Value);

public static class Comparison
{
    /// <summary>The metric a task is judged by.</summary>
    public static string MainMetric(TaskKind kind) => kind switch
    {
        TaskKind.Regression => "pearson",
        TaskKind.TokenClassification => "entity_f1",
        TaskKind.QuestionAnswering => "f1",
        _ => "accuracy",
    };

    /// <param name="examples">Labelled evaluation examples, the same for every model.</param>
    /// <param name="latencyExamples">How many single examples the latency median is taken over.</param>
    public static List<ComparisonRow> Run(BertDevice device, IReadOnlyList<string> dirs, IReadOnlyList<TaskExample> examples, int batchSize,
        int maxLength, int latencyExamples, TextWriter log)
    {
        if (examples.Count == 0) throw new ArgumentException("compare needs at least one evaluation example");
        var rows = new List<ComparisonRow>();
        foreach (var dir in dirs)
        {
            using var m = LoadedModel.Load(device, dir);
            var featurizer = new Featurizer(BertTextEncoder.Load(dir), m.Model.Task, Math.Min(maxLength, m.Model.Config.MaxPositionEmbeddings));
            var features = examples.Select(e => featurizer.Make(e, labelled: true)).ToList();

            m.Predict(featurizer, features.Take(batchSize).ToList(), batchSize); // warm-up: kernels compiled, buffers pooled
            var clock = Stopwatch.StartNew();
            var predictions = m.Predict(featurizer, features, batchSize);
            double throughput = features.Count / clock.Elapsed.TotalSeconds;

            var single = new List<double>();
            foreach (var f in features.Take(Math.Max(1, latencyExamples)))
            {
                clock.Restart();
                m.Predict(featurizer, [f], 1);
                single.Add(clock.Elapsed.TotalMilliseconds);
            }
            single.Sort();
            double latency = single[single.Count / 2];

            string metric = MainMetric(m.Model.Task.Kind);
            var metrics = Predictor.Metrics(m.Model.Task, predictions);
            double value = metrics[metric]?.GetValue<double>() ?? double.NaN;
            var c = m.Model.Config;
            int heads = m.Model.Bert.Layers.Sum(l => l.Heads);
            long parameters = m.Model.Parameters.All.Sum(p => p.Var.Length);
            long bytes = new FileInfo(Path.Combine(dir, BertFolder.WeightsFile)).Length;
            var row = new ComparisonRow(dir, m.Kind, c.NumHiddenLayers, heads, parameters, bytes, latency, throughput, metric, value);
            log.WriteLine($"{dir}: {metric} {value:F4}, {latency:F2} ms per example, {throughput:F0} examples/s");
            rows.Add(row);
        }
        return rows;
    }

    /// <summary>A Markdown table; sizes, speed and metric also relative to the first model.</summary>
    public static string Markdown(IReadOnlyList<ComparisonRow> rows, string device, int batchSize, int examples)
    {
        string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        var first = rows[0];
        var sb = new StringBuilder();
        sb.AppendLine($"Device: {device}; {examples} evaluation examples; latency = median of batch-1 passes, throughput at batch {batchSize}.");
        sb.AppendLine();
        sb.AppendLine($"| model | weights | layers | heads | parameters | file MB | size × | latency ms | speed-up | examples/s | {first.Metric} | Δ {first.Metric} |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
            sb.AppendLine($"| {r.Model} | {r.Kind} | {r.Layers} | {r.Heads} | {r.Parameters:N0} | {F(r.FileBytes / 1e6, "F2")} | {F((double)first.FileBytes / r.FileBytes, "F2")} "
                + $"| {F(r.LatencyMs, "F2")} | {F(first.LatencyMs / r.LatencyMs, "F2")} | {F(r.ExamplesPerSecond, "F0")} | {F(r.Value, "F4")} | {F(r.Value - first.Value, "+0.0000;-0.0000;0.0000")} |");
        return sb.ToString();
    }

    public static string Csv(IReadOnlyList<ComparisonRow> rows)
    {
        string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        var sb = new StringBuilder("model,weights,layers,heads,parameters,file_bytes,latency_ms,examples_per_s,metric,value\n");
        foreach (var r in rows)
            sb.Append($"\"{r.Model.Replace("\"", "\"\"")}\",{r.Kind},{r.Layers},{r.Heads},{r.Parameters},{r.FileBytes},{F(r.LatencyMs)},{F(r.ExamplesPerSecond)},{r.Metric},{F(r.Value)}\n");
        return sb.ToString();
    }
}
