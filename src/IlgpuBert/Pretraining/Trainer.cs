// The pretraining loop: MLM (logits only at masked positions) plus the chosen sentence objective
// (or ELECTRA: a generator's MLM plus the discriminator's replaced-token detection, see Electra.cs),
// AdamW with warmup and linear decay, global-norm clipping, gradient accumulation, evaluation on
// the held-out split, metrics.csv, a loss-curve PNG, checkpoints that resume bit for bit, a clean
// stop on Ctrl-C and a loud stop on a NaN or infinite loss. Data-parallel over a ProcessGroup:
// each of N ranks runs --grad-accum / N of a step's micro-batches, the same ones (data, masks,
// dropout) a single process would run, and the group sums the gradients; so N ranks train exactly
// the model one process trains with the same --grad-accum, up to the order of float sums.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Distributed;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;
using IlgpuBert.Training;

namespace IlgpuBert.Pretraining;

/// <summary>One row of metrics.csv.</summary>
public sealed record StepMetrics(int Step, double Loss, double MlmLoss, double SentenceLoss, double Lr, double GradNorm,
    double TokensPerSecond, double ElapsedSeconds, double? EvalMlmAccuracy = null, double? EvalPerplexity = null)
{
    /// <summary>Each auxiliary head's loss (part of <see cref="Loss"/>), by head name.</summary>
    public IReadOnlyDictionary<string, double> AuxLosses { get; init; } = new Dictionary<string, double>();

    /// <summary>
    /// ELECTRA: the share of real tokens the generator's draws replaced (RTD label 1). A detector that
    /// knows only this rate reaches its binary entropy, so the detection loss below it is what the
    /// discriminator learned from the context.
    /// </summary>
    public double? ReplacedShare { get; init; }

    /// <summary>The binary entropy of <see cref="ReplacedShare"/> (nats): the detection loss of a detector that knows only the rate.</summary>
    public double? RateOnlyDetectionLoss => ReplacedShare is { } q ? -(Xlogx(q) + Xlogx(1 - q)) : null;

    private static double Xlogx(double x) => x > 0 ? x * Math.Log(x) : 0;
}

public sealed class NonFiniteLossException(string message) : Exception(message);

public sealed class Trainer
{
    public const string StateFile = "trainer_state.json", OptimizerFile = "optimizer.safetensors", MetricsFile = "metrics.csv", PlotFile = "loss-curve.png";

    private readonly BertDevice device;
    private readonly TextWriter log;
    private readonly ProcessGroup group;

    /// <param name="group">The ranks training together (default: this process alone). Only rank 0 writes files.</param>
    public Trainer(BertDevice device, TextWriter log, ProcessGroup? group = null)
    {
        this.device = device;
        this.log = log;
        this.group = group ?? ProcessGroup.Single();
    }

    /// <summary>Set from another thread (Ctrl-C): the loop saves a checkpoint after the current step and returns.</summary>
    public volatile bool StopRequested;

