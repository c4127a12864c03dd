using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Training;

namespace IlgpuBert.Tests;

/// <summary>Each fine-tuning improvement of BERTology §5.3: its neutral setting is plain fine-tuning, and it acts.</summary>
public class FineTuningImprovementTests
{
    private static readonly FineTuneOptions Plain = new() { Seed = 5 };

    /// <summary>Every parameter's gradient after the step <paramref name="step"/> runs.</summary>
    private static Dictionary<string, float[]> Gradients(BertForTask model, Func<double> step, out double loss)
    {
        loss = step();
        return model.Parameters.Names.ToDictionary(n => n, n => model.Parameters.GetGrad(n));
    }

    /// <summary>A forward and backward written out by hand: what plain fine-tuning does.</summary>
    private static double ManualStep(BertForTask model, TaskBatch batch, int step)
    {
        model.ZeroGrad();
        using var tape = new Tape();
        var outputs = model.Forward(tape, batch, Dropouts.Training(model.Config, (ulong)Plain.Seed, (uint)step));
        double loss = outputs.ReadLoss()!.Value;
        tape.Backward();
        return loss;
    }

    private static double MaxDifference(Dictionary<string, float[]> a, Dictionary<string, float[]> b) =>
        a.Keys.Max(k => a[k].Zip(b[k]).Max(x => Math.Abs(x.First - x.Second)));

