// The fine-tuning loop: a task head on a pretrained (or intermediate-task) encoder, AdamW with
// warmup and linear decay, evaluation after every epoch, metrics.csv and eval.json, the model saved
// after every epoch (files written atomically) and a clean stop on Ctrl-C. The fine-tuning
// improvements of BERTology's section 5.3 act inside one training step:
// - freezing and layer-wise learning-rate decay choose which parameters the optimizer sees and at
//   what rate (group 0 = embeddings, 1..L = encoder layers, L + 1 = pooler, layer mix and head);
// - Mixout maps every encoder Linear weight through Ops.Mixout against a copy of its pretrained value;
// - FreeLB runs K forward/backward passes with a perturbation δ on the embedding output,
//   accumulating the parameter gradients of all K (each loss weighted 1/K) and moving δ by an
//   L2-normalised ascent step projected into the ε-ball after each;
// - SMART adds λ·symKL(f(x + δ), f(x)) with δ from one ∞-norm ascent step from small noise, the
//   clean predictions held fixed and the parameters frozen while δ is found.
// Dropout masks are the same in every pass of one step, so the perturbation is the only difference.
// Data-parallel over a ProcessGroup: each rank takes its share of every batch (contiguous, sizes
// differing by at most one), its gradient weighted by share / batch before the group sums them, so
// the step follows the whole batch's mean loss; dropout and perturbations differ by rank, Mixout's
// weight mask does not. Rank 0 evaluates and writes.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Distributed;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;
using IlgpuBert.Text;
using IlgpuBert.Training;

namespace IlgpuBert.FineTuning;

/// <summary>One row of a fine-tuning run's metrics.csv.</summary>
public sealed record FineTuneStep(int Step, int Epoch, double Loss, double Lr, double GradNorm, double ExamplesPerSecond, double ElapsedSeconds);

/// <param name="group">The ranks training together (default: this process alone).</param>
public sealed class FineTuner(BertDevice device, TextWriter log, ProcessGroup? group = null)
{
    private readonly ProcessGroup group = group ?? ProcessGroup.Single();

    public const string EvalFile = BertFolder.EvalFile, MetricsFile = "metrics.csv";

    /// <summary>Set from another thread (Ctrl-C): the loop saves the model after the current step and returns.</summary>
    public volatile bool StopRequested;

    /// <summary>
    /// Another training objective on the same loop (distillation): the model to train, with its task
    /// fixed; parameters trained beside it but not saved with it; and the step (forward and backward
    /// of one batch, returning the loss), which replaces <see cref="TrainStep"/>.
    /// </summary>
    public sealed record CustomTraining(Func<BertForTask> Model, Func<IEnumerable<Parameter>> Extra, Func<BertForTask, TaskBatch, int, double> Step);