    /// <summary>Trains per <paramref name="o"/> into <paramref name="outDir"/>, or continues the run saved in <paramref name="resume"/>.</summary>
    public List<StepMetrics> Run(PretrainingOptions o, string outDir, string? resume = null)
    {
        int startStep = 0;
        List<StepMetrics> metrics = [];
        if (resume is not null)
        {
            var state = ReadState(resume);
            o = state.Options;
            startStep = state.Step;
            metrics = ReadMetrics(Path.Combine(resume, MetricsFile)).Where(m => m.Step <= startStep).ToList();
            log.WriteLine($"resuming {resume} at step {startStep} of {o.Steps}");
        }
        o.Validate();
        if (o.GradAccum % group.Size != 0)
            throw new ArgumentException($"--grad-accum {o.GradAccum} is not a multiple of the {group.Size} ranks (each rank runs grad-accum / ranks micro-batches per step)");
        if (File.Exists(Path.Combine(outDir, BertFolder.EvalFile)))
            throw new ArgumentException($"{outDir} holds a fine-tuned model (eval.json); pretraining would overwrite it: choose another --out");
        using var outputLock = group.IsRoot ? OutputLock.Acquire(outDir) : null;
        if (outputLock is { Leftovers.Count: > 0 } held)
            log.WriteLine($"removed the unfinished writes of an interrupted run: {string.Join(", ", held.Leftovers)}");
        using var scratch = group.IsRoot ? null : new ScratchFolder();
        log.WriteLine($"device: {device.Spec} ({device.Name})");
        if (group.Size > 1)
            log.WriteLine($"data-parallel over {group.Size} ranks ({group.Backend}): {o.GradAccum / group.Size} micro-batch(es) of {o.MicroBatch} per rank and step");

        // Model and vocabulary: a checkpoint to resume, a given model, or a new one of --size.
        string vocabPath;
        BertForPreTraining model;
        if (resume is not null)
        {
            vocabPath = Path.Combine(resume, BertFolder.VocabFile);
            model = BertFolder.Load(device, resume, log);
        }
        else if (o.Model is not null)
        {
            vocabPath = Path.Combine(o.Model, BertFolder.VocabFile);
            model = BertFolder.Load(device, o.Model, log);
            if (o.Albert && !model.Config.Albert)
            {
                model.Dispose();
                throw new ArgumentException($"--albert: {o.Model} is a BERT, not an ALBERT; drop --albert to continue it, or start a new ALBERT without --model");
            }
            int classes = ExampleGenerator.ClassesOf(o.SentenceObjective);
            if (classes > 0 && classes != model.Config.SentenceClasses) // none and contrastive use no sentence head
                throw new ArgumentException($"{o.Model} has a {model.Config.SentenceClasses}-way sentence head; --sentence-objective {o.SentenceObjective} needs {classes}");
            if (o.Aux.FirstOrDefault(h => !model.Config.AuxHeads.Contains(h)) is { } absent)
                throw new ArgumentException($"{o.Model} has no {absent} head (its config.json lists {(model.Config.AuxHeads.Count == 0 ? "none" : string.Join(", ", model.Config.AuxHeads))}); --aux {absent} needs a model initialised with it");
            if (o.Objective == PretrainingObjective.Electra && !model.Config.AuxHeads.Contains(ElectraGenerator.RtdHead))
                throw new ArgumentException($"{o.Model} has no replaced-token-detection head: --objective electra continues an ELECTRA run's output, or starts without --model");
        }
        else
        {
            // Always rebuilt (deterministic, seconds): a vocab.txt left in --out by another run may not match this corpus.
            // Every rank builds it (the others into a private folder: --out need not be shared between machines).
            vocabPath = Path.Combine(scratch?.Path ?? outDir, BertFolder.VocabFile);
            log.WriteLine($"building a {o.VocabSize}-token vocabulary from the corpus...");
            var vocab = WordPieceTrainer.Train(PretrainingData.RawDocuments(o).SelectMany(d => d), o.VocabSize);
            AtomicFile.WriteText(vocabPath, string.Join("\n", vocab) + "\n");
            int vocabSize = File.ReadLines(vocabPath).Count();
            var config = BertConfig.ForSize(o.Size, vocabSize) with
            {
                MaxPositionEmbeddings = Math.Max(512, o.SequenceLength),
                SentenceClasses = Math.Max(2, ExampleGenerator.ClassesOf(o.SentenceObjective)),
                AuxHeads = o.Objective == PretrainingObjective.Electra ? [ElectraGenerator.RtdHead] : o.Aux,
            };
            if (o.Albert) config = config.AsAlbert();
            model = new BertForPreTraining(device, config);
            model.Parameters.Initialize(o.Seed);
        }
        using var _model = model;
        // ELECTRA's generator: from the checkpoint or model folder that has one, else new.
        bool newGenerator = false;
        using var generator = o.Objective == PretrainingObjective.Electra ? new ElectraGenerator(model, o.GeneratorWidth) : null;
        if (generator is not null)
        {
            string? saved = (resume ?? o.Model) is { } from ? Path.Combine(from, ElectraGenerator.File) : null;
            if (saved is not null && (resume is not null || File.Exists(saved))) generator.Load(saved);
            else
            {
                generator.Parameters.Initialize(o.Seed + 17);
                newGenerator = true;
            }
            log.WriteLine($"ELECTRA: generator of hidden size {generator.Config.HiddenSize}, {generator.Config.NumAttentionHeads} head(s) (discriminator {model.Config.HiddenSize}), λ = {o.RtdWeight}");
        }
        IReadOnlyList<Parameter> parameters = generator is null ? model.Parameters.All : [.. model.Parameters.All, .. generator.Parameters.All];
        // The loss columns after MLM and sentence: ERNIE's token heads, or ELECTRA's detection loss.
        string[] heads = generator is null ? o.Aux : [ElectraGenerator.RtdHead];
        if (o.SequenceLength > model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"--seq-len {o.SequenceLength} exceeds the model's max_position_embeddings {model.Config.MaxPositionEmbeddings}");
        var encoder = BertTextEncoder.FromVocab(vocabPath);
        var data = new PretrainingData(o, encoder, vocabPath, model.Config.VocabSize, log);
        if (resume is null && o.Model is null && o.UnigramOutputBias)
            model.Parameters.Set("cls.predictions.bias", data.LogUnigram(model.Config.VocabSize));
        bool evaluate = o.EvalEvery > 0 && o.Objective != PretrainingObjective.None;
        if (o.EvalEvery > 0 && !evaluate) log.WriteLine("--objective none: no MLM to evaluate on the held-out examples (the MLM head is not trained)");
        if (newGenerator && o.UnigramOutputBias)
            generator!.Parameters.Set("generator.generator_lm_head.bias", data.LogUnigram(model.Config.VocabSize));
        group.Broadcast(parameters); // every rank starts from rank 0's weights
        using var optimizer = new AdamWOptimizer(device, parameters, new AdamWSettings());
        if (resume is not null) optimizer.Load(Path.Combine(resume, OptimizerFile), startStep);

        var clock = Stopwatch.StartNew();
        double elapsedBefore = metrics.LastOrDefault()?.ElapsedSeconds ?? 0;
        bool interactive = !Console.IsOutputRedirected && ReferenceEquals(log, Console.Out);
        int reportEvery = Math.Max(1, o.Steps / 20);
        for (int step = startStep + 1; step <= o.Steps; step++)
        {
            var stepClock = Stopwatch.StartNew();
            model.ZeroGrad();
            generator?.ZeroGrad();
            double mlm = 0, sentence = 0, replaced = 0;
            var aux = new double[heads.Length];
            long tokens = 0;
            int share = o.GradAccum / group.Size;
            for (int micro = group.Rank * share; micro < (group.Rank + 1) * share; micro++)
            {
                var batch = data.Batch((long)(step - 1) * o.GradAccum + micro, o.MicroBatch);
                tokens += batch.AttentionMask.Sum();
                using var tape = new Tape();
                // The contrastive loss of the batch's pairs of rows on the (discriminator's) last layer; its share of the step's value.
                double Contrastive(Var lastHiddenState)
                {
                    var loss = model.ContrastiveLoss(tape, lastHiddenState, batch, o.ContrastiveTemperature);
                    loss.Weight = 1f / o.GradAccum;
                    return loss.Read() / o.GradAccum;
                }
                var dropouts = Dropouts.Training(model.Config, (ulong)o.Seed, (uint)(step * o.GradAccum + micro));
                if (generator is not null)
                {
                    var draws = new Random(unchecked((int)((ulong)o.Seed * 1_000_003UL + (ulong)step * 7_919UL + (ulong)micro * 31UL)));
                    var electra = generator.Step(tape, batch, dropouts, draws);
                    electra.Mlm.Weight = 1f / o.GradAccum;
                    electra.Rtd.Weight = o.RtdWeight / o.GradAccum;
                    mlm += electra.Mlm.Read() / o.GradAccum;
                    aux[0] += electra.Rtd.Read() / o.GradAccum;
                    replaced += electra.ReplacedShare / o.GradAccum;
                    if (ExampleGenerator.PairedRows(o.SentenceObjective))
                        sentence += Contrastive(electra.LastHiddenState);
                    tape.Backward();
                    continue;
                }
                if (o.Objective == PretrainingObjective.None) // the sentence objective alone: no MLM head to run
                {
                    sentence += Contrastive(model.Bert.Forward(tape, batch, dropouts).LastHiddenState);
                    tape.Backward();
                    continue;
                }
                var outputs = model.Forward(tape, batch, dropouts, maskedOnly: true);
                if (outputs.MlmLoss is not null) outputs.MlmLoss.Weight = 1f / o.GradAccum;
                if (outputs.NspLoss is not null) outputs.NspLoss.Weight = 1f / o.GradAccum;
                mlm += (outputs.MlmLoss?.Read() ?? 0) / o.GradAccum;
                sentence += (outputs.NspLoss?.Read() ?? 0) / o.GradAccum;
                if (ExampleGenerator.PairedRows(o.SentenceObjective))
                    sentence += Contrastive(outputs.LastHiddenState);
                for (int a = 0; a < aux.Length; a++)
                    if (outputs.AuxLosses.TryGetValue(heads[a], out var auxLoss))
                    {
                        auxLoss.Weight = 1f / o.GradAccum;
                        aux[a] += auxLoss.Read() / o.GradAccum;
                    }
                tape.Backward();
            }
            group.AllReduceGradients(parameters);
            double[] sums = [mlm, sentence, tokens, replaced, .. aux];
            group.AllReduceSum(sums);
            (mlm, sentence, tokens, replaced) = (sums[0], sums[1], (long)sums[2], sums[3]);
            aux = sums[4..];
            double loss = mlm + sentence + (generator is null ? aux.Sum() : o.RtdWeight * aux[0]); // what the step minimised
            if (!double.IsFinite(loss))
                throw new NonFiniteLossException($"the loss became {loss} at step {step}; stopping (the last good checkpoint is kept). Try a lower --lr.");
            float gradNorm = optimizer.GradNorm();
            if (!float.IsFinite(gradNorm))
                throw new NonFiniteLossException($"the gradient norm became {gradNorm} at step {step}; stopping before it reaches the weights (the last good checkpoint is kept). Try a lower --lr.");
            float lr = LinearSchedule.At(step, o.LearningRate, o.WarmupSteps, o.Steps);
            optimizer.Update(lr);
            double seconds = stepClock.Elapsed.TotalSeconds;
            var row = new StepMetrics(step, loss, mlm, sentence, lr, gradNorm, tokens / seconds, elapsedBefore + clock.Elapsed.TotalSeconds)
            {
                AuxLosses = heads.Select((h, a) => (h, a)).ToDictionary(x => x.h, x => aux[x.a]),
                ReplacedShare = generator is null ? null : replaced,
            };
            if (group.IsRoot && evaluate && (step % o.EvalEvery == 0 || step == o.Steps) && data.Eval.Count > 0)
            {
                var (accuracy, perplexity) = Evaluate(model, generator, data, o.MicroBatch);
                row = row with { EvalMlmAccuracy = accuracy, EvalPerplexity = perplexity };
            }
            metrics.Add(row);
            Progress(row, o.Steps, interactive, step % reportEvery == 0 || step == o.Steps || row.EvalPerplexity is not null);

            bool stop = group.Any(StopRequested); // any rank interrupted: all stop after this step
            if ((o.SaveEvery > 0 && step % o.SaveEvery == 0) || stop)
            {
                group.VerifyIdentical(parameters, $"step {step}");
                if (group.IsRoot) SaveCheckpoint(Path.Combine(outDir, $"checkpoint-{step}"), model, generator, optimizer, o, step, vocabPath, metrics);
            }
            if (stop)
            {
                if (interactive) log.WriteLine();
                log.WriteLine($"interrupted: saved {Path.Combine(outDir, $"checkpoint-{step}")}; continue with --resume");
                if (group.IsRoot) WriteOutputs(outDir, model, generator, vocabPath, metrics);
                return metrics;
            }
        }
        if (interactive) log.WriteLine();
        if (group.Size > 1)
            log.WriteLine($"gradient all-reduce: {group.GradientTime.TotalSeconds:F1} s of {clock.Elapsed.TotalSeconds:F1} s on rank 0 (waiting for the other ranks included)");
        group.VerifyIdentical(parameters, "the end of training");
        if (group.IsRoot) WriteOutputs(outDir, model, generator, vocabPath, metrics);
        log.WriteLine($"wrote {outDir}: model, {MetricsFile}, {PlotFile}");
        return metrics;
    }

