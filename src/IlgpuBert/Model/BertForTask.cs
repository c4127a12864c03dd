// The fine-tuning heads of HF's modeling_bert.py on one BertModel body:
// - BertForSequenceClassification: dropout + `classifier` on the pooled features, cross-entropy
//   (one text or a pair), or one output with MSE (problem_type "regression", STS-B style);
// - BertForTokenClassification: dropout + `classifier` on every token's features, cross-entropy
//   with −100 on pieces that carry no label;
// - BertForQuestionAnswering: `qa_outputs` gives start and end logits per token, the loss is the
//   mean of the two cross-entropies.
// What the head reads is the pooling (Sun et al. 2019 "How to fine-tune BERT"; Kondratyuk &
// Straka 2019): `cls` is HF's (the pooler output for sequences, the last layer for tokens),
// `mean` averages the last layer over the real tokens, `concat-last4` puts the last four layers'
// outputs side by side, `scalar-mix` learns softmax weights over every layer's output.
// The task, its labels and the pooling live in config.json (architectures, id2label, label2id,
// problem_type as HF writes them; the pooling and the pair flag under ilgpu_bert_ keys HF ignores).
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

public enum TaskKind { Classification, PairClassification, Regression, TokenClassification, QuestionAnswering }

public enum Pooling { Cls, Mean, ConcatLast4, ScalarMix }

/// <summary>What a fine-tuned model predicts: the task, its label names (index = id) and the pooling.</summary>
public sealed record TaskSpec(TaskKind Kind, IReadOnlyList<string> Labels, Pooling Pooling = Pooling.Cls)
{
    public bool IsSequenceLevel => SequenceLevel(Kind);

    /// <summary>Whether a task predicts once per example (classification, pairs, regression) rather than per token.</summary>
    public static bool SequenceLevel(TaskKind kind) => kind is TaskKind.Classification or TaskKind.PairClassification or TaskKind.Regression;

    /// <summary>Outputs per example (sequence tasks) or per token: label count, 1 for regression, 2 for QA.</summary>
    public int Outputs => Kind switch { TaskKind.Regression => 1, TaskKind.QuestionAnswering => 2, _ => Labels.Count };

    public string Architecture => Kind switch
    {
        TaskKind.TokenClassification => "BertForTokenClassification",
        TaskKind.QuestionAnswering => "BertForQuestionAnswering",
        _ => "BertForSequenceClassification",
    };

    public static string Name(TaskKind k) => k switch
    {
        TaskKind.Classification => "classification",
        TaskKind.PairClassification => "pair-classification",
        TaskKind.Regression => "regression",
        TaskKind.TokenClassification => "token-classification",
        _ => "qa",
    };

    public static TaskKind ParseKind(string s) => s switch
    {
        "classification" => TaskKind.Classification,
        "pair-classification" => TaskKind.PairClassification,
        "regression" => TaskKind.Regression,
        "token-classification" => TaskKind.TokenClassification,
        "qa" => TaskKind.QuestionAnswering,
        _ => throw new ArgumentException($"unknown task \"{s}\" (classification, pair-classification, regression, token-classification, qa)"),
    };

    public static string Name(Pooling p) => p switch { Pooling.Cls => "cls", Pooling.Mean => "mean", Pooling.ConcatLast4 => "concat-last4", _ => "scalar-mix" };

    public static Pooling ParsePooling(string s) => s switch
    {
        "cls" => Pooling.Cls,
        "mean" => Pooling.Mean,
        "concat-last4" => Pooling.ConcatLast4,
        "scalar-mix" => Pooling.ScalarMix,
        _ => throw new ArgumentException($"unknown pooling \"{s}\" (cls, mean, concat-last4, scalar-mix)"),
    };