    /// <summary>Fine-tunes per <paramref name="o"/> into <paramref name="outDir"/>; returns the final evaluation (eval.json).</summary>
    public JsonObject Run(FineTuneOptions o, string outDir, CustomTraining? custom = null)
    {
        o.Validate();
        using var outputLock = group.IsRoot ? OutputLock.Acquire(outDir) : null;
        if (outputLock is { Leftovers.Count: > 0 } held)
            log.WriteLine($"removed the unfinished writes of an interrupted run: {string.Join(", ", held.Leftovers)}");
        log.WriteLine($"device: {device.Spec} ({device.Name})");
        string source = o.InitFrom ?? o.Model!;
        var encoder = BertTextEncoder.Load(source);
        string vocabPath = Path.Combine(source, BertFolder.VocabFile);

        List<TaskExample> train, eval;
        if (o.Train is null)
        {
            (train, eval) = DefaultTask.Build();
            log.WriteLine($"default task: {train.Count} training and {eval.Count} held-out documentation sentences, labelled with their namespace family");
        }
        else
        {
            train = TaskData.Read(o.Train, o.Task, o.Columns);
            eval = o.Eval is null ? [] : TaskData.Read(o.Eval, o.Task, o.Columns);
        }
        var spec = new TaskSpec(o.Task, Labels(o.Task, train), o.HeadPooling);
        using var model = custom?.Model() ?? BertForTask.FromPretrained(device, source, spec, o.Seed, log, bodyOnly: o.InitFrom is not null);
        var unknown = spec.Labels.Except(model.Task.Labels).ToList();
        if (unknown.Count > 0) throw new ArgumentException($"the model's labels ({string.Join(", ", model.Task.Labels)}) do not include {string.Join(", ", unknown)} from the training data");
        var featurizer = new Featurizer(encoder, model.Task, Math.Min(o.MaxLength, model.Config.MaxPositionEmbeddings));
        var trainFeatures = train.Select(e => featurizer.Make(e, labelled: true)).ToList();
        var evalFeatures = eval.Select(e => featurizer.Make(e, labelled: true)).ToList();
        int cut = trainFeatures.Count(f => f.AnswerTruncated);
        if (cut > 0) log.WriteLine($"note: {cut} training answers lie beyond --max-length {o.MaxLength}; they are trained to point at [CLS]");

        float peak = o.LearningRate ?? FineTuneOptions.DefaultLearningRate(model.Config.HiddenSize);
        var setup = Setup(model, o);
        foreach (var extra in custom?.Extra() ?? [])
        {
            setup.Trainable.Add(extra);
            setup.LrScales.Add(1f);
        }
        using var optimizer = new AdamWOptimizer(device, setup.Trainable, new AdamWSettings(WeightDecay: o.WeightDecay), setup.LrScales);
        using var mixout = new MixoutTargets(model, o.Mixout);
        using var qat = o.Qat is null ? null : new QuantizationAware();
        if (qat is not null) log.WriteLine("quantization-aware training: every Linear layer computes with int8 fake-quantized weights (per channel) and inputs (per tensor, EMA of max |x|)");
        using var sparsity = MagnitudeMasks.For(model.Bert, model.Config);
        if (sparsity is not null) log.WriteLine($"magnitude-pruned model: {sparsity.Zeros} zero weights kept at zero through training");
        int stepsPerEpoch = (trainFeatures.Count + o.BatchSize - 1) / o.BatchSize, total = stepsPerEpoch * o.Epochs;
        int warmup = (int)Math.Round(total * o.WarmupRatio);
        log.WriteLine($"fine-tuning {TaskSpec.Name(o.Task)} ({model.Task.Outputs} outputs, pooling {TaskSpec.Name(o.HeadPooling)}) on {trainFeatures.Count} examples: "
            + $"{o.Epochs} epochs × {stepsPerEpoch} steps at peak lr {peak:G3}, {setup.Trainable.Count} of {model.Parameters.All.Count} tensors trained");
        if (group.Size > 1) log.WriteLine($"data-parallel over {group.Size} ranks ({group.Backend}): about {o.BatchSize / group.Size} examples per rank and step");
        group.Broadcast(setup.Trainable); // every rank starts from rank 0's weights (a new head, the projections)
        if (group.IsRoot) Directory.CreateDirectory(outDir);

        var steps = new List<FineTuneStep>();
        var epochs = new JsonArray();
        JsonObject? last = null;
        var clock = Stopwatch.StartNew();
        bool stopped = false;
        int step = 0, reportEvery = Math.Max(1, total / 20);
        var baselineLabels = BaselineLabels(o.Task, train);
        for (int epoch = 1; epoch <= o.Epochs; epoch++)
        {
            var order = Enumerable.Range(0, trainFeatures.Count).ToArray();
            new Random(o.Seed * 7919 + epoch).Shuffle(order);
            for (int at = 0; at < order.Length; at += o.BatchSize)
            {
                step++;
                var stepClock = Stopwatch.StartNew();
                var chunk = order.Skip(at).Take(o.BatchSize).Select(i => trainFeatures[i]).ToList();
                int from = chunk.Count * group.Rank / group.Size, to = chunk.Count * (group.Rank + 1) / group.Size;
                double share = (to - from) / (double)chunk.Count, loss = 0;
                if (to > from)
                {
                    var batch = featurizer.Collate(chunk.GetRange(from, to - from), labelled: true);
                    loss = custom is null ? TrainStep(model, batch, o, step, mixout, qat) : custom.Step(model, batch, step);
                }
                else
                    foreach (var p in setup.Trainable) device.Kernels.Elementwise.Zero(p.Var.EnsureGrad().View); // a batch smaller than the group
                group.AllReduceGradients(setup.Trainable, (float)share);
                Span<double> sums = [share * loss];
                group.AllReduceSum(sums);
                loss = sums[0];
                if (!double.IsFinite(loss))
                    throw new NonFiniteLossException($"the loss became {loss} at step {step}; stopping. Try a lower --lr.");
                float gradNorm = optimizer.GradNorm();
                if (!float.IsFinite(gradNorm))
                    throw new NonFiniteLossException($"the gradient norm became {gradNorm} at step {step}; stopping before it reaches the weights. Try a lower --lr.");
                float lr = LinearSchedule.At(step, peak, warmup, total);
                optimizer.Update(lr);
                sparsity?.Apply();
                var row = new FineTuneStep(step, epoch, loss, lr, gradNorm, chunk.Count / stepClock.Elapsed.TotalSeconds, clock.Elapsed.TotalSeconds);
                steps.Add(row);
                if (step % reportEvery == 0 || step == total)
                {
                    double remaining = row.ElapsedSeconds / step * (total - step);
                    log.WriteLine($"epoch {epoch}/{o.Epochs} step {step}/{total}  loss {loss:F4}  lr {lr:E2}  {row.ExamplesPerSecond:F0} examples/s  ETA {TimeSpan.FromSeconds(remaining):mm\\:ss}");
                }
                if (stopped = group.Any(StopRequested)) break; // any rank interrupted: all stop after this step
            }
            group.VerifyIdentical(setup.Trainable, $"epoch {epoch}");
            if (evalFeatures.Count > 0 && group.IsRoot)
            {
                last = Predictor.Metrics(model.Task, Predictor.Predict(model, featurizer, evalFeatures, o.BatchSize, qat?.Hooks(training: false)), baselineLabels);
                var summary = new JsonObject { ["epoch"] = epoch, ["train_loss"] = steps.Where(s => s.Epoch == epoch).Average(s => s.Loss) };
                foreach (var (k, v) in last) if (v is JsonValue value && value.TryGetValue(out double _)) summary[k] = v.DeepClone();
                epochs.Add(summary);
                log.WriteLine($"epoch {epoch}: {Describe(last)}");
            }
            if (group.IsRoot) Save(model, outDir, vocabPath, steps, last, epochs, o, qat);
            stopped = stopped || group.Any(StopRequested); // decided together: a rank that stopped alone would wait forever
            if (stopped)
            {
                log.WriteLine($"interrupted after step {step}: saved the model so far in {outDir}");
                break;
            }
        }
        log.WriteLine($"wrote {outDir}: model, {MetricsFile}{(last is null ? "" : $", {EvalFile}")}");
        return last ?? new JsonObject();
    }