    /// <summary>
    /// MLM accuracy and perplexity (exp of the mean cross-entropy) over the held-out examples, dropout
    /// off: the model's MLM head, or with ELECTRA the generator's (the discriminator's is not trained).
    /// </summary>
    private static (double Accuracy, double Perplexity) Evaluate(BertForPreTraining model, ElectraGenerator? generator, PretrainingData data, int batchSize)
    {
        long correct = 0, total = 0;
        double lossSum = 0;
        foreach (var batch in data.EvalBatches(batchSize))
        {
            using var tape = new Tape(recording: false);
            Var logitsVar;
            int[] positions;
            Loss? mlmLoss;
            if (generator is not null)
                (logitsVar, positions, mlmLoss) = generator.Forward(tape, batch, Dropouts.Off);
            else
            {
                var o = model.Forward(tape, batch, Dropouts.Off, maskedOnly: true);
                (logitsVar, positions, mlmLoss) = (o.PredictionLogits, o.MaskedPositions!, o.MlmLoss);
            }
            var logits = logitsVar.Value.ToHost();
            int v = model.Config.VocabSize;
            for (int r = 0; r < positions.Length; r++)
            {
                int best = 0;
                for (int j = 1; j < v; j++) if (logits[r * v + j] > logits[r * v + best]) best = j;
                if (best == batch.Labels![positions[r]]) correct++;
            }
            lossSum += (mlmLoss?.Read() ?? 0) * positions.Length;
            total += positions.Length;
        }
        return total == 0 ? (0, double.NaN) : (correct / (double)total, Math.Exp(lossSum / total));
    }