    public TaskSpec Validate()
    {
        if (Kind is TaskKind.Classification or TaskKind.PairClassification or TaskKind.TokenClassification && Labels.Count < 2)
            throw new ArgumentException($"a {Name(Kind)} task needs at least two labels, the data has {Labels.Count} ({string.Join(", ", Labels)})");
        if (Labels.Distinct().Count() != Labels.Count) throw new ArgumentException("label names must be distinct");
        if (Labels.Any(l => l.Length == 0)) throw new ArgumentException("label names must not be empty");
        if (Kind == TaskKind.TokenClassification && Labels.FirstOrDefault(l => l.Any(char.IsWhiteSpace)) is { } spaced)
            throw new ArgumentException($"tag \"{spaced}\" holds whitespace, which no CoNLL line can carry (it splits columns)");
        if (!IsSequenceLevel && Pooling == Pooling.Mean)
            throw new ArgumentException($"--pooling mean averages a sequence into one vector; a {Name(Kind)} task predicts per token (use cls, concat-last4 or scalar-mix)");
        return this;
    }

    /// <summary>The task written into a config's extra keys the way HF writes them.</summary>
    public BertConfig ApplyTo(BertConfig config)
    {
        var extra = (JsonObject)config.Extra.DeepClone();
        extra["architectures"] = new JsonArray(Architecture);
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        var names = Kind switch { TaskKind.Regression => ["LABEL_0"], TaskKind.QuestionAnswering => ["LABEL_0", "LABEL_1"], _ => Labels };
        for (int i = 0; i < names.Count; i++)
        {
            id2label[i.ToString()] = names[i];
            label2id[names[i]] = i;
        }
        extra["id2label"] = id2label;
        extra["label2id"] = label2id;
        if (IsSequenceLevel) extra["problem_type"] = Kind == TaskKind.Regression ? "regression" : "single_label_classification";
        else extra.Remove("problem_type");
        extra["ilgpu_bert_task"] = Name(Kind);
        extra["ilgpu_bert_pooling"] = Name(Pooling);
        return config with { Extra = extra };
    }

    /// <summary>The task a config describes, or null for a model with no task head (a pretrained one).</summary>
    public static TaskSpec? FromConfig(BertConfig config, string source = "config.json")
    {
        var x = config.Extra;
        try
        {
            string? arch = (x["architectures"] as JsonArray)?.FirstOrDefault()?.GetValue<string>();
            string? task = x["ilgpu_bert_task"]?.GetValue<string>();
            TaskKind kind;
            if (task is not null) kind = ParseKind(task);
            else if (arch == "BertForTokenClassification") kind = TaskKind.TokenClassification;
            else if (arch == "BertForQuestionAnswering") kind = TaskKind.QuestionAnswering;
            else if (arch == "BertForSequenceClassification")
                kind = x["problem_type"]?.GetValue<string>() == "regression" ? TaskKind.Regression : TaskKind.Classification;
            else return null;
            var labels = new List<string>();
            if (x["id2label"] is JsonObject id2label)
            {
                var byId = id2label.Select(kv => (Id: int.Parse(kv.Key), Name: kv.Value?.GetValue<string>() ?? "")).OrderBy(t => t.Id).ToList();
                if (byId.Select(t => t.Id).SequenceEqual(Enumerable.Range(0, byId.Count))) labels = byId.Select(t => t.Name).ToList();
                else throw new CheckpointException($"{source}: id2label ids must be 0..{byId.Count - 1}");
            }
            var pooling = x["ilgpu_bert_pooling"]?.GetValue<string>() is { } p ? ParsePooling(p) : Pooling.Cls;
            if (kind is TaskKind.Regression or TaskKind.QuestionAnswering) labels = []; // HF's placeholder LABEL_i names
            return new TaskSpec(kind, labels, pooling).Validate();
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or ArgumentException)
        {
            throw new CheckpointException($"{source}: invalid task description ({e.Message})");
        }
    }
}

/// <summary>One batch of a task: the encoder inputs and the labels the task's loss needs.</summary>
/// <param name="Labels">Class ids [B] (classification) or per-token tag ids [B·S] with −100 where none applies.</param>
/// <param name="Targets">Regression targets [B].</param>
/// <param name="StartPositions">QA answer start / end token positions [B].</param>
public sealed record TaskBatch(BertInputs Inputs, int[]? Labels = null, float[]? Targets = null, int[]? StartPositions = null, int[]? EndPositions = null)
{
    public bool HasLabels => Labels is not null || Targets is not null || StartPositions is not null;
}