    /// <summary>The dropout seed of this rank: --seed on rank 0 (one process trains as before), another stream on each other rank.</summary>
    public ulong DropoutSeed(int seed) => (ulong)seed ^ ((ulong)group.Rank * 0x9E3779B97F4A7C15UL);

    /// <summary>
    /// A seed for FreeLB's and SMART's noise, fixed by --seed, step, purpose and rank (not
    /// HashCode.Combine, which is seeded anew in every process and made them unrepeatable).
    /// </summary>
    private int NoiseSeed(int seed, int step, int purpose) => (int)((DropoutSeed(seed) * 1000003UL + (ulong)step * 7919UL + (ulong)purpose) % int.MaxValue);

    /// <summary>One sentence of the metrics that matter for the task.</summary>
    public static string Describe(JsonObject m)
    {
        string F(string key) => m[key] is { } v ? $"{key} {v.GetValue<double>():F4}" : "";
        string[] keys = m["task"]?.GetValue<string>() switch
        {
            "regression" => ["pearson", "spearman", "mse", "mean_baseline_mse"],
            "token-classification" => ["entity_f1", "entity_precision", "entity_recall", "accuracy", "majority_baseline"],
            "qa" => ["exact_match", "f1"],
            _ => ["accuracy", "macro_f1", "mcc", "majority_baseline"],
        };
        return string.Join("  ", keys.Select(F).Where(s => s.Length > 0));
    }

    private static List<string> Labels(TaskKind kind, List<TaskExample> train) => kind switch
    {
        TaskKind.Regression or TaskKind.QuestionAnswering => [],
        TaskKind.TokenClassification => train.SelectMany(e => e.Tags!).Distinct().Order(StringComparer.Ordinal).ToList(),
        _ => train.Select(e => e.Label!).Distinct().Order(StringComparer.Ordinal).ToList(),
    };

