using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Training;

namespace IlgpuBert.Tests;

/// <summary>
/// The compression ops and model transforms: int8 Linear against an exact integer-then-double
/// reference, the distillation losses against double references and finite differences, head
/// importance against finite differences of the loss in the head mask, structural head pruning and
/// layer dropping against masking / the original model, magnitude masks through an optimizer step.
/// </summary>
public class CompressionTests
{
    /// <summary>Four heads of 4 so that pruning leaves some in each layer.</summary>
    internal static BertConfig Config => TaskModelTests.Config with { NumAttentionHeads = 4 };

    internal static BertForTask RandomModel(BertDevice device, int seed, BertConfig? config = null)
    {
        var model = new BertForTask(device, config ?? Config, TaskModelTests.Spec(TaskKind.Classification, Pooling.Cls));
        model.Parameters.Initialize(seed);
        var rng = new Random(seed + 1);
        foreach (var name in model.Parameters.Names.ToList())
        {
            var data = model.Parameters.Get(name);
            var noise = Rand.Normal(rng, data.Length, name.Contains("LayerNorm.weight") ? 0.1 : 0.3);
            model.Parameters.Set(name, data.Select((v, i) => v + noise[i]).ToArray());
        }
        return model;
    }

    private static float[] Logits(BertForTask model, TaskBatch batch, BertHooks? hooks = null)
    {
        using var tape = new Tape(recording: false);
        return model.Forward(tape, batch, Dropouts.Off, hooks).Logits.Value.ToHost();
    }

    private static double Loss(BertForTask model, TaskBatch batch, BertHooks? hooks = null)
    {
        using var tape = new Tape(recording: false);
        return model.Forward(tape, batch, Dropouts.Off, hooks).ReadLoss()!.Value;
    }

    [Theory]
    [InlineData(null)]
    [InlineData(ActivationKind.GeluErf)]
    public void Int8Linear_equals_the_integer_product_rescaled_in_double(ActivationKind? act)
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(11);
        const int n = 7, inDim = 33, outDim = 13;
        var x = Rand.Normal(rng, n * inDim);
        var w = Rand.Normal(rng, outDim * inDim, 0.2);
        var b = Rand.Normal(rng, outDim);
        float inputScale = x.Max(MathF.Abs) / 127f * 0.8f; // some inputs clip
        var (q, scales) = Int8Model.QuantizeWeight(w, outDim, inDim);
        using var qw = Int8Tensor.FromHost(device, q, outDim, inDim);
        using var sw = Tensor.FromHost(device, scales, outDim);
        using var tape = new Tape(recording: false);
        var xv = tape.Own(new Var(Tensor.FromHost(device, x, n, inDim)));
        var bv = tape.Own(new Var(Tensor.FromHost(device, b, outDim)));
        var y = Ops.Int8Linear(tape, xv, qw, sw, inputScale, bv, act).Value.ToHost();