    private void Progress(StepMetrics m, int steps, bool interactive, bool report)
    {
        double remaining = m.Step > 0 ? m.ElapsedSeconds / m.Step * (steps - m.Step) : 0;
        string eval = m.EvalPerplexity is { } ppl ? $"  eval acc {m.EvalMlmAccuracy:P1} ppl {ppl:F1}" : "";
        string line = $"step {m.Step}/{steps}  loss {m.Loss:F4}  lr {m.Lr:E2}  {m.TokensPerSecond:F0} tokens/s  ETA {TimeSpan.FromSeconds(remaining):mm\\:ss}{eval}";
        if (interactive)
        {
            int width = 30, done = (int)(width * (long)m.Step / steps);
            log.Write($"\r[{new string('#', done)}{new string('.', width - done)}] {line}   ");
            if (eval.Length > 0) log.WriteLine();
        }
        else if (report)
            log.WriteLine(line);
    }

    private static void WriteOutputs(string outDir, BertForPreTraining model, ElectraGenerator? generator, string vocabPath, List<StepMetrics> metrics)
    {
        BertFolder.Save(model, outDir, vocabPath);
        generator?.Save(Path.Combine(outDir, ElectraGenerator.File));
        WriteMetrics(Path.Combine(outDir, MetricsFile), metrics);
        LossPlot.Write(Path.Combine(outDir, PlotFile), metrics);
    }