    private static IEnumerable<string>? BaselineLabels(TaskKind kind, List<TaskExample> train) => kind switch
    {
        TaskKind.TokenClassification => train.SelectMany(e => e.Tags!).ToList(),
        TaskKind.Classification or TaskKind.PairClassification => train.Select(e => e.Label!).ToList(),
        _ => null,
    };

    /// <summary>Which parameters train (freezing) and at which learning-rate multiple (layer-wise decay).</summary>
    public sealed record TrainingSetup(List<Parameter> Trainable, List<float> LrScales);

    /// <summary>0 = embeddings, 1..L = encoder layer i − 1, L + 1 = pooler, layer mix and head.</summary>
    public static int Group(string name, int layers)
    {
        if (name.StartsWith("bert.embeddings.", StringComparison.Ordinal)) return 0;
        const string prefix = "bert.encoder.layer.";
        if (name.StartsWith(prefix, StringComparison.Ordinal))
            return int.Parse(name[prefix.Length..name.IndexOf('.', prefix.Length)], CultureInfo.InvariantCulture) + 1;
        return layers + 1;
    }

    public static TrainingSetup Setup(BertForTask model, FineTuneOptions o)
    {
        int layers = model.Config.NumHiddenLayers;
        if (o.FreezeLayers > layers) throw new ArgumentException($"--freeze-layers {o.FreezeLayers}: the model has {layers} layers");
        var trainable = new List<Parameter>();
        var scales = new List<float>();
        foreach (var p in model.Parameters.All)
        {
            int group = Group(p.Var.Name!, layers);
            bool frozen = (group == 0 && o.FreezeEmbeddings) || (group >= 1 && group <= o.FreezeLayers);
            p.Var.RequiresGrad = !frozen;
            if (frozen) continue;
            trainable.Add(p);
            scales.Add((float)Math.Pow(o.LayerLrDecay, layers + 1 - group));
        }
        return new TrainingSetup(trainable, scales);
    }

