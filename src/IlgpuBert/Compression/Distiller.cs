// Task-specific knowledge distillation (BERTology §6.1) on the fine-tuning loop: a fine-tuned
// teacher, run without dropout and without gradients, and a smaller student trained on
//   (1 − α)·hard loss + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))           Hinton et al. 2015
//   + β·mean_j MSE(W_j·h_student(j), h_teacher(g(j)))                                TinyBERT, Jiao et al. 2020
//   + γ·mean_i MSE(A_student(i), A_teacher(g(i)))
// Regression distils the teacher's value by MSE instead of KL; QA takes the KL over positions for
// start and end. The layer map g is TinyBERT's uniform one unless given: student layer i (1-based)
// ↔ teacher layer i·Lt/Ls, embeddings ↔ embeddings. W_j is a learned [Ht, Hs] projection when the
// widths differ (trained with the student, not saved). Attention maps need equal head counts.
// Students: "half" keeps every other teacher layer (0, 2, 4, …) with the teacher's embeddings and
// head (DistilBERT's initialisation), a size name (tiny, mini, …) starts from random weights, a
// folder starts from that (pretrained) encoder with a new head.
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Distributed;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Compression;

public sealed record DistillOptions
{
    /// <summary>The fine-tuned teacher's folder.</summary>
    public string Teacher { get; init; } = "";
    /// <summary>"half", a size name (tiny, mini, small, medium, base), ignored when <see cref="Student"/> is given.</summary>
    public string StudentSize { get; init; } = "half";
    /// <summary>A pretrained (or fine-tuned) folder whose encoder starts the student.</summary>
    public string? Student { get; init; }
    /// <summary>Data, epochs, learning rate, batch size, seed: as for fine-tuning (Model is the teacher).</summary>
    public FineTuneOptions Training { get; init; } = new();
    public float Temperature { get; init; } = 2f;
    /// <summary>Weight α of the soft-target loss; the hard loss gets 1 − α.</summary>
    public float Alpha { get; init; } = 0.5f;
    /// <summary>β: hidden-state MSE (0 = off).</summary>
    public float HiddenWeight { get; init; }
    /// <summary>γ: attention-map MSE (0 = off).</summary>
    public float AttentionWeight { get; init; }
    /// <summary>"i:j,…" student layer i ↔ teacher layer j (1-based); null = uniform.</summary>
    public string? LayerMap { get; init; }

    public void Validate()
    {
        if (!(Temperature > 0)) throw new ArgumentException($"--temperature must be positive, got {Temperature}");
        if (!(Alpha >= 0 && Alpha <= 1)) throw new ArgumentException($"--alpha must be in [0, 1], got {Alpha}");
        if (!(HiddenWeight >= 0) || !(AttentionWeight >= 0)) throw new ArgumentException("--hidden-weight and --attention-weight must not be negative");
    }

    /// <summary>Student layer (1-based) → teacher layer (1-based); 0 ↔ 0 is the embeddings.</summary>
    public static int[] Map(string? spec, int studentLayers, int teacherLayers)
    {
        var map = new int[studentLayers + 1];
        if (spec is null)
        {
            for (int i = 1; i <= studentLayers; i++) map[i] = (int)Math.Round((double)i * teacherLayers / studentLayers);
            return map;
        }
        var seen = new bool[studentLayers + 1];
        foreach (var pair in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var ends = pair.Split(':');
            if (ends.Length != 2 || !int.TryParse(ends[0], out int s) || !int.TryParse(ends[1], out int t) || s < 1 || s > studentLayers || t < 1 || t > teacherLayers)
                throw new ArgumentException($"--layer-map \"{pair}\": expected student:teacher with 1 ≤ student ≤ {studentLayers}, 1 ≤ teacher ≤ {teacherLayers}");
            map[s] = t;
            seen[s] = true;
        }
        for (int i = 1; i <= studentLayers; i++)
            if (!seen[i]) throw new ArgumentException($"--layer-map names no teacher layer for student layer {i}");
        return map;
    }
}

/// <param name="group">The ranks training together (default: this process alone); see FineTuner.</param>
public sealed class Distiller(BertDevice device, TextWriter log, ProcessGroup? group = null)
{
    private readonly FineTuner tuner = new(device, log, group);