    private static void SaveCheckpoint(string dir, BertForPreTraining model, ElectraGenerator? generator, AdamWOptimizer optimizer, PretrainingOptions o, int step,
        string vocabPath, List<StepMetrics> metrics)
    {
        // Written into a temporary folder and renamed, so a crash never leaves half a checkpoint.
        string temp = dir + ".tmp";
        if (Directory.Exists(temp)) Directory.Delete(temp, true);
        try
        {
            BertFolder.Save(model, temp, vocabPath);
            generator?.Save(Path.Combine(temp, ElectraGenerator.File));
            optimizer.Save(Path.Combine(temp, OptimizerFile));
            WriteMetrics(Path.Combine(temp, MetricsFile), metrics);
            var state = new TrainerState(step, o);
            AtomicFile.WriteText(Path.Combine(temp, StateFile), JsonSerializer.Serialize(state, PretrainingOptions.Json));
        }
        catch
        {
            try { Directory.Delete(temp, true); } catch (IOException) { } // no half checkpoint left behind (e.g. a full disk)
            throw;
        }
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.Move(temp, dir);
    }

    /// <summary>What a checkpoint needs besides weights and moments: the step (the data cursor and RNG state derive from it and the seed) and the settings.</summary>
    public sealed record TrainerState(int Step, PretrainingOptions Options);

