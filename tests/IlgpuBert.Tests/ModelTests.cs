using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class ModelTests
{
    private static BertConfig TinyConfig(string act) => new()
    {
        VocabSize = 23, HiddenSize = 16, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 32,
        MaxPositionEmbeddings = 12, TypeVocabSize = 2, HiddenAct = act,
    };

    /// <summary>Two segments, padding in the second row, MLM labels at a few positions, NSP labels.</summary>
    private static BertInputs Batch()
    {
        int[][] ids = [[2, 7, 9, 11, 3, 14, 3], [2, 5, 6, 3, 20, 0, 0]];
        int[][] types = [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0, 0]];
        int[][] mask = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]];
        int[][] labels = [[-100, 8, -100, -100, -100, 4, -100], [-100, -100, 17, -100, 1, -100, -100]];
        return BertInputs.FromRows(ids, types, mask, labels, [0, 1]);
    }

    /// <summary>Initial parameters with biases and LayerNorm weights randomised too, so every path is exercised.</summary>
    private static BertForPreTraining RandomModel(BertDevice device, BertConfig config, int seed)
    {
        var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(seed);
        var rng = new Random(seed + 1);
        foreach (var name in model.Parameters.Names.ToList())
        {
            var data = model.Parameters.Get(name);
            double scale = name.EndsWith(".bias", StringComparison.Ordinal) || name.Contains("LayerNorm") ? 0.1 : 10; // weights ~ N(0, 0.2)
            var noise = Rand.Normal(rng, data.Length, scale * (name.Contains("LayerNorm.weight") ? 1 : 0.02));
            model.Parameters.Set(name, data.Select((v, i) => v + noise[i]).ToArray());
        }
        return model;
    }

    private static Dictionary<string, double[]> HostParameters(BertForPreTraining model) =>
        model.Parameters.Names.ToDictionary(n => n, n => Rand.ToDouble(model.Parameters.Get(n)));

    /// <summary>The masked-only forward against the double reference (last hidden state, loss), then backward; returns the loss.</summary>
    private static float ForwardMatchesReferenceThenBackward(BertForPreTraining model, BertConfig config, BertInputs inputs)
    {
        using var tape = new Tape();
        var outputs = model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
        float loss = outputs.ReadLoss()!.Value;
        var reference = new BertReference(config, HostParameters(model)).Forward(inputs);
        var tol = new Tol(1e-5, 1e-4, "model outputs");
        Tol.AssertClose(reference.LastHidden, outputs.LastHiddenState.Value.ToHost(), tol, "last_hidden_state");
        Tol.AssertClose([reference.Loss], [loss], tol, "loss");
        tape.Backward();
        return loss;
    }

    /// <summary>Every accelerator present × both GELU variants.</summary>
    public static TheoryData<string, string> DevicesAndActivations()
    {
        var data = new TheoryData<string, string>();
        foreach (var device in Devices.Names)
            foreach (var act in new[] { "gelu", "gelu_new" })
                data.Add(device, act);
        return data;
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(DevicesAndActivations))]
    public void Forward_matches_the_double_reference(string deviceName, string act)
    {
        using var device = Devices.OpenBert(deviceName);
        var config = TinyConfig(act);
        using var model = RandomModel(device, config, 3);
        var inputs = Batch();
        var expected = new BertReference(config, HostParameters(model)).Forward(inputs);
        using var tape = new Tape(recording: false);
        var got = model.Forward(tape, inputs, Dropouts.Off, outputAttentions: true);
        var tol = new Tol(1e-5, 1e-4, "model outputs");
        for (int i = 0; i < expected.Attentions.Count; i++)
            Tol.AssertClose(expected.Attentions[i], got.Attentions![i].ToHost(), tol, $"attentions.{i}");
        Tol.AssertClose(expected.LastHidden, got.LastHiddenState.Value.ToHost(), tol, "last_hidden_state");
        Tol.AssertClose(expected.Pooled, got.PoolerOutput.Value.ToHost(), tol, "pooler_output");
        Tol.AssertClose(expected.Logits, got.PredictionLogits.Value.ToHost(), tol, "prediction_logits");
        Tol.AssertClose(expected.Nsp, got.SeqRelationshipLogits.Value.ToHost(), tol, "seq_relationship_logits");
        for (int i = 0; i < expected.Hidden.Count; i++)
            Tol.AssertClose(expected.Hidden[i], got.HiddenStates[i].Value.ToHost(), tol, $"hidden_states.{i}");
        Tol.AssertClose([expected.Loss], [got.ReadLoss()!.Value], tol, "loss");
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(DevicesAndActivations))]
    public void Every_parameter_gradient_matches_finite_differences_of_the_reference(string deviceName, string act)
    {
        using var device = Devices.OpenBert(deviceName);
        var config = TinyConfig(act);
        using var model = RandomModel(device, config, 5);
        var inputs = Batch();
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
            tape.Backward();
        }
        var reference = new BertReference(config, HostParameters(model));
        AssertGradientsMatch(model, reference, model.Parameters.Names, () => reference.Forward(inputs).Loss);
    }

    /// <summary>
    /// UniLM's attention masks through the whole model: row 0 left-to-right, row 1 seq2seq with a
    /// 3-token source. Hidden states, loss and every parameter's gradient against the double reference.
    /// </summary>
    /// <summary>
    /// Explicit attention ranks reach every layer: an XLNet-like pattern (row 0: a factorisation
    /// order, positions 5–6 query-stream rows never seen as keys and one rank below their targets';
    /// row 1: ranks shuffled) gives the double reference's hidden states and loss, which differ from
    /// the bidirectional model's.
    /// </summary>
    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void Explicit_attention_ranks_and_position_ids_match_the_reference(string deviceName)
    {
        using var device = Devices.OpenBert(deviceName);
        var config = TinyConfig("gelu");
        using var model = RandomModel(device, config, 9);
        const int never = AttentionShape.NeverSeen;
        // An XLNet-like row: tokens 5 and 6 are query-stream rows, never seen as keys, standing at
        // positions 2 and 0 (their targets'); the second row counts its positions backwards.
        var inputs = Batch() with
        {
            KeyRanks = [0, 3, 1, 4, 2, never, never, 2, 0, 1, 0, 3, 5, 5],
            QueryRanks = [0, 3, 1, 4, 2, 2, 0, 2, 0, 1, 0, 3, 5, 5],
            PositionIds = [0, 1, 2, 3, 4, 2, 0, 6, 5, 4, 3, 2, 1, 0],
        };
        float loss = ForwardMatchesReferenceThenBackward(model, config, inputs);
        var r = new BertReference(config, HostParameters(model));
        Assert.True(Math.Abs(r.Forward(Batch()).Loss - loss) > 1e-3, "the ranks and positions change nothing");
        Assert.True(Math.Abs(r.Forward(inputs with { PositionIds = null }).Loss - loss) > 1e-3, "the position ids change nothing");
        AssertGradientsMatch(model, r, ["bert.embeddings.position_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"],
            () => r.Forward(inputs).Loss);
    }

    /// <summary>
    /// ALBERT (factorised embeddings, shared layers) against the double reference written from HF's
    /// modeling_albert.py over the tensors as saved (HF's ALBERT names): outputs, loss, and the
    /// gradients of a shared layer's weight (summed over every layer that runs it), the embedding
    /// projection and the narrow word embeddings by finite differences. With 4 layers in 2 groups,
    /// layers 0-1 run group 0 and 2-3 group 1.
    /// </summary>
    [Theory]
    [InlineData(2, 1)]
    [InlineData(4, 2)]
    public void Albert_matches_the_reference_in_outputs_and_gradients_and_saves_under_hf_names(int layers, int groups)
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = (TinyConfig("gelu_new") with { NumHiddenLayers = layers }).AsAlbert(embeddingSize: 6, groups: groups);
        using var model = RandomModel(device, config, 21);
        Assert.Equal(groups, model.Layers.Distinct().Count());
        Assert.Equal(config.ParameterCount(), model.Parameters.All.Sum(p => p.Var.Length));
        using var dir = new TempDir();
        BertFolder.Save(model, dir.Path);
        var saved = SafeTensors.Read(Path.Combine(dir.Path, BertFolder.WeightsFile));
        Assert.Contains("albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight", saved.Keys);
        Assert.Contains("predictions.dense.weight", saved.Keys);
        Assert.DoesNotContain(saved.Keys, k => k.StartsWith("bert.", StringComparison.Ordinal) || k.StartsWith("cls.", StringComparison.Ordinal));
        var r = new BertReference(config, saved.ToDictionary(kv => kv.Key, kv => Rand.ToDouble(kv.Value.Data)));

        var inputs = Batch() with { NextSentenceLabel = null };
        float loss;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, inputs, Dropouts.Off);
            loss = outputs.ReadLoss()!.Value;
            var reference = r.Forward(inputs);
            var tol = new Tol(1e-5, 1e-4, "model outputs");
            Tol.AssertClose(reference.LastHidden, outputs.LastHiddenState.Value.ToHost(), tol, "last_hidden_state");
            Tol.AssertClose(reference.Hidden[0], outputs.HiddenStates[0].Value.ToHost(), tol, "hidden_states[0] (after embedding_hidden_mapping_in)");
            Tol.AssertClose(reference.Logits, outputs.PredictionLogits.Value.ToHost(), tol, "prediction_logits");
            Tol.AssertClose([reference.Loss], [loss], tol, "loss");
            tape.Backward();
        }
        AssertGradientsMatch(name => model.Parameters.GetGrad(AlbertNames.FromHf(name)), r,
            [$"albert.encoder.albert_layer_groups.{groups - 1}.albert_layers.0.attention.query.weight", "albert.encoder.embedding_hidden_mapping_in.weight",
             "albert.embeddings.word_embeddings.weight", "predictions.dense.weight"],
            () => r.Forward(inputs).Loss);

        using var loaded = BertFolder.Load(device, dir.Path);
        Assert.True(loaded.Config.Albert);
        Assert.Equal((6, groups), (loaded.Config.EmbeddingSize, loaded.Config.NumHiddenGroups));
        using var tape2 = new Tape(recording: false);
        Assert.Equal(loss, loaded.Forward(tape2, inputs, Dropouts.Off).ReadLoss()!.Value);
    }

    [Theory]
    [Trait("Category", "Accelerators")]
    [MemberData(nameof(Devices.All), MemberType = typeof(Devices))]
    public void UniLM_attention_masks_match_the_reference_in_outputs_and_every_gradient(string deviceName)
    {
        using var device = Devices.OpenBert(deviceName);
        var config = TinyConfig("gelu");
        using var model = RandomModel(device, config, 7);
        var inputs = Batch() with { AttentionPrefix = [0, 3] };
        float loss = ForwardMatchesReferenceThenBackward(model, config, inputs);
        var bidirectional = new BertReference(config, HostParameters(model)).Forward(Batch()).Loss;
        Assert.True(Math.Abs(bidirectional - loss) > 1e-3, $"the masks change nothing (loss {loss} either way)");
        var r = new BertReference(config, HostParameters(model));
        AssertGradientsMatch(model, r, model.Parameters.Names, () => r.Forward(inputs).Loss);
    }

    /// <summary>
    /// ELECTRA: the generator's MLM loss plus λ times the discriminator's replaced-token detection,
    /// against the double reference (the generator at half width on the discriminator's embeddings,
    /// the discriminator on the batch the generator's draws corrupted); and the gradient of every
    /// parameter of both — the shared embeddings get both losses' — against finite differences of
    /// it, the draws held fixed (no gradient flows through sampling).
    /// </summary>
    [Fact]
    public void Electra_losses_and_every_gradient_of_generator_and_discriminator_match_the_reference()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = TinyConfig("gelu") with { AuxHeads = [ElectraGenerator.RtdHead] };
        using var model = RandomModel(device, config, 21);
        using var generator = new ElectraGenerator(model, 0.5);
        Assert.Equal((8, 1, 16), (generator.Config.HiddenSize, generator.Config.NumAttentionHeads, generator.Config.IntermediateSize));
        generator.Parameters.Initialize(22);
        var rng = new Random(23);
        foreach (var name in generator.Parameters.Names.ToList()) // biases and LayerNorms away from 0 and 1 too
            generator.Parameters.Set(name, [.. generator.Parameters.Get(name).Select(v => v + (float)(0.1 * (rng.NextDouble() - 0.5)))]);
        const float lambda = 5f;
        var inputs = Batch();
        BertInputs corrupted;
        float total;
        using (var tape = new Tape())
        {
            var step = generator.Step(tape, inputs, Dropouts.Off, new Random(24));
            Assert.Equal(inputs.Batch * inputs.SeqLen * config.HiddenSize, step.LastHiddenState.Value.Length);
            step.Rtd.Weight = lambda;
            total = step.Mlm.Read() + lambda * step.Rtd.Read();
            corrupted = step.Corrupted with { AuxLabels = new Dictionary<string, int[]> { [ElectraGenerator.RtdHead] = step.RtdLabels } };
            tape.Backward();
        }
        var p = HostParameters(model);
        foreach (var name in generator.Parameters.Names) p[name] = Rand.ToDouble(generator.Parameters.Get(name));
        var reference = new BertReference(config, p);
        double Total() => reference.GeneratorLoss(inputs, generator.Config) + lambda * reference.Forward(corrupted).Loss;
        Tol.AssertClose([Total()], [total], new Tol(1e-5, 1e-4, "losses"), "generator MLM + λ·RTD");
        AssertGradientsMatch(name => name.StartsWith("generator.", StringComparison.Ordinal) ? generator.Parameters.GetGrad(name) : model.Parameters.GetGrad(name),
            reference, model.Parameters.Names.Concat(generator.Parameters.Names), Total);
    }

    /// <summary>
    /// ELECTRA's draws follow the generator's softmax (counts within 4.5σ of the expected), and the
    /// discriminator's input and labels: samples written over the masked positions only, label 1
    /// exactly where the draw differs from the original, 0 at the other real tokens (a draw of the
    /// original included), −100 at padding.
    /// </summary>
    [Fact]
    public void Electra_draws_from_the_generator_softmax_and_labels_exactly_the_changed_tokens()
    {
        float[] logits = [MathF.Log(0.7f), MathF.Log(0.2f), MathF.Log(0.1f), float.NegativeInfinity, 5f, 5f, 5f, 5f];
        var rng = new Random(3);
        var counts = new int[2, 4];
        const int n = 20_000;
        for (int t = 0; t < n; t++)
        {
            var drawn = ElectraGenerator.Sample(logits, 4, rng);
            counts[0, drawn[0]]++;
            counts[1, drawn[1]]++;
        }
        double[][] expected = [[0.7, 0.2, 0.1, 0], [0.25, 0.25, 0.25, 0.25]];
        for (int r = 0; r < 2; r++)
            for (int j = 0; j < 4; j++)
            {
                double p = expected[r][j], sigma = Math.Sqrt(n * p * (1 - p));
                Assert.InRange(counts[r, j], n * p - 4.5 * sigma - 0.5, n * p + 4.5 * sigma + 0.5);
            }
        // A vocabulary of 37: two vectors of 16 and a tail, the largest logit in the tail.
        var wide = Enumerable.Repeat(-30f, 37).ToArray();
        wide[5] = 0f;
        wide[36] = MathF.Log(3f);
        int tail = 0;
        for (int t = 0; t < n; t++)
        {
            int token = ElectraGenerator.Sample(wide, 37, rng)[0];
            Assert.True(token is 5 or 36, $"drew {token}, whose probability is e^-30");
            tail += token == 36 ? 1 : 0;
        }
        Assert.InRange(tail, n * 0.75 - 4.5 * Math.Sqrt(n * 0.75 * 0.25), n * 0.75 + 4.5 * Math.Sqrt(n * 0.75 * 0.25));

        var masked = Batch(); // labels at (0,1), (0,5), (1,2), (1,4); row 1 padded from 5
        int[] positions = [1, 5, 9, 11];
        int[] samples = [8, 13, 17, 19]; // (0,1) and (1,2) draw the original (8, 17)
        var (input, labels) = ElectraGenerator.Corrupt(masked, positions, samples);
        int[] ids = [.. masked.InputIds];
        for (int k = 0; k < 4; k++) ids[positions[k]] = samples[k];
        Assert.Equal(ids, input.InputIds);
        Assert.Equal([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, -100, -100], labels);
        Assert.Equal(masked.AttentionMask, input.AttentionMask);
        Assert.Null(input.Labels);
    }

    /// <summary>Each named parameter's gradient against central differences of the reference's loss (1e-5 steps).</summary>
    private static void AssertGradientsMatch(BertForPreTraining model, BertReference reference, IEnumerable<string> names, Func<double> loss) =>
        AssertGradientsMatch(model.Parameters.GetGrad, reference, names, loss);

    /// <summary>As above, with each parameter's gradient from <paramref name="gradOf"/> (parameters of several models).</summary>
    private static void AssertGradientsMatch(Func<string, float[]> gradOf, BertReference reference, IEnumerable<string> names, Func<double> loss)
    {
        var tol = new Tol(1e-5, 1e-3, "model gradients");
        foreach (var name in names)
        {
            var values = reference.P[name];
            var expected = Reference.NumericGradient(v =>
            {
                reference.P[name] = v;
                return loss();
            }, values, 1e-5);
            reference.P[name] = values;
            Tol.AssertClose(expected, gradOf(name), tol, $"d loss / d {name}");
        }
    }

    /// <summary>
    /// ERNIE 2.0's token heads (capitalisation, token-document) and reordering's 9-way sentence head:
    /// the summed loss and every parameter's gradient against finite differences of the double
    /// reference, which computes each head over all positions and averages the labelled ones.
    /// </summary>
    [Fact]
    public void Aux_heads_and_a_nine_way_sentence_head_match_finite_differences_of_the_reference()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = TinyConfig("gelu") with { SentenceClasses = 9, AuxHeads = ["capitalization", "token-document"] };
        using var model = RandomModel(device, config, 12);
        Assert.Equal(2 * 16, model.Parameters.Get("cls.aux.token_document.weight").Length);
        var plain = Batch();
        var inputs = plain with
        {
            NextSentenceLabel = [8, 3],
            AuxLabels = new Dictionary<string, int[]>
            {
                ["capitalization"] = [-100, 1, 0, 0, 1, 0, -100, -100, 0, 1, 1, -100, -100, -100],
                ["token-document"] = [-100, 0, 1, 1, 0, 1, -100, -100, 1, 0, 0, 1, -100, -100],
            },
        };
        float loss;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
            Assert.Equal(["capitalization", "token-document"], outputs.AuxLosses.Keys.Order());
            loss = outputs.ReadLoss()!.Value + outputs.AuxLosses.Values.Sum(l => l.Read());
            tape.Backward();
        }
        var reference = new BertReference(config, HostParameters(model));
        Tol.AssertClose([reference.Forward(inputs).Loss], [loss], new Tol(1e-5, 1e-4, "losses"), "MLM + sentence + aux loss");
        Assert.True(reference.Forward(inputs).Loss > reference.Forward(plain with { NextSentenceLabel = [8, 3] }).Loss + 0.5, "the aux losses count");
        AssertGradientsMatch(model, reference, model.Parameters.Names, () => reference.Forward(inputs).Loss);
    }

    /// <summary>
    /// The document-contrastive loss in double: mean-pool each row over its real tokens,
    /// standardise, correlations / τ between the even rows and the odd rows, cross-entropy to the
    /// partner in both directions, averaged.
    /// </summary>
    private static double ContrastiveReference(double[] hidden, BertInputs x, int h, double tau)
    {
        int b = x.Batch, s = x.SeqLen, n = b / 2;
        var z = new double[b][];
        for (int r = 0; r < b; r++)
        {
            var m = new double[h];
            int count = 0;
            for (int t = 0; t < s; t++)
                if (x.AttentionMask[r * s + t] == 1)
                {
                    count++;
                    for (int j = 0; j < h; j++) m[j] += hidden[(r * s + t) * h + j];
                }
            for (int j = 0; j < h; j++) m[j] /= count;
            double mean = m.Average(), variance = m.Select(v => (v - mean) * (v - mean)).Average();
            z[r] = m.Select(v => (v - mean) / Math.Sqrt(variance + 1e-6)).ToArray();
        }
        double Direction(int from, int to)
        {
            var logits = new double[n * n];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    logits[i * n + j] = Enumerable.Range(0, h).Sum(k => z[2 * i + from][k] * z[2 * j + to][k]) / (h * tau);
            return Reference.CrossEntropy(logits, Enumerable.Range(0, n).ToArray(), n, n);
        }
        return (Direction(0, 1) + Direction(1, 0)) / 2;
    }

    [Fact]
    public void The_contrastive_loss_and_every_gradient_match_finite_differences_of_the_reference()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = TinyConfig("gelu");
        using var model = RandomModel(device, config, 14);
        // Three pairs (rows 2i, 2i + 1), padding in some rows, a few MLM labels.
        int[][] ids = [[2, 5, 6, 7, 3, 0], [2, 8, 9, 3, 0, 0], [2, 10, 11, 12, 13, 3], [2, 14, 3, 0, 0, 0], [2, 15, 16, 17, 3, 0], [2, 18, 19, 20, 21, 3]];
        int[][] mask = [.. ids.Select(r => r.Select(v => v == 0 ? 0 : 1).ToArray())];
        int[][] labels = [[-100, 9, -100, -100, -100, -100], [-100, -100, 4, -100, -100, -100], [-100, -100, -100, 1, -100, -100],
            [-100, 22, -100, -100, -100, -100], [-100, -100, -100, -100, -100, -100], [-100, -100, 7, -100, -100, -100]];
        var inputs = BertInputs.FromRows(ids, null, mask, labels);
        const float tau = 0.1f;
        float loss;
        using (var tape = new Tape())
        {
            var outputs = model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
            var contrastive = model.ContrastiveLoss(tape, outputs.LastHiddenState, inputs, tau);
            loss = outputs.ReadLoss()!.Value + contrastive.Read();
            tape.Backward();
        }
        var reference = new BertReference(config, HostParameters(model));
        double Total()
        {
            var o = reference.Forward(inputs);
            return o.Loss + ContrastiveReference(o.LastHidden, inputs, config.HiddenSize, tau);
        }
        var r = reference.Forward(inputs);
        Assert.True(ContrastiveReference(r.LastHidden, inputs, config.HiddenSize, tau) > 0.05, "a loss that can move");
        Tol.AssertClose([Total()], [loss], new Tol(1e-5, 1e-4, "losses"), "MLM + contrastive loss");
        AssertGradientsMatch(model, reference, model.Parameters.Names.Where(n => !n.StartsWith("cls.seq_relationship", StringComparison.Ordinal)), Total);
        using var tape2 = new Tape(recording: false);
        var odd = BertInputs.FromRows(ids[..5], null, mask[..5]);
        Assert.Contains("even batch", Assert.Throws<ArgumentException>(() => model.ContrastiveLoss(tape2, model.Forward(tape2, odd, Dropouts.Off).LastHiddenState, odd, tau)).Message);
    }

    [Fact]
    public void Aux_labels_for_a_head_the_model_lacks_or_outside_0_1_are_refused()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, TinyConfig("gelu") with { AuxHeads = ["capitalization"] }, 13);
        var ones = Enumerable.Repeat(1, 14).ToArray();
        using var tape = new Tape(recording: false);
        var e = Assert.Throws<ArgumentException>(() => model.Forward(tape, Batch() with { AuxLabels = new Dictionary<string, int[]> { ["token-document"] = ones } }, Dropouts.Off));
        Assert.Contains("token-document head, which this model does not have", e.Message);
        e = Assert.Throws<ArgumentException>(() => model.Forward(tape, Batch() with { AuxLabels = new Dictionary<string, int[]> { ["capitalization"] = [.. ones[..13], 2] } }, Dropouts.Off));
        Assert.Contains("capitalization labels[1][6] = 2", e.Message);
    }

    [Fact]
    public void Masked_only_logits_equal_the_full_logits_at_those_positions_and_give_the_same_loss()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, TinyConfig("gelu"), 8);
        var inputs = Batch();
        using var tape = new Tape(recording: false);
        var full = model.Forward(tape, inputs, Dropouts.Off);
        var masked = model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
        var fullLogits = full.PredictionLogits.Value.ToHost();
        var picked = masked.MaskedPositions!.SelectMany(p => fullLogits.Skip(p * 23).Take(23)).Select(v => (double)v).ToArray();
        Tol.AssertClose(picked, masked.PredictionLogits.Value.ToHost(), Tol.F32Elementwise, "masked logits");
        Assert.Equal(full.ReadLoss()!.Value, masked.ReadLoss()!.Value, 5);
    }

    [Fact]
    public void Prepacked_linear_weights_give_the_same_hidden_states_bit_for_bit()
    {
        // What the pipelines run: each Linear weight packed once (PackedLinears) instead of in every GEMM call.
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, TinyConfig("gelu"), 14);
        var inputs = Batch();
        var linears = new PackedLinears();
        float[] Hidden(BertHooks? hooks)
        {
            using var tape = new Tape(recording: false);
            var outputs = model.Bert.Forward(tape, inputs, Dropouts.Off, hooks: hooks);
            return [.. outputs.LastHiddenState.Value.ToHost(), .. outputs.PoolerOutput!.Value.ToHost()];
        }
        var plain = Hidden(null);
        var packed = Hidden(linears.Hooks);
        Assert.Equal(2 * 4 + 1, linears.Count); // four Linear layers per layer and the pooler
        Assert.True(plain.AsSpan().SequenceEqual(Hidden(linears.Hooks)) && plain.AsSpan().SequenceEqual(packed), "prepacked weights changed the outputs");
    }

    [Fact]
    public void Gradients_accumulate_over_micro_batches()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, TinyConfig("gelu"), 9);
        var inputs = Batch();
        void Step()
        {
            using var tape = new Tape();
            model.Forward(tape, inputs, Dropouts.Off, maskedOnly: true);
            tape.Backward();
        }
        Step();
        var once = model.Parameters.GetGrad("bert.encoder.layer.1.attention.self.key.weight");
        Step();
        var twice = model.Parameters.GetGrad("bert.encoder.layer.1.attention.self.key.weight");
        Tol.AssertClose(once.Select(v => 2.0 * v).ToArray(), twice, Tol.F32Reduction, "two accumulated steps");
        model.ZeroGrad();
        Assert.All(model.Parameters.GetGrad("bert.pooler.dense.weight"), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Dropout_in_training_changes_outputs_reproducibly()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = RandomModel(device, TinyConfig("gelu"), 10);
        var inputs = Batch();
        float Loss(Dropouts d)
        {
            using var tape = new Tape(recording: false);
            return model.Forward(tape, inputs, d).ReadLoss()!.Value;
        }
        var train = Dropouts.Training(model.Config, 42, 1);
        Assert.NotEqual(Loss(Dropouts.Off), Loss(train));
        Assert.Equal(Loss(train), Loss(train));
        Assert.NotEqual(Loss(train), Loss(train with { Step = 2 }));
    }

    [Fact]
    public void Init_save_load_save_round_trip_is_bit_identical_and_hf_variants_load()
    {
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = TinyConfig("gelu");
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(7);
        var word = model.Parameters.Get("bert.embeddings.word_embeddings.weight");
        Assert.All(word.AsSpan(0, 16).ToArray(), v => Assert.Equal(0f, v)); // padding row zero, as HF initialises it
        Assert.All(model.Parameters.Get("bert.encoder.layer.0.output.LayerNorm.weight"), v => Assert.Equal(1f, v));
        model.Parameters.Save(dir.File("a.safetensors"));
        var file = SafeTensors.Read(dir.File("a.safetensors"));
        Assert.DoesNotContain("cls.predictions.decoder.weight", file.Keys);
        Assert.Contains("bert.encoder.layer.1.attention.self.value.bias", file.Keys);

        using var loaded = new BertForPreTraining(device, config);
        var (initialized, unused) = loaded.Parameters.Load(dir.File("a.safetensors"));
        Assert.Empty(initialized);
        Assert.Empty(unused);
        loaded.Parameters.Save(dir.File("b.safetensors"));
        Assert.Equal(File.ReadAllBytes(dir.File("a.safetensors")), File.ReadAllBytes(dir.File("b.safetensors")));

        // As HF's save_pretrained may write it, with TF-era names, or as a bare BertModel.
        var hf = file.ToDictionary(kv => kv.Key, kv => kv.Value);
        hf["cls.predictions.decoder.weight"] = file["bert.embeddings.word_embeddings.weight"];
        hf["bert.embeddings.position_ids"] = new HostTensor([12], new float[12]);
        SafeTensors.Write(dir.File("hf.safetensors"), hf);
        Assert.Empty(loaded.Parameters.Load(dir.File("hf.safetensors")).Initialized);
        var legacy = file.ToDictionary(kv => kv.Key.Replace("LayerNorm.weight", "LayerNorm.gamma").Replace("LayerNorm.bias", "LayerNorm.beta"), kv => kv.Value);
        SafeTensors.Write(dir.File("legacy.safetensors"), legacy);
        loaded.Parameters.Load(dir.File("legacy.safetensors"));
        Assert.Equal(model.Parameters.Get("bert.embeddings.LayerNorm.bias"), loaded.Parameters.Get("bert.embeddings.LayerNorm.bias"));
        var bare = file.Where(kv => kv.Key.StartsWith("bert.") && !kv.Key.StartsWith("bert.pooler")).ToDictionary(kv => kv.Key["bert.".Length..], kv => kv.Value);
        SafeTensors.Write(dir.File("bare.safetensors"), bare);
        var report = loaded.Parameters.Load(dir.File("bare.safetensors"));
        Assert.Contains("cls.predictions.bias", report.Initialized);
        Assert.Contains("bert.pooler.dense.weight", report.Initialized);
        Assert.DoesNotContain(report.Initialized, n => n.StartsWith("bert.encoder"));
    }

    [Fact]
    public void Missing_or_misshapen_tensors_are_named()
    {
        using var dir = new TempDir();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = TinyConfig("gelu");
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(1);
        var file = model.Parameters.ToHost();
        file.Remove("bert.encoder.layer.1.intermediate.dense.bias");
        SafeTensors.Write(dir.File("missing.safetensors"), file);
        Assert.Contains("bert.encoder.layer.1.intermediate.dense.bias",
            Assert.Throws<CheckpointException>(() => model.Parameters.Load(dir.File("missing.safetensors"))).Message);
        file = model.Parameters.ToHost();
        file["bert.encoder.layer.0.attention.self.key.weight"] = new HostTensor([16, 15], new float[240]);
        SafeTensors.Write(dir.File("shape.safetensors"), file);
        var e = Assert.Throws<CheckpointException>(() => model.Parameters.Load(dir.File("shape.safetensors")));
        Assert.Contains("bert.encoder.layer.0.attention.self.key.weight has shape [16, 15]", e.Message);
    }

    [Fact]
    public void Bad_inputs_are_named_errors()
    {
        var c = TinyConfig("gelu");
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentException>(() => BertInputs.FromRows([[1, 23]]).Validate(c)).Message);
        Assert.Contains("token_type_ids[0][1] = 2", Assert.Throws<ArgumentException>(() => BertInputs.FromRows([[1, 2]], [[0, 2]]).Validate(c)).Message);
        Assert.Contains("exceeds max_position_embeddings", Assert.Throws<ArgumentException>(() => BertInputs.FromRows([new int[13]]).Validate(c)).Message);
        Assert.Contains("ragged", Assert.Throws<ArgumentException>(() => BertInputs.FromRows([[1, 2], [3]], [[0, 0], [0]])).Message);
        Assert.Contains("attention prefix of row 0 is 3, outside [0, 2]",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { AttentionPrefix = [3] }).Validate(c)).Message);
        Assert.Contains("attention prefix has 2 entries, expected 1",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { AttentionPrefix = [0, 1] }).Validate(c)).Message);
        Assert.Contains("need both KeyRanks and QueryRanks",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, 0] }).Validate(c)).Message);
        Assert.Contains("not both",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, 0], QueryRanks = [0, 0], AttentionPrefix = [1] }).Validate(c)).Message);
        Assert.Contains("query ranks has 1 entries, expected 2",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, 0], QueryRanks = [0] }).Validate(c)).Message);
        Assert.Contains("key rank [0][1] = -1",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, -1], QueryRanks = [0, 0] }).Validate(c)).Message);
        Assert.Contains("query rank [0][0] = 16777216",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, 0], QueryRanks = [1 << 24, 0] }).Validate(c)).Message);
        (BertInputs.FromRows([[1, 2]]) with { KeyRanks = [0, AttentionShape.NeverSeen], QueryRanks = [0, 0] }).Validate(c); // NeverSeen is a key rank
        Assert.Contains("position_ids[0][1] = 12 is outside [0, 12)",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { PositionIds = [0, 12] }).Validate(c)).Message);
        Assert.Contains("position_ids has 1 entries, expected 2",
            Assert.Throws<ArgumentException>(() => (BertInputs.FromRows([[1, 2]]) with { PositionIds = [0] }).Validate(c)).Message);
        // Rows past max_position_embeddings are fine when their position ids repeat earlier positions.
        (BertInputs.FromRows([new int[13]]) with { PositionIds = [.. Enumerable.Range(0, 13).Select(t => t % 12)] }).Validate(c);
    }
}