    /// <summary>From another thread (Ctrl-C): save the student after the current step and return.</summary>
    public void RequestStop() => tuner.StopRequested = true;

    public System.Text.Json.Nodes.JsonObject Run(DistillOptions d, string outDir)
    {
        d.Validate();
        using var teacher = BertForTask.Load(device, d.Teacher);
        var o = d.Training with { Model = d.Teacher, InitFrom = null, Task = teacher.Task.Kind, Pooling = teacher.Task.Pooling };
        var projections = new List<Var?>();
        int[]? map = null;
        try
        {
            var custom = new FineTuner.CustomTraining(
                Model: () =>
                {
                    var student = MakeStudent(teacher, d, o.Seed);
                    map = DistillOptions.Map(d.LayerMap, student.Config.NumHiddenLayers, teacher.Config.NumHiddenLayers);
                    CheckCompatible(teacher, student, d);
                    int hs = student.Config.HiddenSize, ht = teacher.Config.HiddenSize;
                    var rng = new Random(o.Seed);
                    for (int j = 0; j < map.Length; j++)
                        projections.Add(d.HiddenWeight > 0 && hs != ht ? Projection(device, ht, hs, rng, j) : null);
                    log.WriteLine($"distilling {Describe(teacher.Config)} → {Describe(student.Config)}: T = {d.Temperature}, α = {d.Alpha}, "
                        + $"β (hidden) = {d.HiddenWeight}, γ (attention) = {d.AttentionWeight}, layers {string.Join(" ", Enumerable.Range(1, map.Length - 1).Select(i => $"{i}←{map[i]}"))}");
                    return student;
                },
                Extra: () => projections.OfType<Var>().Select(v => new Parameter(v, true)),
                Step: (student, batch, step) => Step(teacher, student, batch, step, d, o, map!, projections));
            return tuner.Run(o, outDir, custom);
        }
        finally
        {
            foreach (var p in projections) p?.Dispose();
        }
    }

    private static string Describe(BertConfig c) => $"L={c.NumHiddenLayers} H={c.HiddenSize} A={c.NumAttentionHeads}";