    public static TrainerState ReadState(string checkpoint)
    {
        string path = Path.Combine(checkpoint, StateFile);
        if (!File.Exists(path)) throw new CheckpointException($"{checkpoint}: not a training checkpoint (no {StateFile})");
        try
        {
            return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), PretrainingOptions.Json)
                ?? throw new CheckpointException($"{path}: empty");
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"{path}: invalid ({e.Message})");
        }
    }

    private static readonly string[] Columns =
        ["step", "loss", "mlm_loss", "sentence_loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eval_mlm_accuracy", "eval_perplexity"];

    /// <summary>The column of an auxiliary head's loss: "token-document" → "token_document_loss".</summary>
    private static string AuxColumn(string head) => head.Replace('-', '_') + "_loss";

    /// <summary>ELECTRA's column after the heads' losses (<see cref="StepMetrics.ReplacedShare"/>).</summary>
    private const string ReplacedShareColumn = "replaced_share";

    /// <summary>
    /// One row per step; after the fixed columns, one loss column per auxiliary head of the run, and
    /// for ELECTRA the replaced share.
    /// </summary>
    public static void WriteMetrics(string path, IEnumerable<StepMetrics> rows)
    {
        var list = rows.ToList();
        var heads = list.FirstOrDefault()?.AuxLosses.Keys.ToArray() ?? [];
        bool share = list.Count > 0 && list.All(m => m.ReplacedShare is not null);
        var sb = new StringBuilder(string.Join(",", [.. Columns, .. heads.Select(AuxColumn), .. share ? [ReplacedShareColumn] : Array.Empty<string>()])).Append('\n');
        string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        foreach (var m in list)
            sb.Append(string.Join(",", [m.Step.ToString(CultureInfo.InvariantCulture), F(m.Loss), F(m.MlmLoss), F(m.SentenceLoss), F(m.Lr), F(m.GradNorm),
                F(m.TokensPerSecond), F(m.ElapsedSeconds), m.EvalMlmAccuracy is { } a ? F(a) : "", m.EvalPerplexity is { } p ? F(p) : "",
                .. heads.Select(h => F(m.AuxLosses[h])), .. share ? [F(m.ReplacedShare!.Value)] : Array.Empty<string>()])).Append('\n');
        AtomicFile.WriteText(path, sb.ToString());
    }

    public static List<StepMetrics> ReadMetrics(string path)
    {
        if (!File.Exists(path)) return [];
        double D(string s) => double.Parse(s, CultureInfo.InvariantCulture);
        var lines = File.ReadLines(path).Where(l => l.Length > 0).ToList();
        if (lines.Count == 0) return [];
        var extra = lines[0].Split(',').Skip(Columns.Length).ToArray();
        // Files written before the replaced share was recorded have none (their runs resume without it).
        int share = Array.IndexOf(extra, ReplacedShareColumn);
        var heads = extra.Select((name, j) => (name, j)).Where(x => x.j != share)
            .Select(x => (Head: x.name.EndsWith("_loss", StringComparison.Ordinal) ? x.name[..^"_loss".Length].Replace('_', '-') : x.name, Column: Columns.Length + x.j)).ToArray();
        return lines.Skip(1).Select(l =>
        {
            var c = l.Split(',');
            return new StepMetrics(int.Parse(c[0], CultureInfo.InvariantCulture), D(c[1]), D(c[2]), D(c[3]), D(c[4]), D(c[5]), D(c[6]), D(c[7]),
                c[8].Length > 0 ? D(c[8]) : null, c[9].Length > 0 ? D(c[9]) : null)
            {
                AuxLosses = heads.ToDictionary(x => x.Head, x => D(c[x.Column])),
                ReplacedShare = share >= 0 ? D(c[Columns.Length + share]) : null,
            };
        }).ToList();
    }
}