/// <summary>What <see cref="BertForTask.Forward"/> returns; Vars live as long as the tape.</summary>
public sealed class TaskOutputs
{
    /// <summary>[B, C] for sequence tasks (C = 1 for regression), [B·S, C] for token classification, [B·S, 2] (start, end) for QA.</summary>
    public required Var Logits { get; init; }
    public required BertEncoderOutputs Encoder { get; init; }
    public IReadOnlyList<(Loss Loss, float Scale)> Losses { get; init; } = [];

    /// <summary>Sets the backward weight of the total loss (1/N for gradient accumulation, λ for a regulariser).</summary>
    public void SetLossWeight(float weight)
    {
        foreach (var (loss, scale) in Losses) loss.Weight = weight * scale;
    }

    public double? ReadLoss() => Losses.Count == 0 ? null : Losses.Sum(l => (double)l.Scale * l.Loss.Read());
}

public sealed class BertForTask : IDisposable
{
    public BertForTask(BertDevice device, BertConfig config, TaskSpec task)
    {
        Task = task.Validate();
        Config = task.ApplyTo(config.Validate());
        Device = device;
        Parameters = new BertParameters(device, Config);
        var p = Parameters;
        // HF's token-classification and QA models have no pooler (add_pooling_layer=False); a
        // sequence head only reads it with cls pooling.
        Bert = new BertModel(p, addPoolingLayer: task.IsSequenceLevel && task.Pooling == Pooling.Cls);
        if (task.Pooling == Pooling.ScalarMix)
        {
            ScalarMixWeights = p.Add("ilgpu_bert.scalar_mix.weights", false, Config.NumHiddenLayers + 1);
            ScalarMixGamma = p.Add("ilgpu_bert.scalar_mix.gamma", false, 1);
        }
        string head = task.Kind == TaskKind.QuestionAnswering ? "qa_outputs" : "classifier";
        HeadWeight = p.Add(head + ".weight", true, task.Outputs, FeatureSize);
        HeadBias = p.Add(head + ".bias", false, task.Outputs);
    }

    public TaskSpec Task { get; }
    public BertConfig Config { get; }
    public BertDevice Device { get; }
    public BertParameters Parameters { get; }
    public BertModel Bert { get; }
    public Var? ScalarMixWeights { get; }
    public Var? ScalarMixGamma { get; }
    public Var HeadWeight { get; }
    public Var HeadBias { get; }

    /// <summary>Layers concat-last4 concatenates: four, or every output a shallower model has (L + 1).</summary>
    public int ConcatLayers => Math.Min(4, Config.NumHiddenLayers + 1);

    public int FeatureSize => Task.Pooling == Pooling.ConcatLast4 ? ConcatLayers * Config.HiddenSize : Config.HiddenSize;

    /// <summary>Whether a parameter belongs to the head (or the layer mix) rather than to the pretrained body.</summary>
    public static bool IsHead(string name) => !name.StartsWith("bert.", StringComparison.Ordinal);