    private static Var Projection(BertDevice device, int ht, int hs, Random rng, int j)
    {
        var w = new float[ht * hs];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Sqrt(3.0 / hs));
        return new Var(Tensor.FromHost(device, w, ht, hs), requiresGrad: true, name: $"distill.projection.{j}");
    }

    /// <summary>The student per <see cref="DistillOptions.StudentSize"/> / <see cref="DistillOptions.Student"/>, with the teacher's task and labels.</summary>
    public static BertForTask MakeStudent(BertForTask teacher, DistillOptions d, int seed)
    {
        teacher.Config.RequireNotAlbert("distillation");
        if (d.Student is not null)
        {
            var student = BertForTask.FromPretrained(teacher.Device, d.Student, teacher.Task, seed, bodyOnly: true);
            if (student.Config.VocabSize != teacher.Config.VocabSize)
            {
                student.Dispose();
                throw new ArgumentException($"the student's vocabulary ({student.Config.VocabSize}) differs from the teacher's ({teacher.Config.VocabSize}); they must read the same token ids");
            }
            return student;
        }
        if (d.StudentSize == "half")
        {
            int layers = teacher.Config.NumHiddenLayers;
            return Pruning.DropLayers(teacher, Enumerable.Range(0, layers).Where(l => l % 2 == 1).ToArray());
        }
        var t = teacher.Config;
        var config = BertConfig.ForSize(d.StudentSize, t.VocabSize) with
        {
            MaxPositionEmbeddings = t.MaxPositionEmbeddings, TypeVocabSize = t.TypeVocabSize, PadTokenId = t.PadTokenId, HiddenAct = t.HiddenAct,
            Extra = (System.Text.Json.Nodes.JsonObject)t.Extra.DeepClone(),
        };
        config.Extra.Remove("pruned_heads");
        config.Extra.Remove(Pruning.SparsityKey);
        var fresh = new BertForTask(teacher.Device, config, teacher.Task);
        fresh.Parameters.Initialize(seed);
        return fresh;
    }

    private static void CheckCompatible(BertForTask teacher, BertForTask student, DistillOptions d)
    {
        if (d.AttentionWeight > 0 && (teacher.Config.PrunedHeads.Count > 0 || student.Config.PrunedHeads.Count > 0
            || teacher.Config.NumAttentionHeads != student.Config.NumAttentionHeads))
            throw new ArgumentException($"--attention-weight compares attention maps head by head: the teacher has {teacher.Config.NumAttentionHeads} heads per layer, the student {student.Config.NumAttentionHeads} (and neither may be head-pruned)");
    }

    /// <summary>One distillation step's forward and backward passes; returns the total loss.</summary>
    private double Step(BertForTask teacher, BertForTask student, TaskBatch batch, int step, DistillOptions d, FineTuneOptions o,
        int[] map, IReadOnlyList<Var?> projections)
    {
        bool attention = d.AttentionWeight > 0;
        float[] teacherLogits;
        var teacherStates = new Dictionary<int, float[]>();
        var teacherMaps = new Dictionary<int, float[]>();
        using (var tape = new Tape(recording: false))
        {
            var t = teacher.Forward(tape, new TaskBatch(batch.Inputs), Dropouts.Off, new BertHooks { AttentionMaps = attention });
            teacherLogits = t.Logits.Value.ToHost();
            for (int j = 0; j < map.Length; j++)
            {
                if (d.HiddenWeight > 0) teacherStates[j] = t.Encoder.HiddenStates[map[j]].Value.ToHost();
                if (attention && j > 0) teacherMaps[j] = t.Encoder.AttentionMaps![map[j] - 1].Value.ToHost();
            }
        }

        student.ZeroGrad();
        foreach (var p in projections) p?.ZeroGrad();
        using var studentTape = new Tape();
        var s = student.Forward(studentTape, batch, Dropouts.Training(student.Config, tuner.DropoutSeed(o.Seed), (uint)step), new BertHooks { AttentionMaps = attention });
        double total = 0;
        foreach (var (loss, scale) in s.Losses)
        {
            loss.Weight = (1 - d.Alpha) * scale;
            total += (1 - d.Alpha) * scale * loss.Read();
        }
        if (d.Alpha > 0)
            foreach (var (loss, scale) in SoftLosses(studentTape, student, s.Logits, teacherLogits, batch.Inputs, d.Temperature))
            {
                loss.Weight = d.Alpha * scale;
                total += d.Alpha * scale * loss.Read();
            }
        foreach (var (j, target) in teacherStates)
        {
            var h = s.Encoder.HiddenStates[j];
            if (projections[j] is { } w) h = Ops.Linear(studentTape, h, w, null);
            var loss = Ops.MeanSquaredError(studentTape, h, target);
            loss.Weight = d.HiddenWeight / teacherStates.Count;
            total += loss.Weight * loss.Read();
        }
        foreach (var (j, target) in teacherMaps)
        {
            var loss = Ops.MeanSquaredError(studentTape, s.Encoder.AttentionMaps![j - 1], target);
            loss.Weight = d.AttentionWeight / teacherMaps.Count;
            total += loss.Weight * loss.Read();
        }
        studentTape.Backward();
        return total;
    }

    /// <summary>The soft-target terms with their share of the total: KL at temperature T (times T²), or MSE for regression.</summary>
    private static List<(Loss Loss, float Scale)> SoftLosses(Tape tape, BertForTask student, Var logits, float[] teacher, BertInputs inputs, float temperature)
    {
        float t2 = temperature * temperature;
        switch (student.Task.Kind)
        {
            case TaskKind.Regression:
                return [(Ops.MeanSquaredError(tape, logits, teacher), 1f)];
            case TaskKind.QuestionAnswering:
            {
                int b = inputs.Batch, s = inputs.SeqLen;
                var result = new List<(Loss, float)>();
                for (int column = 0; column < 2; column++)
                {
                    var side = Ops.SliceColumns(tape, logits, column, 1, [b, s]);
                    var reference = Enumerable.Range(0, b * s).Select(i => teacher[i * 2 + column]).ToArray();
                    result.Add((Ops.SoftTargetKl(tape, side, reference, temperature), 0.5f * t2));
                }
                return result;
            }
            default:
                return [(Ops.SoftTargetKl(tape, logits, teacher, temperature), t2)];
        }
    }
}