public class TapeTests
{
    [Fact]
    public void Backward_frees_saved_state_and_activation_gradients_but_keeps_parameter_gradients()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var w = new Var(Tensor.FromHost(device, Rand.Normal(new Random(1), 12), 3, 4), requiresGrad: true);
        using var x = new Var(Tensor.FromHost(device, Rand.Normal(new Random(2), 8), 2, 4), requiresGrad: true);
        long before;
        using (var tape = new Tape())
        {
            var y = Ops.Linear(tape, x, w, null, Kernels.ActivationKind.GeluErf); // saves the pre-activation
            using (var dy = Tensor.FromHost(device, Rand.Normal(new Random(3), 6), 2, 3))
                y.AddGrad(dy);
            before = device.Pool.BytesInUse;
            tape.Backward();
            Assert.Null(y.Grad);                       // intermediate gradient released
            Assert.NotNull(w.Grad);                    // parameter gradients kept
            Assert.NotNull(x.Grad);
            // Freed: the pre-activation [2, 3] and y's gradient [2, 3]; added: x's and w's gradients.
            Assert.Equal(before - (6 + 6) * 4 + (8 + 12) * 4, device.Pool.BytesInUse);
            Assert.Throws<InvalidOperationException>(() => tape.Backward());
        }
        Assert.Throws<InvalidOperationException>(() => new Tape(recording: false).Backward());
    }
}

public class SteadyStateTests
{
    [Fact]
    public void A_steady_state_training_step_allocates_no_device_memory()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = BertConfig.ForSize("tiny", 50) with { MaxPositionEmbeddings = 64 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(1);
        var rng = new Random(3);
        BertInputs Batch()
        {
            var ids = Enumerable.Range(0, 4 * 16).Select(_ => rng.Next(5, 50)).ToArray();
            var labels = ids.Select((v, i) => i % 7 == 1 ? v : -100).ToArray(); // same count of masked positions each step
            return new BertInputs(4, 16, ids, new int[64], Enumerable.Repeat(1, 64).ToArray(), labels, [0, 1, 1, 0]);
        }
        void Step(uint step)
        {
            using var tape = new Tape();
            model.Forward(tape, Batch(), Dropouts.Training(config, 7, step), maskedOnly: true);
            tape.Backward();
        }
        Step(1);
        Step(2);
        long allocations = device.Pool.Allocations, scratch = device.Kernels.ScratchBytes;
        for (uint s = 3; s < 6; s++) Step(s);
        Assert.Equal(allocations, device.Pool.Allocations);
        Assert.Equal(scratch, device.Kernels.ScratchBytes);
    }
}
