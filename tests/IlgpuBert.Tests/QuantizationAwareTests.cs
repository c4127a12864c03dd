// Quantization-aware training (Q8BERT): the fake quantizer is the int8 path's dequantized value bit
// for bit; its straight-through gradient is the quantizer's slope over many rounding steps inside
// the range and 0 beyond the clip; with weights fake-quantized, the model's loss and every gradient
// match finite differences of the double reference at the quantized weights (the weights' own
// gradients included: the straight-through estimator passes dL/dW̃ to W); the input ranges follow
// their EMA in training passes only; the learned ranges survive the folder and `quantize` uses them.
using ILGPU.Runtime;
using IlgpuBert.Autograd;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class QuantizationAwareTests
{
    public static TheoryData<string, int, int, bool> Shapes()
    {
        var data = new TheoryData<string, int, int, bool>();
        foreach (var dev in Devices.Names)
            foreach (var (rows, cols) in new[] { (1, 1), (7, 33), (33, 129), (4, 0) })
                foreach (bool perRow in new[] { true, false })
                    data.Add(dev, rows, cols, perRow);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Shapes))]
    public void Fake_quantization_is_the_int8_value_dequantized_and_its_gradient_passes_where_not_clamped(string device, int rows, int cols, bool perRow)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows * 100 + cols);
        int n = rows * cols;
        var scales = Enumerable.Range(0, perRow ? rows : 1).Select(_ => (float)(0.01 + rng.NextDouble() * 0.1)).ToArray();
        float S(int i) => scales[perRow ? i / Math.Max(cols, 1) : 0];
        var x = new float[n];
        for (int i = 0; i < n; i++)
            x[i] = (i % 5) switch
            {
                0 => (rng.Next(-127, 128) + 0.5f) * S(i), // on (or one float step from) a rounding tie
                1 => (float)(rng.NextDouble() * 600 - 300) * S(i), // beyond the clip as often as not
                _ => (float)(rng.NextDouble() * 254 - 127) * S(i),
            };
        var dy = Rand.Normal(rng, n);
        using var bx = d.Accelerator.Allocate1D(n == 0 ? new float[1] : x);
        using var bs = d.Accelerator.Allocate1D(scales);
        using var bdy = d.Accelerator.Allocate1D(n == 0 ? new float[1] : dy);
        using var by = d.Accelerator.Allocate1D(Enumerable.Repeat(float.NaN, Math.Max(n, 1)).ToArray());
        using var bdx = d.Accelerator.Allocate1D(Enumerable.Repeat(float.NaN, Math.Max(n, 1)).ToArray());
        long rowLength = perRow ? cols : n;
        if (n == 0) rowLength = 1;
        d.Kernels.Quantization.FakeQuantize(bx.View, bs.View, by.View, n, rowLength);
        d.Kernels.Quantization.FakeQuantizeBackward(bx.View, bs.View, bdy.View, bdx.View, n, rowLength);
        var y = by.GetAsArray1D();
        var dx = bdx.GetAsArray1D();
        for (int i = 0; i < n; i++)
        {
            float s = S(i), inv = 1f / s;
            float expected = QuantizationKernels.QuantizeValue(x[i], inv) * s;
            Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(y[i]), $"y[{i}] = {y[i]}, the int8 path's value {expected} (x {x[i]}, s {s})");
            float code = MathF.Floor(x[i] * inv + 0.5f);
            Assert.Equal(code >= -127f && code <= 127f ? dy[i] : 0f, dx[i]);
        }
        if (n == 0) { Assert.True(float.IsNaN(y[0])); Assert.True(float.IsNaN(dx[0])); }
    }

    public static TheoryData<string, int, int> RangeShapes()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var dev in Devices.Names)
            foreach (var (rows, cols) in new[] { (1, 1), (3, 1000), (37, 129), (300, 7) })
                data.Add(dev, rows, cols);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(RangeShapes))]
    public void Row_scales_and_the_input_range_statistic_are_the_plain_maxima(string device, int rows, int cols)
    {
        var d = Devices.Get(device);
        var rng = new Random(rows * 7 + cols);
        int n = rows * cols;
        var w = Rand.Normal(rng, n);
        if (rows > 1) for (int c = 0; c < cols; c++) w[cols + c] = 0f; // a row of zeros: scale 1
        w[rng.Next(n)] = -9.5f; // the largest magnitude is negative
        using var bw = d.Accelerator.Allocate1D(w);
        using var bs = d.Accelerator.Allocate1D(Enumerable.Repeat(float.NaN, rows).ToArray());
        d.Kernels.Quantization.RowScales(bw.View, bs.View, rows, cols);
        var scales = bs.GetAsArray1D();
        for (int r = 0; r < rows; r++)
        {
            float m = w.Skip(r * cols).Take(cols).Max(MathF.Abs);
            Assert.Equal(m > 0f ? m / 127f : 1f, scales[r]);
        }

        float max = w.Max(MathF.Abs), decay = QuantizationAware.Decay;
        using var ema = d.Accelerator.Allocate1D(new[] { float.NaN });
        using var scale = d.Accelerator.Allocate1D(new[] { float.NaN });
        var q = d.Kernels.Quantization;
        q.UpdateRange(bw.View, n, ema.View, scale.View, decay, RangeMode.Start);
        Assert.Equal(max, ema.GetAsArray1D()[0]);
        Assert.Equal(max / 127f, scale.GetAsArray1D()[0]);
        var half = w.Select(v => v / 2).ToArray();
        using var bh = d.Accelerator.Allocate1D(half);
        q.UpdateRange(bh.View, n, ema.View, scale.View, decay, RangeMode.Update);
        float expected = decay * max + (1f - decay) * (max / 2);
        // One multiply-add, which a GPU compiler may fuse: within 2 units in the last place.
        Assert.True(Math.Abs(ema.GetAsArray1D()[0] - expected) <= 2 * MathF.BitIncrement(expected) - 2 * expected, $"EMA {ema.GetAsArray1D()[0]}, expected {expected}");
        float kept = ema.GetAsArray1D()[0];
        q.UpdateRange(bh.View, n, ema.View, scale.View, decay, RangeMode.Batch);
        Assert.Equal(kept, ema.GetAsArray1D()[0]);
        Assert.Equal(max / 2 / 127f, scale.GetAsArray1D()[0]);
    }

    [Fact]
    public void The_straight_through_gradient_is_the_quantizer_s_slope_over_many_steps_and_zero_beyond_the_clip()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        const float s = 0.05f, h = 16 * s;
        // Inside: |x| ≤ 100 s, so x ± h stays in range; beyond: |x| ≥ 127.5 s + h, so both points are clamped.
        float[] x = [0f, 0.013f, -1.7f, 2.49f, 4.99f, -5f, 6.6f + h + 127.5f * s, -(6.6f + h + 127.5f * s), 1000f];
        float FakeQuant(float v) => QuantizationKernels.QuantizeValue(v, 1f / s) * s;
        using var xv = new Var(Tensor.FromHost(device, x, x.Length), requiresGrad: true);
        using var scale = Tensor.FromHost(device, [s], 1);
        using (var tape = new Tape())
        {
            var y = Ops.FakeQuantize(tape, xv, scale);
            Assert.Equal(x.Select(FakeQuant), y.Value.ToHost());
            y.EnsureGrad().CopyFrom(Enumerable.Repeat(1f, x.Length).ToArray());
            tape.Backward();
        }
        var grad = xv.Grad!.ToHost();
        for (int i = 0; i < x.Length; i++)
        {
            // |FQ(v) − v| ≤ s/2 inside the range, so the central difference over ±h is 1 within s/(2h) = 1/32.
            double slope = (FakeQuant(x[i] + h) - FakeQuant(x[i] - h)) / (2.0 * h);
            bool inside = MathF.Abs(x[i]) <= 100 * s;
            if (inside) Assert.True(Math.Abs(slope - 1) <= s / (2 * h) + 1e-6, $"slope at {x[i]}: {slope}");
            else Assert.Equal(0.0, slope);
            Assert.Equal(inside ? 1f : 0f, grad[i]);
        }
    }

    /// <summary>Per row of a [rows, cols] weight, in float as the kernel computes: q·s with s = max|row| / 127.</summary>
    private static double[] FakeQuantizedRows(float[] w, int rows)
    {
        int cols = w.Length / rows;
        var result = new double[w.Length];
        for (int r = 0; r < rows; r++)
        {
            float max = 0f;
            for (int c = 0; c < cols; c++) max = MathF.Max(max, MathF.Abs(w[r * cols + c]));
            float s = max > 0f ? max / 127f : 1f;
            for (int c = 0; c < cols; c++) result[r * cols + c] = QuantizationKernels.QuantizeValue(w[r * cols + c], 1f / s) * s;
        }
        return result;
    }

    [Fact]
    public void With_fake_quantized_weights_the_loss_and_every_gradient_match_the_double_reference_at_the_quantized_weights()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var spec = TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls);
        using var model = TaskModelTests.RandomModel(device, spec, 12);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        using var qat = new QuantizationAware { FakeQuantizeInputs = false };
        double loss;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, batch, Dropouts.Off, qat.Hooks(training: true));
            loss = outputs.ReadLoss()!.Value;
            tape.Backward();
        }
        var quantized = model.Parameters.Names.Where(n => qat.InputMax.ContainsKey(model.Parameters[n].Var)).ToHashSet();
        Assert.Contains("classifier.weight", quantized);
        Assert.Contains("bert.encoder.layer.1.attention.self.key.weight", quantized);
        Assert.Equal(6 * model.Config.NumHiddenLayers + 2, quantized.Count); // q, k, v, attention output, intermediate, output; pooler, classifier
        // The reference's weights are the fake-quantized ones; the quantization moves them (so this checks something).
        var p = model.Parameters.Names.ToDictionary(n => n, n => quantized.Contains(n)
            ? FakeQuantizedRows(model.Parameters.Get(n), model.Parameters[n].Shape[0]) : Rand.ToDouble(model.Parameters.Get(n)));
        Assert.True(quantized.All(n => p[n].Zip(model.Parameters.Get(n)).Any(v => v.First != v.Second)));
        var (_, expectedLoss) = TaskModelTests.Reference(spec, p, batch);
        Tol.AssertClose([expectedLoss], [(float)loss], new Tol(1e-5, 1e-4, "task outputs"), "loss at the quantized weights");
        var gradTol = new Tol(1e-5, 2e-3, "task gradients");
        foreach (var name in model.Parameters.Names)
        {
            var values = p[name];
            // The rounding steps are never crossed: the reference is evaluated at fixed quantized
            // weights, and moving any other parameter moves no code.
            var expected = Reference.NumericGradient(v =>
            {
                p[name] = v;
                return TaskModelTests.Reference(spec, p, batch).Loss;
            }, values, 1e-5);
            p[name] = values;
            Tol.AssertClose(expected, model.Parameters.GetGrad(name), gradTol, $"d loss / d {name}");
        }
    }

    [Fact]
    public void Input_ranges_follow_their_EMA_in_training_passes_only_and_quantize_uses_them()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        var spec = TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls);
        using var model = TaskModelTests.RandomModel(device, spec, 13);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        using var qat = new QuantizationAware();
        var classifier = model.Parameters["classifier.weight"].Var;
        var seen = new List<float>();
        var spy = new BertHooks
        {
            Linear = (t, x, w, b, act) =>
            {
                if (w == classifier) seen.Add(x.Value.ToHost().Max(MathF.Abs));
                return qat.Hooks(training: true).Linear!(t, x, w, b, act);
            },
        };
        void Pass(BertHooks hooks)
        {
            using var tape = new Tape(recording: false);
            model.Forward(tape, batch, Dropouts.Off, hooks);
        }
        Pass(spy);
        Assert.Equal(seen[0], qat.InputMax[classifier]); // the first batch starts the average
        model.Parameters.Set("bert.pooler.dense.bias", model.Parameters.Get("bert.pooler.dense.bias").Select(v => v + 0.5f).ToArray());
        Pass(spy);
        Assert.NotEqual(seen[0], seen[1]);
        Assert.Equal(QuantizationAware.Decay * seen[0] + (1 - QuantizationAware.Decay) * seen[1], qat.InputMax[classifier]);
        float learned = qat.InputMax[classifier];
        Pass(qat.Hooks(training: false));
        Assert.Equal(learned, qat.InputMax[classifier]);

        // Saved in config.json and read back by the folder's parameter names; quantize takes them as the input scales.
        var extra = (System.Text.Json.Nodes.JsonObject)model.Config.Extra.DeepClone();
        extra[QuantizationAware.ConfigKey] = qat.ToConfig(model.Parameters);
        var config = model.Config with { Extra = extra };
        var read = QuantizationAware.FromConfig(config, model.Parameters, "config.json")!;
        Assert.Equal(qat.InputMax.Count, read.Count);
        foreach (var (w, max) in qat.InputMax) Assert.Equal(max, read[w]);
        using var int8 = Int8Model.Quantize(model, read);
        int8.Save(dir.Path, null, null);
        var saved = IlgpuBert.Checkpoints.SafeTensors.Read(System.IO.Path.Combine(dir.Path, BertFolder.WeightsFile));
        Assert.Equal(learned / 127f, saved["classifier.input_scale"].Data[0]);

        var bad = (System.Text.Json.Nodes.JsonObject)extra.DeepClone();
        bad[QuantizationAware.ConfigKey]!["input_max"]!["bert.encoder.layer.9.output.dense"] = 1.0;
        Assert.Contains("does not have", Assert.Throws<IlgpuBert.Checkpoints.CheckpointException>(() => QuantizationAware.FromConfig(model.Config with { Extra = bad }, model.Parameters, "config.json")).Message);
        bad = (System.Text.Json.Nodes.JsonObject)extra.DeepClone();
        bad[QuantizationAware.ConfigKey]!["input_max"]!["bert.encoder.layer.0.attention.self.key"] = 12345.0;
        Assert.Contains("sibling projections", Assert.Throws<IlgpuBert.Checkpoints.CheckpointException>(() => QuantizationAware.FromConfig(model.Config with { Extra = bad }, model.Parameters, "config.json")).Message);
    }

    [Fact]
    public void Finetune_qat_learns_ranges_quantize_uses_them_and_the_int8_model_scores_what_training_reported()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("train.tsv"), 48, 1);
        FineTuningTests.WriteClassification(dir.File("dev.tsv"), 24, 2);
        (int, string, string) Cli(params string[] args) => CliRunner.Run([.. args, "--device", "cpu", "--text-column", "sentence"]);
        var (code, stdout, err) = Cli("finetune", "--model", pretrained, "--train", dir.File("train.tsv"), "--eval", dir.File("dev.tsv"), "--out", dir.File("qat"),
            "--epochs", "2", "--batch-size", "16", "--qat", "int8");
        Assert.True(code == 0, err);
        Assert.Contains("quantization-aware training", stdout);
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("qat/config.json")))!;
        Assert.Equal(QuantizationAware.Method, config[QuantizationAware.ConfigKey]!["method"]!.GetValue<string>());
        // A toy task is no default-task model, so post-training quantization would need --calibrate; QAT's ranges need none.
        (code, stdout, err) = Cli("quantize", "--model", dir.File("qat"), "--out", dir.File("int8"));
        Assert.True(code == 0, err);
        Assert.Contains("learned in quantization-aware training", stdout);
        (code, stdout, err) = Cli("evaluate", "--model", dir.File("int8"), "--eval", dir.File("dev.tsv"));
        Assert.True(code == 0, err);
        double int8 = System.Text.Json.Nodes.JsonNode.Parse(stdout)!["accuracy"]!.GetValue<double>();
        double trained = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("qat/eval.json")))!["accuracy"]!.GetValue<double>();
        Assert.Equal(trained, int8); // fine-tuning evaluated with fake quantization: what the int8 model computes

        // Two-stage fine-tuning from the QAT folder without --qat: the old ranges do not follow the new weights.
        (code, _, err) = Cli("finetune", "--init-from", dir.File("qat"), "--train", dir.File("train.tsv"), "--out", dir.File("stage2"), "--epochs", "1", "--batch-size", "16");
        Assert.True(code == 0, err);
        Assert.Null(System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("stage2/config.json")))![QuantizationAware.ConfigKey]);

        foreach (var args in new[]
        {
            new[] { "finetune", "--model", pretrained, "--train", dir.File("train.tsv"), "--out", dir.File("x"), "--qat", "int4" },
            ["quantize", "--model", dir.File("qat"), "--calibrate", dir.File("train.tsv"), "--out", dir.File("x")],
        })
        {
            (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{string.Join(" ", args)}: exit {code}\n{err}");
            Assert.Single(err.Trim().Split('\n'));
            Assert.False(Directory.Exists(dir.File("x")));
        }
    }
}
