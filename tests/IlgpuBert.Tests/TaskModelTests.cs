using IlgpuBert.Autograd;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

/// <summary>
/// The task heads against a double-precision reference built on BertReference (HF's
/// BertForSequenceClassification / TokenClassification / QuestionAnswering, each pooling written
/// out plainly), forward and every parameter's gradient by finite differences.
/// </summary>
public class TaskModelTests
{
    internal static BertConfig Config => new()
    {
        VocabSize = 23, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32,
        MaxPositionEmbeddings = 12, TypeVocabSize = 2, HiddenDropoutProb = 0.1f, AttentionProbsDropoutProb = 0.1f,
    };

    internal static TaskSpec Spec(TaskKind kind, Pooling pooling) => kind switch
    {
        TaskKind.Regression => new TaskSpec(kind, [], pooling),
        TaskKind.QuestionAnswering => new TaskSpec(kind, [], pooling),
        TaskKind.TokenClassification => new TaskSpec(kind, ["B-LOC", "I-LOC", "O"], pooling),
        _ => new TaskSpec(kind, ["negative", "neutral", "positive"], pooling),
    };

    /// <summary>A task model with every parameter randomised (biases, LayerNorm and the layer mix too).</summary>
    internal static BertForTask RandomModel(BertDevice device, TaskSpec spec, int seed)
    {
        var model = new BertForTask(device, Config, spec);
        model.Parameters.Initialize(seed);
        var rng = new Random(seed + 1);
        foreach (var name in model.Parameters.Names.ToList())
        {
            var data = model.Parameters.Get(name);
            double scale = name.Contains("LayerNorm.weight") ? 0.1 : name.Contains("scalar_mix") ? 0.5 : 0.2;
            var noise = Rand.Normal(rng, data.Length, scale);
            model.Parameters.Set(name, data.Select((v, i) => v + noise[i]).ToArray());
        }
        return model;
    }