    /// <summary>
    /// One step's forward and backward passes (optimizer excluded): plain, FreeLB or SMART, with
    /// Mixout when enabled. Gradients are left in the parameters; returns the loss it optimised.
    /// </summary>
    public double TrainStep(BertForTask model, TaskBatch batch, FineTuneOptions o, int step, MixoutTargets? mixout = null, QuantizationAware? qat = null)
    {
        model.ZeroGrad();
        var dropouts = Dropouts.Training(model.Config, DropoutSeed(o.Seed), (uint)step);
        LinearLayer? mixed = mixout is { Active: true } ? (t, x, w, b, act) => Ops.Linear(t, x, mixout.Apply(t, w, (ulong)o.Seed, (uint)step), b, act) : null;
        var linear = qat is null ? mixed : qat.Hooks(training: true, mixed).Linear;
        BertHooks Hooks(Tape tape, Var? delta) => new()
        {
            Linear = linear,
            EmbeddingOutput = delta is null ? null : h => Ops.Add(tape, h, delta),
        };
        if (o.FreeLbSteps > 0) return FreeLb(model, batch, o, dropouts, Hooks, step);

        double loss;
        float[] clean;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, batch, dropouts, Hooks(tape, null));
            loss = outputs.ReadLoss() ?? throw new ArgumentException("the batch has no labels");
            clean = o.SmartWeight > 0 ? outputs.Logits.Value.ToHost() : [];
            tape.Backward();
        }
        if (o.SmartWeight > 0) loss += o.SmartWeight * Smart(model, batch, o, dropouts, Hooks, clean, step);
        return loss;
    }

    private double FreeLb(BertForTask model, TaskBatch batch, FineTuneOptions o, Dropouts dropouts, Func<Tape, Var?, BertHooks> hooks, int step)
    {
        var inputs = batch.Inputs;
        int h = model.Config.EmbeddingSize; // the embedding layer's width (ALBERT's is narrower)
        // δ₀ ~ U(−ε, ε)/√(tokens·H) on the real tokens of each example (Zhu et al. 2020, Alg. 1).
        var rng = new Random(NoiseSeed(o.Seed, step, 0xF4EE));
        var delta = new float[inputs.Batch * inputs.SeqLen * h];
        float init = o.FreeLbEps > 0 ? o.FreeLbEps : o.FreeLbLr;
        for (int b = 0; b < inputs.Batch; b++)
        {
            int tokens = Enumerable.Range(0, inputs.SeqLen).Sum(t => inputs.AttentionMask[b * inputs.SeqLen + t]);
            float scale = init / MathF.Sqrt(tokens * h);
            for (int t = 0; t < inputs.SeqLen; t++)
                if (inputs.AttentionMask[b * inputs.SeqLen + t] != 0)
                    for (int j = 0; j < h; j++) delta[(b * inputs.SeqLen + t) * h + j] = (float)(rng.NextDouble() * 2 - 1) * scale;
        }
        using var d = new Var(Tensor.FromHost(device, delta, inputs.Batch, inputs.SeqLen, h), requiresGrad: true, name: "freelb.delta");
        double loss = 0;
        for (int k = 0; k < o.FreeLbSteps; k++)
        {
            using (var tape = new Tape())
            {
                var outputs = model.Forward(tape, batch, dropouts, hooks(tape, d));
                outputs.SetLossWeight(1f / o.FreeLbSteps);
                loss += outputs.ReadLoss()!.Value / o.FreeLbSteps;
                tape.Backward();
            }
            if (k == o.FreeLbSteps - 1) break;
            // δ ← Π_ε(δ + α·g/‖g‖), norms per example.
            var g = d.EnsureGrad().ToHost();
            d.ZeroGrad();
            int per = inputs.SeqLen * h;
            for (int b = 0; b < inputs.Batch; b++)
            {
                double gn = Norm(g, b * per, per);
                for (int i = b * per; i < (b + 1) * per; i++) delta[i] += (float)(o.FreeLbLr * g[i] / (gn + 1e-12));
                double dn = Norm(delta, b * per, per);
                if (o.FreeLbEps > 0 && dn > o.FreeLbEps)
                    for (int i = b * per; i < (b + 1) * per; i++) delta[i] = (float)(delta[i] * o.FreeLbEps / dn);
            }
            d.Value.CopyFrom(delta);
        }
        LastFreeLbDelta = delta;
        return loss;
    }

    /// <summary>The perturbation FreeLB used in its last pass of the last step (for tests and inspection).</summary>
    public float[]? LastFreeLbDelta { get; private set; }

    private static double Norm(float[] v, int offset, int count)
    {
        double s = 0;
        for (int i = offset; i < offset + count; i++) s += (double)v[i] * v[i];
        return Math.Sqrt(s);
    }

    private double Smart(BertForTask model, TaskBatch batch, FineTuneOptions o, Dropouts dropouts, Func<Tape, Var?, BertHooks> hooks, float[] clean, int step)
    {
        var inputs = batch.Inputs;
        int h = model.Config.EmbeddingSize, per = inputs.SeqLen * h;
        var rng = new Random(NoiseSeed(o.Seed, step, 0x5A27));
        var delta = new float[inputs.Batch * per];
        for (int i = 0; i < delta.Length; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            delta[i] = (float)(o.SmartNoise * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        using var d = new Var(Tensor.FromHost(device, delta, inputs.Batch, inputs.SeqLen, h), requiresGrad: true, name: "smart.delta");
        var unlabelled = new TaskBatch(inputs); // the perturbed passes add only the smoothness term, not the task loss again

        // Ascent on δ with the parameters held (their gradients untouched).
        var trainable = model.Parameters.All.Where(p => p.Var.RequiresGrad).ToList();
        foreach (var p in trainable) p.Var.RequiresGrad = false;
        try
        {
            using var tape = new Tape();
            var perturbed = model.Forward(tape, unlabelled, dropouts, hooks(tape, d));
            SmartLoss(tape, model, perturbed.Logits, clean, inputs);
            tape.Backward();
        }
        finally
        {
            foreach (var p in trainable) p.Var.RequiresGrad = true;
        }
        var g = d.EnsureGrad().ToHost();
        d.ReleaseGrad();
        for (int b = 0; b < inputs.Batch; b++)
        {
            double max = 0;
            for (int i = b * per; i < (b + 1) * per; i++) max = Math.Max(max, Math.Abs(g[i]));
            for (int i = b * per; i < (b + 1) * per; i++)
                delta[i] = Math.Clamp(delta[i] + (float)(o.SmartStep * g[i] / (max + 1e-12)), -o.SmartEps, o.SmartEps);
        }
        d.Value.CopyFrom(delta);
        d.RequiresGrad = false;

        using var adversarial = new Tape();
        var outputs = model.Forward(adversarial, unlabelled, dropouts, hooks(adversarial, d));
        var terms = SmartLoss(adversarial, model, outputs.Logits, clean, inputs);
        double value = 0;
        foreach (var (loss, scale) in terms)
        {
            loss.Weight = o.SmartWeight * scale;
            value += scale * loss.Read();
        }
        adversarial.Backward();
        return value;
    }

    /// <summary>SMART's divergence on the head's outputs: per example for sequence tasks, per token for tagging, over start and end positions for QA.</summary>
    private static List<(Loss, float)> SmartLoss(Tape tape, BertForTask model, Var logits, float[] clean, BertInputs inputs)
    {
        if (model.Task.Kind != TaskKind.QuestionAnswering) return [(Ops.SymmetricKl(tape, logits, clean), 1f)];
        int b = inputs.Batch, s = inputs.SeqLen;
        var result = new List<(Loss, float)>();
        for (int column = 0; column < 2; column++)
        {
            var side = Ops.SliceColumns(tape, logits, column, 1, [b, s]);
            var reference = Enumerable.Range(0, b * s).Select(i => clean[i * 2 + column]).ToArray();
            result.Add((Ops.SymmetricKl(tape, side, reference), 0.5f));
        }
        return result;
    }

    private static void Save(BertForTask model, string outDir, string vocabPath, List<FineTuneStep> steps, JsonObject? eval, JsonArray epochs, FineTuneOptions o, QuantizationAware? qat)
    {
        model.Save(outDir, vocabPath);
        // The learned ranges belong to this run's weights: a model started from a QAT folder
        // (--init-from) and fine-tuned without --qat must not carry the old ranges to `quantize`.
        if (qat is not null || model.Config.Extra.ContainsKey(QuantizationAware.ConfigKey))
        {
            var extra = (JsonObject)model.Config.Extra.DeepClone();
            if (qat is null) extra.Remove(QuantizationAware.ConfigKey);
            else extra[QuantizationAware.ConfigKey] = qat.ToConfig(model.Parameters);
            (model.Config with { Extra = extra }).Write(Path.Combine(outDir, BertFolder.ConfigFile));
        }
        string tokenizerConfig = Path.Combine(Path.GetDirectoryName(vocabPath)!, "tokenizer_config.json");
        if (File.Exists(tokenizerConfig)) AtomicFile.WriteText(Path.Combine(outDir, "tokenizer_config.json"), File.ReadAllText(tokenizerConfig));
        var sb = new StringBuilder("step,epoch,loss,lr,grad_norm,examples_per_s,elapsed_s\n");
        string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        foreach (var s in steps) sb.Append($"{s.Step},{s.Epoch},{F(s.Loss)},{F(s.Lr)},{F(s.GradNorm)},{F(s.ExamplesPerSecond)},{F(s.ElapsedSeconds)}\n");
        AtomicFile.WriteText(Path.Combine(outDir, MetricsFile), sb.ToString());
        if (eval is null) return;
        var json = (JsonObject)eval.DeepClone();
        json["epochs"] = epochs.DeepClone();
        json["options"] = JsonSerializer.SerializeToNode(o, PretrainingOptions.Json);
        AtomicFile.WriteText(Path.Combine(outDir, EvalFile), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}

/// <summary>
/// Mixout's targets: a device copy of every trainable encoder Linear weight as it was before
/// fine-tuning, and the tensor id each one's mask is drawn with.
/// </summary>
public sealed class MixoutTargets : IDisposable
{
    private readonly Dictionary<Var, (Tensor Pretrained, uint Id)> targets = new();

    public MixoutTargets(BertForTask model, float p)
    {
        P = p;
        if (p == 0f) return;
        uint id = 1_000_000;
        foreach (var w in model.Bert.LinearWeights.Where(w => w.RequiresGrad))
        {
            var copy = Tensor.FromHost(w.Device, w.Value.ToHost(), w.Shape);
            targets[w] = (copy, id++);
        }
    }

    public float P { get; }
    public bool Active => P > 0f && targets.Count > 0;

    public Var Apply(Tape tape, Var w, ulong seed, uint step) =>
        targets.TryGetValue(w, out var t) ? Ops.Mixout(tape, w, t.Pretrained, P, new DropoutKey(seed, step, t.Id)) : w;

    public void Dispose()
    {
        foreach (var (t, _) in targets.Values) t.Dispose();
        targets.Clear();
    }
}