    public TaskOutputs Forward(Tape tape, TaskBatch batch, Dropouts dropouts, BertHooks? hooks = null)
    {
        var inputs = batch.Inputs;
        int b = inputs.Batch, s = inputs.SeqLen;
        var encoded = Bert.Forward(tape, inputs, dropouts, hooks: hooks);
        var states = encoded.HiddenStates;
        int[] clsRows = Enumerable.Range(0, b).Select(i => i * s).ToArray();

        // Token features [B·S, F], then per-example features [B, F] for sequence tasks.
        Var features = Task.Pooling switch
        {
            Pooling.ConcatLast4 => Ops.ConcatColumns(tape, states.Skip(states.Count - ConcatLayers).ToList()),
            Pooling.ScalarMix => Ops.ScalarMix(tape, states, ScalarMixWeights!, ScalarMixGamma!),
            _ => encoded.LastHiddenState,
        };
        if (Task.IsSequenceLevel)
        {
            features = Task.Pooling switch
            {
                Pooling.Cls => encoded.PoolerOutput!,
                Pooling.Mean => Ops.MixRows(tape, inputs.MeanPooling([.. Enumerable.Range(0, b)]), b, features),
                _ => Ops.GatherRows(tape, features, clsRows),
            };
        }
        if (Task.Kind != TaskKind.QuestionAnswering)
            features = Ops.Dropout(tape, features, dropouts.Hidden, dropouts.Key(HeadDropoutSite));
        var logits = (hooks?.Linear ?? Ops.Linear)(tape, features, HeadWeight, HeadBias, null);

        var losses = new List<(Loss, float)>();
        switch (Task.Kind)
        {
            case TaskKind.Regression when batch.Targets is not null:
                losses.Add((Ops.MeanSquaredError(tape, logits, batch.Targets), 1f));
                break;
            case TaskKind.Classification or TaskKind.PairClassification or TaskKind.TokenClassification when batch.Labels is not null:
                int expected = Task.IsSequenceLevel ? b : b * s;
                if (batch.Labels.Length != expected) throw new ArgumentException($"{batch.Labels.Length} labels for {expected} {(Task.IsSequenceLevel ? "examples" : "tokens")}");
                foreach (int l in batch.Labels)
                    if (l != -100 && (uint)l >= (uint)Task.Labels.Count) throw new ArgumentException($"label id {l} is outside [0, {Task.Labels.Count})");
                losses.Add((Ops.CrossEntropy(tape, logits, tape.Own(new DeviceInts(Device, batch.Labels))), 1f));
                break;
            case TaskKind.QuestionAnswering when batch.StartPositions is not null && batch.EndPositions is not null:
                foreach (var (name, positions, column) in new[] { ("start", batch.StartPositions, 0), ("end", batch.EndPositions, 1) })
                {
                    if (positions.Length != b || positions.Any(p => (uint)p >= (uint)s)) throw new ArgumentException($"{name} positions must be {b} values in [0, {s})");
                    var side = Ops.SliceColumns(tape, logits, column, 1, [b, s]);
                    losses.Add((Ops.CrossEntropy(tape, side, tape.Own(new DeviceInts(Device, positions))), 0.5f));
                }
                break;
        }
        var result = new TaskOutputs { Logits = logits, Encoder = encoded, Losses = losses };
        result.SetLossWeight(1f); // each term's backward weight is its share of the total (½ each for QA)
        return result;
    }

    /// <summary>Dropout site of the head, after the encoder's 1 + 3L sites.</summary>
    private int HeadDropoutSite => 1 + 3 * Config.NumHiddenLayers;

    public void ZeroGrad()
    {
        foreach (var p in Parameters.All) p.Var.ZeroGrad();
    }

    public void Dispose() => Parameters.Dispose();

    /// <summary>Loads a fine-tuned model folder (config.json with its task, model.safetensors).</summary>
    public static BertForTask Load(BertDevice device, string dir)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException($"{dir}: no such model folder");
        string configPath = Path.Combine(dir, BertFolder.ConfigFile);
        var config = BertConfig.Read(configPath);
        var task = TaskSpec.FromConfig(config, configPath)
            ?? throw new CheckpointException($"{configPath}: not a fine-tuned model (architectures names no BertFor…Classification/QuestionAnswering head); fine-tune it first");
        var model = new BertForTask(device, config, task);
        try
        {
            var (initialized, _) = BertFolder.LoadInto(model.Parameters, dir);
            if (initialized.Count > 0) throw new CheckpointException($"{BertFolder.WeightsPath(dir)}: missing {string.Join(", ", initialized)}");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A new task model whose body comes from <paramref name="dir"/> (a pretrained model, or with
    /// <paramref name="bodyOnly"/> a model fine-tuned on another task) and whose head is initialised.
    /// </summary>
    public static BertForTask FromPretrained(BertDevice device, string dir, TaskSpec task, int seed, TextWriter? log = null, bool bodyOnly = false)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException($"{dir}: no such model folder");
        var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
        var model = new BertForTask(device, config, task);
        try
        {
            var (initialized, unused) = BertFolder.LoadInto(model.Parameters, dir, seed, bodyOnly ? n => !IsHead(n) : null);
            if (initialized.Count > 0) log?.WriteLine($"initialised {string.Join(", ", initialized)} (not in {dir})");
            if (unused.Count > 0) log?.WriteLine($"not used from {dir}: {string.Join(", ", unused.Take(6))}{(unused.Count > 6 ? $" and {unused.Count - 6} more" : "")}");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Writes config.json (with the task), model.safetensors and the vocabulary, each atomically.</summary>
    public void Save(string dir, string? vocabSource = null) => BertFolder.Save(Config, Parameters, dir, vocabSource);
}