    public static TheoryData<TaskKind> Kinds => new() { TaskKind.Classification, TaskKind.Regression, TaskKind.TokenClassification, TaskKind.QuestionAnswering };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Neutral_settings_are_exactly_plain_fine_tuning(TaskKind kind)
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(kind, Pooling.Cls), 21);
        var batch = TaskModelTests.Batch(kind);
        var tuner = new FineTuner(device, TextWriter.Null);
        var expected = Gradients(model, () => ManualStep(model, batch, 3), out double plainLoss);
        var neutral = Plain with { FreeLbSteps = 0, SmartWeight = 0, Mixout = 0, FreezeLayers = 0, FreezeEmbeddings = false, LayerLrDecay = 1 };
        using var mixout = new MixoutTargets(model, 0f);
        Assert.False(mixout.Active);
        var got = Gradients(model, () => tuner.TrainStep(model, batch, neutral, 3, mixout), out double loss);
        Assert.Equal(plainLoss, loss);
        foreach (var name in expected.Keys) Assert.Equal(expected[name], got[name]);
        var setup = FineTuner.Setup(model, neutral);
        Assert.Equal(model.Parameters.All.Count, setup.Trainable.Count);
        Assert.All(setup.LrScales, s => Assert.Equal(1f, s));
    }

    [Fact]
    public void FreeLB_ascends_inside_the_eps_ball_and_changes_the_gradient()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls), 22);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        var plain = Gradients(model, () => ManualStep(model, batch, 4), out double plainLoss);
        var tuner = new FineTuner(device, TextWriter.Null);
        var o = Plain with { FreeLbSteps = 3, FreeLbEps = 0.5f, FreeLbLr = 0.3f };
        var adversarial = Gradients(model, () => tuner.TrainStep(model, batch, o, 4), out double loss);
        Assert.True(MaxDifference(plain, adversarial) > 1e-3, "FreeLB left the gradient as it was");

        // The perturbation stays in the ε-ball (L2 per example) and raises the loss over the clean one.
        var delta = tuner.LastFreeLbDelta!;
        int per = delta.Length / batch.Inputs.Batch;
        for (int b = 0; b < batch.Inputs.Batch; b++)
            Assert.True(Math.Sqrt(delta.Skip(b * per).Take(per).Sum(v => (double)v * v)) <= 0.5 * (1 + 1e-5));
        double Loss(float[]? d)
        {
            using var tape = new Tape(recording: false);
            using var dv = d is null ? null : new Var(Tensor.FromHost(device, d, batch.Inputs.Batch, batch.Inputs.SeqLen, model.Config.HiddenSize));
            var hooks = dv is null ? null : new BertHooks { EmbeddingOutput = h => Ops.Add(tape, h, dv) };
            return model.Forward(tape, batch, Dropouts.Training(model.Config, (ulong)o.Seed, 4), hooks).ReadLoss()!.Value;
        }
        Assert.True(Loss(delta) > Loss(null) + 1e-4, $"adversarial loss {Loss(delta)} vs clean {Loss(null)}");
        Assert.Equal(plainLoss, Loss(null), 6);
    }

    [Fact]
    public void SMART_adds_a_positive_smoothness_term_that_vanishes_with_the_perturbation()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(TaskKind.Classification, Pooling.Mean), 23);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        var plain = Gradients(model, () => ManualStep(model, batch, 5), out double plainLoss);
        var tuner = new FineTuner(device, TextWriter.Null);
        var strong = Plain with { SmartWeight = 1f, SmartEps = 0.5f, SmartStep = 0.5f, SmartNoise = 1e-3f };
        var regularised = Gradients(model, () => tuner.TrainStep(model, batch, strong, 5), out double loss);
        Assert.True(loss > plainLoss + 1e-5, $"{loss} vs {plainLoss}");
        Assert.True(MaxDifference(plain, regularised) > 1e-4, "SMART left the gradient as it was");
        // The parameters were held while δ was found: the search added nothing to their gradients beyond the λ·symKL term.
        var faint = Plain with { SmartWeight = 1f, SmartEps = 1e-9f, SmartStep = 1e-9f, SmartNoise = 1e-9f };
        var nearlyPlain = Gradients(model, () => tuner.TrainStep(model, batch, faint, 5), out double faintLoss);
        Assert.Equal(plainLoss, faintLoss, 5);
        Assert.True(MaxDifference(plain, nearlyPlain) < 1e-4, string.Join("; ", plain.Keys.Select(k => (k, plain[k].Zip(nearlyPlain[k]).Max(x => Math.Abs(x.First - x.Second)))).OrderByDescending(x => x.Item2).Take(3)));
    }

    [Fact]
    public void SMART_works_on_every_head()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var tuner = new FineTuner(device, TextWriter.Null);
        foreach (var kind in new[] { TaskKind.Regression, TaskKind.TokenClassification, TaskKind.QuestionAnswering })
        {
            using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(kind, Pooling.Cls), 24);
            var batch = TaskModelTests.Batch(kind);
            double plain = ManualStep(model, batch, 6);
            double loss = tuner.TrainStep(model, batch, Plain with { SmartWeight = 1f, SmartEps = 0.5f, SmartStep = 0.5f }, 6);
            Assert.True(loss > plain && double.IsFinite(loss), $"{kind}: {loss} vs {plain}");
        }
    }

    [Fact]
    public void Mixout_changes_the_step_and_leaves_the_head_alone()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls), 25);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        // Move the weights off their pretrained values first, so mixing with them matters.
        using var mixout = new MixoutTargets(model, 0.5f);
        foreach (var w in model.Bert.LinearWeights)
            w.Value.CopyFrom(w.Value.ToHost().Select(v => v * 1.5f).ToArray());
        var plain = Gradients(model, () => ManualStep(model, batch, 7), out double plainLoss);
        var tuner = new FineTuner(device, TextWriter.Null);
        var mixed = Gradients(model, () => tuner.TrainStep(model, batch, Plain with { Mixout = 0.5f }, 7, mixout), out double loss);
        Assert.NotEqual(plainLoss, loss);
        Assert.True(MaxDifference(plain, mixed) > 1e-4);
        // Masked elements of a mixed weight get no gradient: about half of the query-key-value weight's entries are exactly 0.
        var qkv = mixed["bert.encoder.layer.0.attention.self.query.weight"];
        Assert.InRange(qkv.Count(v => v == 0) / (double)qkv.Length, 0.35, 0.65);
        Assert.DoesNotContain(0f, mixed["classifier.weight"]);
    }

    [Fact]
    public void Layer_wise_learning_rate_decay_scales_each_group_and_the_optimizer_uses_it()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = TaskModelTests.RandomModel(device, TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls), 26);
        var o = Plain with { LayerLrDecay = 0.5f };
        var setup = FineTuner.Setup(model, o);
        float Scale(string name) => setup.LrScales[setup.Trainable.FindIndex(p => p.Var.Name == name)];
        Assert.Equal(1f, Scale("classifier.weight"));
        Assert.Equal(1f, Scale("bert.pooler.dense.weight"));
        Assert.Equal(0.5f, Scale("bert.encoder.layer.1.output.dense.weight"));
        Assert.Equal(0.25f, Scale("bert.encoder.layer.0.output.dense.weight"));
        Assert.Equal(0.125f, Scale("bert.embeddings.word_embeddings.weight"));

        // AdamW's first step moves each element by lr·g/(|g| + eps) ≈ lr·scale: compare the largest moves.
        ManualStep(model, TaskModelTests.Batch(TaskKind.Classification), 1);
        var before = model.Parameters.Names.ToDictionary(n => n, n => model.Parameters.Get(n));
        using var optimizer = new AdamWOptimizer(device, setup.Trainable, new AdamWSettings(WeightDecay: 0, MaxGradNorm: 1e9), setup.LrScales);
        optimizer.GradNorm();
        optimizer.Update(1e-3f);
        double Moved(string name) => model.Parameters.Get(name).Zip(before[name]).Max(x => Math.Abs(x.First - x.Second));
        Assert.Equal(1e-3, Moved("classifier.weight"), 1e-5);
        Assert.Equal(0.5e-3, Moved("bert.encoder.layer.1.output.dense.weight"), 1e-5);
        Assert.Equal(0.125e-3, Moved("bert.embeddings.LayerNorm.weight"), 1e-5);
    }

    [Fact]
    public void Freezing_keeps_frozen_layers_bit_for_bit_while_the_rest_trains()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("train.tsv"), 64, 11);
        var o = new FineTuneOptions
        {
            Model = pretrained, Train = dir.File("train.tsv"), Epochs = 1, BatchSize = 16, MaxLength = 32, LearningRate = 1e-3f,
            Columns = new ColumnSpec(Text: "sentence"), FreezeEmbeddings = true, FreezeLayers = 1, Pooling = Pooling.Cls, // the pooler must train too
        };
        new FineTuner(device, TextWriter.Null).Run(o, dir.File("out"));
        var before = SafeTensors.Read(Path.Combine(pretrained, "model.safetensors"));
        var after = SafeTensors.Read(dir.File("out/model.safetensors"));
        foreach (var name in before.Keys.Where(n => n.StartsWith("bert.embeddings.") || n.StartsWith("bert.encoder.layer.0.")))
            Assert.Equal(before[name].Data, after[name].Data);
        Assert.NotEqual(before["bert.encoder.layer.1.output.dense.weight"].Data, after["bert.encoder.layer.1.output.dense.weight"].Data);
        Assert.NotEqual(before["bert.pooler.dense.weight"].Data, after["bert.pooler.dense.weight"].Data);
        Assert.Throws<ArgumentException>(() => new FineTuner(device, TextWriter.Null).Run(o with { FreezeLayers = 3 }, dir.File("out2")));
    }

    [Fact]
    public void Every_pooling_trains_and_the_scalar_mix_learns_its_layer_weights()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("train.tsv"), 240, 12);
        FineTuningTests.WriteClassification(dir.File("dev.tsv"), 90, 13);
        foreach (var pooling in new[] { Pooling.Mean, Pooling.ConcatLast4, Pooling.ScalarMix })
        {
            var o = new FineTuneOptions
            {
                Model = pretrained, Train = dir.File("train.tsv"), Eval = dir.File("dev.tsv"), Epochs = 6, BatchSize = 16, MaxLength = 32,
                LearningRate = 2e-3f, Columns = new ColumnSpec(Text: "sentence"), Pooling = pooling, Seed = 3,
            };
            string outDir = dir.File(TaskSpec.Name(pooling));
            var m = new FineTuner(device, TextWriter.Null).Run(o, outDir);
            Assert.True(m["accuracy"]!.GetValue<double>() > 0.8, $"{pooling}: {m.ToJsonString()}");
            Assert.Equal(TaskSpec.Name(pooling), JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["ilgpu_bert_pooling"]!.GetValue<string>());
        }
        var mix = SafeTensors.Read(dir.File("scalar-mix/model.safetensors"));
        Assert.Contains(mix["ilgpu_bert.scalar_mix.weights"].Data, w => Math.Abs(w) > 1e-3); // moved from the uniform start
        Assert.NotEqual(1f, mix["ilgpu_bert.scalar_mix.gamma"].Data[0]);
    }

    [Fact]
    public void Two_stage_fine_tuning_keeps_the_intermediate_encoder_and_starts_a_new_head()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("intermediate.tsv"), 64, 14);
        var stage1 = new FineTuneOptions
        {
            Model = pretrained, Train = dir.File("intermediate.tsv"), Epochs = 1, BatchSize = 16, MaxLength = 32, LearningRate = 1e-3f,
            Columns = new ColumnSpec(Text: "sentence"),
        };
        new FineTuner(device, TextWriter.Null).Run(stage1, dir.File("stage1"));
        var intermediate = SafeTensors.Read(dir.File("stage1/model.safetensors"));

        // Stage two: a regression task from the intermediate model.
        File.WriteAllText(dir.File("target.tsv"), "sentence\tlabel\n" + string.Join("\n", Enumerable.Range(0, 32).Select(i => $"good {(i % 2 == 0 ? "bad" : "fine")}\t{i % 2}")) + "\n");
        var spec = new TaskSpec(TaskKind.Regression, []);
        using (var started = BertForTask.FromPretrained(device, dir.File("stage1"), spec, 7, bodyOnly: true))
        {
            foreach (var name in intermediate.Keys.Where(n => n.StartsWith("bert.")))
                Assert.Equal(intermediate[name].Data, started.Parameters.Get(name));
            Assert.Equal([1, 32], started.Parameters["classifier.weight"].Shape); // a new one-output head, not the 3-label one
        }
        var stage2 = new FineTuneOptions
        {
            InitFrom = dir.File("stage1"), Task = TaskKind.Regression, Train = dir.File("target.tsv"), Epochs = 1, BatchSize = 16, MaxLength = 32,
            Columns = new ColumnSpec(Text: "sentence"),
        };
        new FineTuner(device, TextWriter.Null).Run(stage2, dir.File("stage2"));
        using var final = BertForTask.Load(device, dir.File("stage2"));
        Assert.Equal(TaskKind.Regression, final.Task.Kind);
        Assert.Throws<ArgumentException>(() => (stage2 with { Model = pretrained }).Validate());
    }
}