        var expected = new double[n * outDim];
        for (int r = 0; r < n; r++)
            for (int o = 0; o < outDim; o++)
            {
                long acc = 0;
                for (int k = 0; k < inDim; k++) acc += QuantizationKernels.QuantizeValue(x[r * inDim + k], 1f / inputScale) * q[o * inDim + k];
                double v = acc * ((double)inputScale * scales[o]) + b[o];
                expected[r * outDim + o] = act is null ? v : Reference.GeluErf(v);
            }
        Tol.AssertClose(expected, y, Tol.F32Reduction, "int8 linear");
        // Per-channel weight quantization itself: every weight within half a step of its channel's scale.
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(w[i] - q[i] * scales[i / inDim]) <= 0.5 * scales[i / inDim] * (1 + 1e-6));

        using var recording = new Tape();
        var trainable = recording.Own(new Var(Tensor.FromHost(device, x, n, inDim), requiresGrad: true));
        Assert.Throws<InvalidOperationException>(() => Ops.Int8Linear(recording, trainable, qw, sw, inputScale, null));
    }

    [Fact]
    public void Soft_target_KL_matches_the_double_reference_and_its_gradient()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(12);
        const int rows = 5, c = 7;
        const float t = 2.5f;
        var z = Rand.Normal(rng, rows * c, 2);
        var teacher = Rand.Normal(rng, rows * c, 2);
        double Ref(double[] s)
        {
            double total = 0;
            for (int r = 0; r < rows; r++)
            {
                var p = Softmax(teacher.Skip(r * c).Take(c).Select(v => v / (double)t).ToArray());
                var q = Softmax(s.Skip(r * c).Take(c).Select(v => v / t).ToArray());
                for (int j = 0; j < c; j++) total += p[j] * (Math.Log(p[j]) - Math.Log(q[j]));
            }
            return total / rows;
        }
        using var tape = new Tape();
        using var zv = new Var(Tensor.FromHost(device, z, rows, c), requiresGrad: true); // not the tape's: it frees gradients of what it owns
        var loss = Ops.SoftTargetKl(tape, zv, teacher, t);
        loss.Weight = 3f;
        tape.Backward();
        Tol.AssertClose([Ref(Rand.ToDouble(z))], [loss.Read()], Tol.F32Reduction, "KL");
        var numeric = Reference.NumericGradient(Ref, Rand.ToDouble(z)).Select(g => 3 * g).ToArray();
        Tol.AssertClose(numeric, zv.Grad!.ToHost(), Tol.F32Reduction, "dKL/dz (weighted)");
        Assert.True(loss.Read() >= 0);
    }

    [Fact]
    public void Hidden_state_MSE_matches_the_double_reference_and_its_gradient()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(13);
        var h = Rand.Normal(rng, 6 * 5);
        var target = Rand.Normal(rng, 6 * 5);
        using var tape = new Tape();
        using var hv = new Var(Tensor.FromHost(device, h, 6, 5), requiresGrad: true);
        var loss = Ops.MeanSquaredError(tape, hv, target);
        loss.Weight = 0.5f;
        tape.Backward();
        double Ref(double[] x) => x.Select((v, i) => (v - target[i]) * (v - target[i])).Average();
        Tol.AssertClose([Ref(Rand.ToDouble(h))], [loss.Read()], Tol.F32Reduction, "MSE");
        Tol.AssertClose(Reference.NumericGradient(Ref, Rand.ToDouble(h)).Select(g => 0.5 * g).ToArray(), hv.Grad!.ToHost(), Tol.F32Reduction, "dMSE");
    }

    private static double[] Softmax(double[] z)
    {
        double max = z.Max();
        var e = z.Select(v => Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    [Fact]
    public void Attention_probabilities_match_the_double_reference_and_backpropagate_into_q_and_k()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(14);
        const int b = 2, s = 5, nh = 2, hd = 3;
        var qkv = Rand.Normal(rng, b * s * 3 * nh * hd);
        int[] mask = [1, 1, 1, 1, 1, 1, 1, 0, 1, 0];
        var r = Rand.Normal(rng, b * nh * s * s); // L = Σ P ⊙ R
        var shape = AttentionShape.Create(b, s, nh, hd);
        double[] Probs(double[] x)
        {
            var p = new double[b * nh * s * s];
            for (int bi = 0; bi < b; bi++)
                for (int h = 0; h < nh; h++)
                    for (int i = 0; i < s; i++)
                    {
                        var scores = new double[s];
                        for (int j = 0; j < s; j++)
                        {
                            double dot = 0;
                            for (int d = 0; d < hd; d++) dot += x[shape.Qkv(bi, i, 0, h, d)] * x[shape.Qkv(bi, j, 1, h, d)];
                            scores[j] = mask[bi * s + j] == 1 ? dot / Math.Sqrt(hd) : double.NegativeInfinity;
                        }
                        var row = Softmax(scores);
                        Array.Copy(row, 0, p, ((bi * nh + h) * s + i) * s, s);
                    }
            return p;
        }
        using var tape = new Tape();
        using var qv = new Var(Tensor.FromHost(device, qkv, b, s, 3 * nh * hd), requiresGrad: true);
        var masks = tape.Own(new DeviceInts(device, mask));
        var probs = Ops.AttentionProbs(tape, qv, masks, shape);
        var got = probs.Value.ToHost();
        Tol.AssertClose(Probs(Rand.ToDouble(qkv)), got, Tol.F32Reduction, "probs");
        probs.AddGrad(tape.Own(Tensor.FromHost(device, r, probs.Shape)));
        tape.Backward();
        var numeric = Reference.NumericGradient(x => Reference.Dot(Probs(x), Rand.ToDouble(r)), Rand.ToDouble(qkv));
        Tol.AssertClose(numeric, qv.Grad!.ToHost(), Tol.F32Reduction, "dqkv");
        Assert.Contains(numeric, g => Math.Abs(g) > 1e-3); // the check is not vacuous
    }

    [Fact]
    public void Head_importance_is_the_absolute_finite_difference_of_the_loss_in_each_head_mask()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, 21);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        var importance = Pruning.Importance(model, [batch], normalizeLayers: false);
        const double eps = 1e-2;
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < 4; h++)
            {
                double At(double value)
                {
                    var masks = Enumerable.Range(0, 2).Select(layer => (Var?)new Var(Tensor.FromHost(device,
                        Enumerable.Range(0, 4).Select(head => layer == l && head == h ? (float)value : 1f).ToArray(), 4))).ToList();
                    try { return Loss(model, batch, new BertHooks { HeadMasks = masks }); }
                    finally { foreach (var m in masks) m!.Dispose(); }
                }
                double fd = Math.Abs((At(1 + eps) - At(1 - eps)) / (2 * eps));
                // Central differences in float: truncation O(ε²) and rounding ~1e-7/ε, both far below 1e-4.
                Assert.True(Math.Abs(fd - importance.Scores[l][h]) <= 1e-4 + 1e-2 * fd, $"layer {l} head {h}: importance {importance.Scores[l][h]}, |finite difference| {fd}");
            }
        Assert.Contains(importance.Scores.SelectMany(s => s.Values), v => v > 1e-3);
        var normalized = Pruning.Importance(model, [batch]);
        foreach (var layer in normalized.Scores) Assert.Equal(1.0, Math.Sqrt(layer.Values.Sum(v => v * v)), 6);
        Assert.True(model.Parameters.All.All(p => p.Var.RequiresGrad), "parameters' RequiresGrad restored");
    }

    [Fact]
    public void Structural_head_pruning_gives_the_outputs_of_masking_those_heads_and_saves_in_HF_layout()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, 22);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        var prune = new Dictionary<int, int[]> { [0] = [1, 3], [1] = [0] };
        var masks = Pruning.Masks(model, prune);
        var masked = Logits(model, batch, new BertHooks { HeadMasks = masks });
        foreach (var m in masks) m!.Dispose();
        using var pruned = Pruning.PruneHeads(model, prune);
        Tol.AssertClose(Rand.ToDouble(masked), Logits(pruned, batch), Tol.F32Reduction, "pruned vs masked logits");
        Assert.NotEqual(masked, Logits(model, batch)); // masking changed something
        Assert.Equal([2, 3], pruned.Bert.Layers.Select(l => l.Heads));
        Assert.Equal([2 * 4, 16], pruned.Parameters["bert.encoder.layer.0.attention.self.query.weight"].Shape);
        Assert.Equal([16, 3 * 4], pruned.Parameters["bert.encoder.layer.1.attention.output.dense.weight"].Shape);

        // A second round names original indices; save and load keep pruned_heads and the outputs.
        using var again = Pruning.PruneHeads(pruned, new Dictionary<int, int[]> { [0] = [2] });
        Assert.Equal([0], again.Config.HeadsOf(0));
        Assert.Throws<ArgumentException>(() => Pruning.PruneHeads(again, new Dictionary<int, int[]> { [0] = [1] })); // already gone
        Assert.Throws<CheckpointException>(() => Pruning.PruneHeads(again, new Dictionary<int, int[]> { [0] = [0] })); // none would be left
        using var dir = new TempDir();
        again.Save(dir.Path);
        Assert.Contains("\"pruned_heads\"", File.ReadAllText(dir.File("config.json")));
        using var loaded = BertForTask.Load(device, dir.Path);
        Assert.Equal(Logits(again, batch), Logits(loaded, batch));
    }

    [Fact]
    public void Least_important_and_random_selections_keep_a_head_in_every_layer()
    {
        var scores = new HeadImportance([new Dictionary<int, double> { [0] = 0.1, [1] = 0.2, [2] = 0.9 }, new Dictionary<int, double> { [0] = 0.05, [1] = 0.95 }]);
        var least = Pruning.LeastImportant(scores, 3);
        Assert.Equal([0, 1], least[0]);
        Assert.Equal([0], least[1]);
        Assert.Throws<ArgumentException>(() => Pruning.LeastImportant(scores, 4)); // 5 heads, 2 layers
        var config = Config.WithPrunedHeads(new Dictionary<int, int[]> { [0] = [3], [1] = [2, 3] }); // 3 heads left, then 2
        var draws = new HashSet<string>();
        for (int seed = 0; seed < 5; seed++)
        {
            var random = Pruning.RandomHeads(config, 3, seed);
            draws.Add(string.Join(";", random.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}:{string.Join(",", kv.Value)}")));
            Assert.Equal(3, random.Values.Sum(v => v.Length));
            Assert.True(random.All(kv => kv.Value.All(h => config.HeadsOf(kv.Key).Contains(h))), "only heads the model still has");
            Assert.True(random.GetValueOrDefault(0, []).Length < 3 && random.GetValueOrDefault(1, []).Length < 2);
        }
        Assert.True(draws.Count > 1, "different seeds draw different heads");
        Assert.Throws<ArgumentException>(() => Pruning.RandomHeads(config, 4, 0));
    }

    [Fact]
    public void Dropping_a_layer_gives_the_encoder_output_of_the_layers_kept()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, 23);
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        using var dropped = Pruning.DropLayers(model, [1]);
        Assert.Equal(1, dropped.Config.NumHiddenLayers);
        using var tape = new Tape(recording: false);
        var full = model.Forward(tape, batch, Dropouts.Off).Encoder.HiddenStates[1].Value.ToHost();
        var kept = dropped.Forward(tape, batch, Dropouts.Off).Encoder.LastHiddenState.Value.ToHost();
        Assert.Equal(full, kept);
        Assert.Throws<ArgumentException>(() => Pruning.DropLayers(model, [0, 1]));
    }

    [Fact]
    public void Magnitude_pruning_zeroes_the_smallest_weights_and_masks_keep_them_zero_through_training()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, 24);
        var before = Pruning.MagnitudeTargets(model.Bert).SelectMany(w => w.Value.ToHost()).ToArray();
        long zeroed = Pruning.PruneMagnitude(model.Bert, model.Config, 0.4, out var config);
        Assert.Equal((long)Math.Round(0.4 * before.Length), zeroed);
        var after = Pruning.MagnitudeTargets(model.Bert).SelectMany(w => w.Value.ToHost()).ToArray();
        float largestPruned = before.Where((v, i) => after[i] == 0f).Max(MathF.Abs);
        float smallestKept = before.Where((v, i) => after[i] != 0f).Min(MathF.Abs);
        Assert.True(largestPruned <= smallestKept);

        using var masks = MagnitudeMasks.For(model.Bert, config)!;
        Assert.Equal(zeroed, masks.Zeros);
        Assert.Null(MagnitudeMasks.For(model.Bert, model.Config)); // no sparsity in the original config
        var trainable = model.Parameters.All.ToList();
        using var optimizer = new AdamWOptimizer(device, trainable, new AdamWSettings());
        new FineTuner(device, TextWriter.Null).TrainStep(model, TaskModelTests.Batch(TaskKind.Classification), new FineTuneOptions(), 1);
        optimizer.Update(1e-2f);
        masks.Apply();
        var trained = Pruning.MagnitudeTargets(model.Bert).SelectMany(w => w.Value.ToHost()).ToArray();
        Assert.Equal(zeroed, trained.LongCount(v => v == 0f));
        Assert.True(trained.Where((v, i) => after[i] != 0f && v != after[i]).Any(), "the kept weights trained");
    }

    [Fact]
    public void An_int8_model_calibrates_saves_and_loads_to_the_same_outputs_close_to_float()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var batch = TaskModelTests.Batch(TaskKind.Classification);
        using var dir = new TempDir();
        float[] floatLogits, int8Logits;
        using (var model = RandomModel(device, 25))
        {
            floatLogits = Logits(model, batch);
            var ranges = Int8Model.Calibrate(model, [new TaskBatch(batch.Inputs)]);
            Assert.Equal(2 * 4 + 2, ranges.Count); // 4 Linear layers per layer, pooler, classifier
            using var int8 = Int8Model.Quantize(model, ranges);
            int8Logits = Logits(int8.Model, batch, int8.Hooks);
            int8.Save(dir.Path, null, 3);
        }
        using (var loaded = Int8Model.Load(device, dir.Path))
            Assert.Equal(int8Logits, Logits(loaded.Model, batch, loaded.Hooks));
        // Quantization error: small against the logits' spread, not zero.
        double spread = floatLogits.Max() - floatLogits.Min(), worst = floatLogits.Select((v, i) => Math.Abs(v - int8Logits[i])).Max();
        Assert.True(worst > 0 && worst < 0.1 * spread, $"int8 logits differ from float by up to {worst} (spread {spread})");
        var file = SafeTensors.Read(dir.File("model.safetensors"));
        Assert.Equal("I8", file["bert.encoder.layer.0.attention.self.key.weight"].Dtype);
        Assert.Equal([16], file["bert.encoder.layer.0.attention.self.key.weight_scale"].Shape);
        Assert.Equal("F32", file["bert.embeddings.word_embeddings.weight"].Dtype);
        var e = Assert.Throws<CheckpointException>(() => BertForTask.Load(device, dir.Path));
        Assert.Contains("int8", e.Message);
    }
}
