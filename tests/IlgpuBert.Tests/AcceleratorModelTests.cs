// Whole-model runs on every accelerator present (TestDevices.cs): a few AdamW training steps with
// dropout, and an int8 model's forward. The model's forward and gradients against the double
// reference run per device in ModelTests; here each accelerator is compared with the CPU
// accelerator's run of the same steps (itself checked against the references elsewhere), since
// dropout masks, AdamW and quantization are identical by construction on every device.
using IlgpuBert.Autograd;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Training;

namespace IlgpuBert.Tests;

public class AcceleratorModelTests
{
    private static BertConfig Config => new()
    {
        VocabSize = 41, HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 64,
        MaxPositionEmbeddings = 24, TypeVocabSize = 2,
    };

    /// <summary>Two sequences of 20 (head dim 8, padded rows), MLM labels on a few positions and NSP labels.</summary>
    private static BertInputs Batch()
    {
        var rng = new Random(17);
        const int b = 2, s = 20;
        var ids = new int[b][];
        var types = new int[b][];
        var mask = new int[b][];
        var labels = new int[b][];
        for (int r = 0; r < b; r++)
        {
            int length = r == 0 ? s : 13;
            ids[r] = Enumerable.Range(0, s).Select(j => j == 0 ? 2 : j < length ? rng.Next(5, 41) : 0).ToArray();
            types[r] = Enumerable.Range(0, s).Select(j => j >= length / 2 && j < length ? 1 : 0).ToArray();
            mask[r] = Enumerable.Range(0, s).Select(j => j < length ? 1 : 0).ToArray();
            labels[r] = Enumerable.Range(0, s).Select(j => j > 0 && j < length && j % 4 == 1 ? rng.Next(5, 41) : -100).ToArray();
        }
        return BertInputs.FromRows(ids, types, mask, labels, [0, 1]);
    }

    /// <summary>Five steps of masked MLM + NSP with dropout and AdamW; the losses and the final weights.</summary>
    private static (List<double> Losses, Dictionary<string, float[]> Weights) Train(string deviceName)
    {
        using var device = Devices.OpenBert(deviceName);
        var config = Config with { HiddenDropoutProb = 0.1f, AttentionProbsDropoutProb = 0.1f };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(21);
        using var optimizer = new AdamWOptimizer(device, model.Parameters.All.ToList(), new AdamWSettings());
        var inputs = Batch();
        var losses = new List<double>();
        for (int step = 1; step <= 5; step++)
        {
            model.ZeroGrad();
            using (var tape = new Tape())
            {
                var outputs = model.Forward(tape, inputs, Dropouts.Training(config, 99, (uint)step), maskedOnly: true);
                losses.Add(outputs.ReadLoss()!.Value);
                tape.Backward();
            }
            optimizer.GradNorm();
            optimizer.Update(3e-3f);
        }
        return (losses, model.Parameters.Names.ToDictionary(n => n, n => model.Parameters.Get(n)));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Five_training_steps_with_dropout_match_the_cpu_run_and_lower_the_loss(string device)
    {
        var (losses, weights) = Train(device);
        var (cpuLosses, cpuWeights) = device == "cpu" ? (losses, weights) : Train("cpu");
        Assert.True(losses[^1] < losses[0], $"loss went from {losses[0]:F4} to {losses[^1]:F4}");
        Tol.AssertClose([.. cpuLosses], losses.Select(v => (float)v).ToArray(), Tol.F32Reduction, "losses of steps 1-5");
        foreach (var (name, w) in cpuWeights)
            Tol.AssertClose(Rand.ToDouble(w), weights[name], new Tol(1e-5, 1e-3, "weights after 5 AdamW steps"), name);
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void An_int8_forward_matches_the_cpu_accelerator_with_the_same_scales(string device)
    {
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        // Input scales calibrated once on the CPU and applied by parameter name, so both runs
        // quantize with identical scales and any difference is the accelerator's.
        Dictionary<string, float> ranges;
        float[] cpuLogits, floatLogits;
        using (var cpu = BertDevice.Open(DeviceSpec.Parse("cpu")))
        using (var model = CompressionTests.RandomModel(cpu, 31))
        {
            ranges = Int8Model.Calibrate(model, [new TaskBatch(batch.Inputs)]).ToDictionary(kv => kv.Key.Name, kv => kv.Value);
            floatLogits = Logits(model, batch);
            using var int8 = Int8Model.Quantize(model, ByName(model, ranges));
            cpuLogits = Logits(int8.Model, batch, int8.Hooks);
        }
        using var dev = Devices.OpenBert(device);
        using var devModel = CompressionTests.RandomModel(dev, 31);
        using var devInt8 = Int8Model.Quantize(devModel, ByName(devModel, ranges));
        var logits = Logits(devInt8.Model, batch, devInt8.Hooks);
        Tol.AssertClose(Rand.ToDouble(cpuLogits), logits, Tol.F32Reduction, $"int8 logits on {device}");
        double spread = floatLogits.Max() - floatLogits.Min();
        Assert.True(logits.Select((v, i) => Math.Abs(v - floatLogits[i])).Max() < 0.1 * spread, "int8 logits stay close to float");
    }

    private static Dictionary<Var, float> ByName(BertForTask model, Dictionary<string, float> ranges)
    {
        var vars = model.Parameters.All.ToDictionary(p => p.Var.Name, p => p.Var);
        return ranges.ToDictionary(kv => vars[kv.Key], kv => kv.Value);
    }

    private static float[] Logits(BertForTask model, TaskBatch batch, BertHooks? hooks = null)
    {
        using var tape = new Tape(recording: false);
        return model.Forward(tape, batch, Dropouts.Off, hooks).Logits.Value.ToHost();
    }
}