    internal static TaskBatch Batch(TaskKind kind)
    {
        int[][] ids = [[2, 7, 9, 11, 3, 14, 3], [2, 5, 6, 3, 20, 0, 0], [2, 8, 8, 12, 3, 0, 0]];
        int[][] types = [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]];
        int[][] mask = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0]];
        var inputs = BertInputs.FromRows(ids, types, mask);
        return kind switch
        {
            TaskKind.Regression => new TaskBatch(inputs, Targets: [0.5f, -1.25f, 2f]),
            TaskKind.TokenClassification => new TaskBatch(inputs, Labels:
                [-100, 0, 1, 2, -100, 2, -100, -100, 2, 0, -100, -100, -100, -100, -100, 0, -100, 2, -100, -100, -100]),
            TaskKind.QuestionAnswering => new TaskBatch(inputs, StartPositions: [5, 4, 0], EndPositions: [6, 4, 0]),
            _ => new TaskBatch(inputs, Labels: [2, 0, 1]),
        };
    }

    /// <summary>The reference: HF's head over BertReference's hidden states, each pooling in plain loops.</summary>
    internal static (double[] Logits, double Loss) Reference(TaskSpec spec, Dictionary<string, double[]> p, TaskBatch batch)
    {
        var c = Config;
        int h = c.HiddenSize, b = batch.Inputs.Batch, s = batch.Inputs.SeqLen, t = b * s;
        var full = new Dictionary<string, double[]>(p);
        void Dummy(string name, int n) => full.TryAdd(name, new double[n]);
        Dummy("bert.pooler.dense.weight", h * h); Dummy("bert.pooler.dense.bias", h);
        Dummy("cls.predictions.transform.dense.weight", h * h); Dummy("cls.predictions.transform.dense.bias", h);
        Dummy("cls.predictions.transform.LayerNorm.weight", h); Dummy("cls.predictions.transform.LayerNorm.bias", h);
        Dummy("cls.predictions.bias", c.VocabSize); Dummy("cls.seq_relationship.weight", 2 * h); Dummy("cls.seq_relationship.bias", 2);
        var o = new BertReference(c, full).Forward(batch.Inputs);
        var states = o.Hidden;

        // Token features [T, F].
        double[] tokens;
        int f = h;
        switch (spec.Pooling)
        {
            case Pooling.ConcatLast4:
                int k = Math.Min(4, states.Count);
                f = k * h;
                tokens = new double[t * f];
                for (int r = 0; r < t; r++)
                    for (int l = 0; l < k; l++)
                        for (int j = 0; j < h; j++) tokens[r * f + l * h + j] = states[states.Count - k + l][r * h + j];
                break;
            case Pooling.ScalarMix:
                var w = p["ilgpu_bert.scalar_mix.weights"];
                double gamma = p["ilgpu_bert.scalar_mix.gamma"][0], z = w.Sum(Math.Exp);
                tokens = new double[t * h];
                for (int l = 0; l < states.Count; l++)
                    for (int i = 0; i < t * h; i++) tokens[i] += gamma * Math.Exp(w[l]) / z * states[l][i];
                break;
            default:
                tokens = states[^1];
                break;
        }
        double[] features = tokens;
        int rows = t;
        if (spec.IsSequenceLevel)
        {
            rows = b;
            features = new double[b * f];
            for (int r = 0; r < b; r++)
            {
                if (spec.Pooling == Pooling.Cls) Array.Copy(o.Pooled, r * h, features, r * f, h);
                else if (spec.Pooling == Pooling.Mean)
                {
                    int n = Enumerable.Range(0, s).Count(i => batch.Inputs.AttentionMask[r * s + i] == 1);
                    for (int i = 0; i < s; i++)
                        if (batch.Inputs.AttentionMask[r * s + i] == 1)
                            for (int j = 0; j < h; j++) features[r * f + j] += tokens[(r * s + i) * h + j] / n;
                }
                else Array.Copy(tokens, r * s * f, features, r * f, f);
            }
        }
        string head = spec.Kind == TaskKind.QuestionAnswering ? "qa_outputs" : "classifier";
        int outputs = spec.Outputs;
        var W = p[head + ".weight"];
        var bias = p[head + ".bias"];
        var logits = new double[rows * outputs];
        for (int r = 0; r < rows; r++)
            for (int q = 0; q < outputs; q++)
            {
                double sum = bias[q];
                for (int j = 0; j < f; j++) sum += features[r * f + j] * W[q * f + j];
                logits[r * outputs + q] = sum;
            }
        double loss = spec.Kind switch
        {
            TaskKind.Regression => logits.Select((v, i) => (v - batch.Targets![i]) * (v - batch.Targets[i])).Average(),
            TaskKind.QuestionAnswering =>
                0.5 * IlgpuBert.Tests.Reference.CrossEntropy(Enumerable.Range(0, t).Select(i => logits[i * 2]).ToArray(), batch.StartPositions!, b, s)
                + 0.5 * IlgpuBert.Tests.Reference.CrossEntropy(Enumerable.Range(0, t).Select(i => logits[i * 2 + 1]).ToArray(), batch.EndPositions!, b, s),
            _ => IlgpuBert.Tests.Reference.CrossEntropy(logits, batch.Labels!, rows, outputs),
        };
        return (logits, loss);
    }

    public static TheoryData<TaskKind, Pooling> Heads => new()
    {
        { TaskKind.Classification, Pooling.Cls },
        { TaskKind.PairClassification, Pooling.Mean },
        { TaskKind.Classification, Pooling.ConcatLast4 },
        { TaskKind.Classification, Pooling.ScalarMix },
        { TaskKind.Regression, Pooling.Cls },
        { TaskKind.TokenClassification, Pooling.Cls },
        { TaskKind.TokenClassification, Pooling.ScalarMix },
        { TaskKind.QuestionAnswering, Pooling.Cls },
        { TaskKind.QuestionAnswering, Pooling.ConcatLast4 },
    };

    [Theory]
    [MemberData(nameof(Heads))]
    public void Head_logits_loss_and_every_gradient_match_the_double_reference(TaskKind kind, Pooling pooling)
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var spec = Spec(kind, pooling);
        using var model = RandomModel(device, spec, 11);
        var batch = Batch(kind);
        var p = model.Parameters.Names.ToDictionary(n => n, n => Rand.ToDouble(model.Parameters.Get(n)));
        var (expectedLogits, expectedLoss) = Reference(spec, p, batch);

        double loss;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, batch, Dropouts.Off);
            var tol = new Tol(1e-5, 1e-4, "task outputs");
            Tol.AssertClose(expectedLogits, outputs.Logits.Value.ToHost(), tol, "logits");
            loss = outputs.ReadLoss()!.Value;
            Tol.AssertClose([expectedLoss], [(float)loss], tol, "loss");
            tape.Backward();
        }
        var gradTol = new Tol(1e-5, 2e-3, "task gradients");
        // The head, the layer mix and the pooler, plus the encoder tensors the pooling reads most
        // directly (the encoder's own gradients are checked in full by ModelTests).
        foreach (var name in model.Parameters.Names.Where(n => BertForTask.IsHead(n) || n.StartsWith("bert.pooler.")
            || n.StartsWith("bert.embeddings.") || n.StartsWith("bert.encoder.layer.1.output.")))
        {
            var values = p[name];
            var expected = IlgpuBert.Tests.Reference.NumericGradient(v =>
            {
                p[name] = v;
                return Reference(spec, p, batch).Loss;
            }, values, 1e-5);
            p[name] = values;
            Tol.AssertClose(expected, model.Parameters.GetGrad(name), gradTol, $"d loss / d {name}");
        }
    }

    [Fact]
    public void Heads_use_HF_names_and_layouts()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var seq = new BertForTask(device, Config, Spec(TaskKind.Classification, Pooling.Cls));
        Assert.Contains("classifier.weight", seq.Parameters.Names);
        Assert.Contains("bert.pooler.dense.weight", seq.Parameters.Names);
        Assert.Equal([3, 16], seq.Parameters["classifier.weight"].Shape);
        using var tok = new BertForTask(device, Config, Spec(TaskKind.TokenClassification, Pooling.Cls));
        Assert.DoesNotContain("bert.pooler.dense.weight", tok.Parameters.Names); // add_pooling_layer=False, as HF
        using var qa = new BertForTask(device, Config, Spec(TaskKind.QuestionAnswering, Pooling.ConcatLast4));
        Assert.Equal([2, 3 * 16], qa.Parameters["qa_outputs.weight"].Shape); // L + 1 = 3 outputs for a 2-layer model
        Assert.Equal("BertForQuestionAnswering", qa.Config.Extra["architectures"]![0]!.GetValue<string>());
        Assert.Throws<ArgumentException>(() => new BertForTask(device, Config, Spec(TaskKind.TokenClassification, Pooling.Mean)));
        Assert.Throws<ArgumentException>(() => new BertForTask(device, Config, new TaskSpec(TaskKind.Classification, ["only"])));
    }

    [Fact]
    public void A_fine_tuned_model_saves_and_loads_in_HF_layout_with_its_labels()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        var spec = Spec(TaskKind.Classification, Pooling.ScalarMix);
        using var model = RandomModel(device, spec, 4);
        model.Save(dir.Path);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!;
        Assert.Equal("BertForSequenceClassification", json["architectures"]![0]!.GetValue<string>());
        Assert.Equal("positive", json["id2label"]!["2"]!.GetValue<string>());
        Assert.Equal(1, json["label2id"]!["neutral"]!.GetValue<int>());
        Assert.Equal("single_label_classification", json["problem_type"]!.GetValue<string>());
        var tensors = Checkpoints.SafeTensors.Read(dir.File("model.safetensors"));
        Assert.Contains("classifier.weight", tensors.Keys);
        Assert.Contains("bert.encoder.layer.1.attention.self.query.weight", tensors.Keys);

        using var loaded = BertForTask.Load(device, dir.Path);
        Assert.Equal(spec.Labels, loaded.Task.Labels);
        Assert.Equal(Pooling.ScalarMix, loaded.Task.Pooling);
        var batch = Batch(TaskKind.Classification);
        using var tape = new Tape(recording: false);
        Assert.Equal(model.Forward(tape, batch, Dropouts.Off).Logits.Value.ToHost(), loaded.Forward(tape, batch, Dropouts.Off).Logits.Value.ToHost());
    }

    [Fact]
    public void Loading_a_pretrained_model_as_a_task_model_fails_clearly_and_a_broken_one_names_the_tensor()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        using (var pre = new BertForPreTraining(device, Config))
        {
            pre.Parameters.Initialize(1);
            BertFolder.Save(pre, dir.Path);
        }
        var e = Assert.Throws<Checkpoints.CheckpointException>(() => BertForTask.Load(device, dir.Path));
        Assert.Contains("not a fine-tuned model", e.Message);
        using var fresh = BertForTask.FromPretrained(device, dir.Path, Spec(TaskKind.Classification, Pooling.Cls), 3);
        Assert.Equal(Checkpoints.SafeTensors.Read(dir.File("model.safetensors"))["bert.embeddings.word_embeddings.weight"].Data,
            fresh.Parameters.Get("bert.embeddings.word_embeddings.weight"));
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void CopyColumns_moves_a_column_block_and_accumulates(string deviceName)
    {
        var d = Devices.Get(deviceName);
        var rng = new Random(5);
        foreach (var (rows, srcCols, srcOffset, dstCols, dstOffset, cols) in new[] { (1, 3, 1, 2, 0, 2), (7, 33, 5, 65, 31, 17), (129, 2, 0, 1, 0, 1) })
        {
            var src = Rand.Normal(rng, rows * srcCols);
            var dst = Rand.Normal(rng, rows * dstCols);
            foreach (bool accumulate in new[] { false, true })
            {
                using var bs = d.Upload(src);
                using var bt = accumulate ? d.Upload(dst) : d.Poisoned(rows * dstCols);
                var before = accumulate ? Rand.ToDouble(dst) : Enumerable.Repeat(double.NaN, rows * dstCols).ToArray();
                d.Kernels.Elementwise.CopyColumns(bs.View, srcCols, srcOffset, bt.View, dstCols, dstOffset, rows, cols, accumulate);
                var got = d.Read(bt, rows * dstCols);
                // Only the block is written: outside it the destination keeps its values (NaN poison included).
                for (int r = 0; r < rows; r++)
                    for (int j = 0; j < dstCols; j++)
                    {
                        int at = r * dstCols + j;
                        bool inside = j >= dstOffset && j < dstOffset + cols;
                        if (!inside) { Assert.Equal(before[at], got[at]); continue; }
                        double expected = (accumulate ? before[at] : 0) + src[r * srcCols + srcOffset + j - dstOffset];
                        Assert.True(Math.Abs(got[at] - expected) <= 1e-6 + 1e-5 * Math.Abs(expected), $"[{r}, {j}]: {got[at]} vs {expected}");
                    }
            }
        }
        Assert.Throws<ArgumentException>(() => d.Kernels.Elementwise.CopyColumns(default, 3, 2, default, 3, 0, 1, 2));
    }

    [Fact]
    public void Mixout_mixes_each_element_with_its_pretrained_value_and_rescales_the_gradient()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(3);
        int n = 4096;
        const float p = 0.3f;
        var w = Rand.Normal(rng, n);
        var u = Rand.Normal(rng, n);
        using var weight = new Var(Tensor.FromHost(device, w, 64, 64), requiresGrad: true);
        using var pretrained = Tensor.FromHost(device, u, 64, 64);
        var key = new DropoutKey(9, 2, 1_000_000);
        using var tape = new Tape();
        Assert.Same(weight, Ops.Mixout(tape, weight, pretrained, 0f, key)); // p = 0: the weight itself
        var mixed = Ops.Mixout(tape, weight, pretrained, p, key);
        // The mask is dropout's Philox mask for the same key: m = keep/(1 − p) ∈ {0, 1/(1 − p)}.
        using var ones = Tensor.FromHost(device, Enumerable.Repeat(1f, n).ToArray(), n);
        using var m = new Tensor(device, n);
        device.Kernels.Dropout.Forward(ones.View, m.View, n, p, key);
        var mask = m.ToHost();
        var y = mixed.Value.ToHost();
        var expected = Enumerable.Range(0, n).Select(i => u[i] + mask[i] * ((double)w[i] - u[i])).ToArray();
        Tol.AssertClose(expected, y, Tol.F32Elementwise, "mixout(w, u)");
        Assert.InRange(mask.Count(v => v == 0) / (double)n, p - 0.03, p + 0.03); // swapped for u with probability p
        // Backward of Σ y: d/dw = m.
        using (var dy = Tensor.FromHost(device, Enumerable.Repeat(1f, n).ToArray(), 64, 64)) mixed.AddGrad(dy);
        tape.Backward();
        Tol.AssertClose(Rand.ToDouble(mask), weight.Grad!.ToHost(), Tol.F32Elementwise, "d mixout / d w");
    }

    [Fact]
    public void SymmetricKl_matches_its_definition_and_finite_differences()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var rng = new Random(8);
        int rows = 5, c = 4;
        var clean = Rand.Normal(rng, rows * c);
        var z = Rand.Normal(rng, rows * c);
        double Value(double[] zz)
        {
            double total = 0;
            for (int r = 0; r < rows; r++)
            {
                var pr = IlgpuBert.Tests.Reference.Softmax(Rand.ToDouble(clean).Skip(r * c).Take(c).ToArray(), 1, c);
                var q = IlgpuBert.Tests.Reference.Softmax(zz.Skip(r * c).Take(c).ToArray(), 1, c);
                for (int j = 0; j < c; j++) total += pr[j] * Math.Log(pr[j] / q[j]) + q[j] * Math.Log(q[j] / pr[j]);
            }
            return total / rows;
        }
        using var logits = new Var(Tensor.FromHost(device, z, rows, c), requiresGrad: true);
        using var tape = new Tape();
        var loss = Ops.SymmetricKl(tape, logits, clean);
        Tol.AssertClose([Value(Rand.ToDouble(z))], [loss.Read()], Tol.F32Reduction, "symmetric KL");
        tape.Backward();
        var expected = IlgpuBert.Tests.Reference.NumericGradient(Value, Rand.ToDouble(z), 1e-6);
        Tol.AssertClose(expected, logits.Grad!.ToHost(), new Tol(1e-6, 1e-4, "symKL gradient"), "d symKL / d z");
        // Equal outputs: no divergence.
        using var tape2 = new Tape();
        using var same = new Var(Tensor.FromHost(device, clean, rows, c), requiresGrad: true);
        Assert.Equal(0, Ops.SymmetricKl(tape2, same, clean).Read(), 6);
    }
}
