// ELECTRA (Clark et al. 2020): replaced-token detection. A small generator (an MLM of ¼ the
// discriminator's width, same depth) fills the masked positions with tokens sampled from its
// softmax; the discriminator — the BERT being pretrained — tells, at every real token, whether it
// is the original or a replacement. Loss = generator MLM + λ·RTD (λ = 50, as the paper). The two
// share the embeddings (word, position, token type and their LayerNorm), the paper's choice for a
// small generator: the generator projects the discriminator-width embeddings down to its own
// width ("embeddings_project", as HF's ElectraModel) and its MLM head back up, with the decoder
// tied to the shared word embeddings. No gradient flows through the sampling.
//
// The discriminator is our BertForPreTraining with a 2-way "replaced" head (cls.aux.replaced.*, a
// linear classifier on the last layer; ELECTRA's head has a dense layer before it): saved as any
// BERT folder, it fine-tunes with every head. The generator is saved beside it as
// generator.safetensors (its own tensors only), so a run can resume or continue.
using System.Runtime.Intrinsics;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Pretraining;

public sealed class ElectraGenerator : IDisposable
{
    /// <summary>The discriminator's replaced-token-detection head (an entry of <see cref="BertConfig.AuxHeads"/>).</summary>
    public const string RtdHead = "replaced";

    public const string File = "generator.safetensors";

    private readonly BertForPreTraining discriminator;

    /// <param name="width">The generator's hidden size as a share of the discriminator's (ELECTRA: ¼ to ½ works best).</param>
    public ElectraGenerator(BertForPreTraining discriminator, double width)
    {
        if (!(width > 0 && width <= 1)) throw new ArgumentException($"the generator width must be in (0, 1] of the discriminator's, got {width}");
        this.discriminator = discriminator;
        var d = discriminator.Config;
        int heads = Math.Max(1, (int)Math.Round(d.NumAttentionHeads * width));
        int hidden = Math.Max(heads, (int)Math.Round(d.HiddenSize * width / heads) * heads);
        Config = (d with
        {
            HiddenSize = hidden, NumAttentionHeads = heads, IntermediateSize = Math.Max(1, (int)Math.Round(d.IntermediateSize * width)),
            AuxHeads = [], SentenceClasses = 2,
        }).WithPrunedHeads(new Dictionary<int, int[]>());
        Parameters = new BertParameters(discriminator.Device, Config, prefix: "generator.");
        var p = Parameters;
        int h = d.HiddenSize;
        ProjectWeight = p.Add("electra.embeddings_project.weight", true, hidden, h);
        ProjectBias = p.Add("electra.embeddings_project.bias", false, hidden);
        Layers = [.. Enumerable.Range(0, Config.NumHiddenLayers).Select(i => new BertLayer(p, i))];
        DenseWeight = p.Add("generator_predictions.dense.weight", true, h, hidden);
        DenseBias = p.Add("generator_predictions.dense.bias", false, h);
        LayerNormWeight = p.Add("generator_predictions.LayerNorm.weight", false, h);
        LayerNormBias = p.Add("generator_predictions.LayerNorm.bias", false, h);
        DecoderBias = p.Add("generator_lm_head.bias", false, d.VocabSize);
    }

    /// <summary>The generator's own sizes: the discriminator's config at the chosen width.</summary>
    public BertConfig Config { get; }

    /// <summary>The generator's own tensors (not the shared embeddings), named "generator.…".</summary>
    public BertParameters Parameters { get; }

    public Var ProjectWeight { get; }  // [Hg, H]
    public Var ProjectBias { get; }    // [Hg]
    public BertLayer[] Layers { get; }
    public Var DenseWeight { get; }    // [H, Hg]
    public Var DenseBias { get; }      // [H]
    public Var LayerNormWeight { get; }
    public Var LayerNormBias { get; }
    public Var DecoderBias { get; }    // [V]

    /// <summary>The generator's MLM at the masked positions (labels ≠ −100): logits [M, V], the positions, and the loss.</summary>
    public (Var Logits, int[] Positions, Loss Loss) Forward(Tape tape, BertInputs inputs, Dropouts dropouts)
    {
        var d = discriminator.Config;
        inputs.Validate(d);
        if (inputs.Labels is null) throw new ArgumentException("the ELECTRA generator needs MLM labels");
        int b = inputs.Batch, s = inputs.SeqLen;
        var ids = tape.Own(new DeviceInts(discriminator.Device, inputs.InputIds));
        var positionIds = tape.Own(new DeviceInts(discriminator.Device, inputs.Positions()));
        var types = tape.Own(new DeviceInts(discriminator.Device, inputs.TokenTypeIds));
        var mask = tape.Own(new DeviceInts(discriminator.Device, inputs.AttentionRanks()));
        var x = discriminator.Embeddings.Forward(tape, d, ids, positionIds, types, b, s, dropouts);
        x = Ops.Linear(tape, x, ProjectWeight, ProjectBias);
        foreach (var layer in Layers) x = layer.Forward(tape, Config, x, mask, b, s, dropouts);
        var positions = Enumerable.Range(0, b * s).Where(i => inputs.Labels[i] != -100).ToArray();
        var t = Ops.Linear(tape, Ops.GatherRows(tape, x, positions), DenseWeight, DenseBias, d.Activation);
        t = Ops.LayerNorm(tape, t, null, LayerNormWeight, LayerNormBias, d.LayerNormEps);
        var logits = Ops.Linear(tape, t, discriminator.Embeddings.Word, DecoderBias);
        var loss = Ops.CrossEntropy(tape, logits, tape.Own(new DeviceInts(discriminator.Device, positions.Select(i => inputs.Labels[i]).ToArray())));
        return (logits, positions, loss);
    }

    /// <summary>
    /// One ELECTRA step's losses on <paramref name="tape"/>: the generator's MLM on the masked batch,
    /// then the discriminator's RTD on the batch with every masked position replaced by a token drawn
    /// from the generator's softmax (labels: 1 where the drawn token differs from the original, at
    /// every real token; a draw of the original counts as original, as in the paper).
    /// </summary>
    public ElectraStep Step(Tape tape, BertInputs masked, Dropouts dropouts, Random rng)
    {
        var generatorDropouts = dropouts with { Seed = dropouts.Seed ^ 0x6E6E_7261_746F_72UL }; // not the discriminator's masks
        var (logits, positions, mlm) = Forward(tape, masked, generatorDropouts);
        var (corrupted, labels) = Corrupt(masked, positions, Sample(logits.Value.ToHost(), discriminator.Config.VocabSize, rng));
        var encoded = discriminator.Bert.Forward(tape, corrupted, dropouts);
        return new ElectraStep(mlm, discriminator.AuxLoss(tape, encoded.LastHiddenState, RtdHead, labels), corrupted, labels, encoded.LastHiddenState);
    }

    /// <summary>
    /// One token per row of logits [M, V], drawn from softmax(row) by inverting its cumulative sum at
    /// a uniform draw. The draws are taken from <paramref name="rng"/> in row order first, so the
    /// tokens do not depend on how the rows are spread over cores.
    /// </summary>
    public static int[] Sample(float[] logits, int vocab, Random rng)
    {
        int rows = logits.Length / vocab;
        var u = new double[rows];
        for (int r = 0; r < rows; r++) u[r] = rng.NextDouble();
        var tokens = new int[rows];
        int blocks = Math.Min(rows, 4 * Environment.ProcessorCount);
        HostParallel.For(0, blocks, block => // the host kernels' workers: Parallel.For's threads would compete with them
        {
            var exps = System.Buffers.ArrayPool<float>.Shared.Rent(vocab);
            for (int r = (int)((long)rows * block / blocks); r < (int)((long)rows * (block + 1) / blocks); r++)
                tokens[r] = Draw(logits.AsSpan(r * vocab, vocab), u[r], exps);
            System.Buffers.ArrayPool<float>.Shared.Return(exps);
        });
        return tokens;
    }

    /// <summary>The index where Σ exp(row − max) first exceeds u·Σ exp(row − max) (exps: scratch of at least the row's length).</summary>
    private static int Draw(ReadOnlySpan<float> row, double u, float[] exps)
    {
        int v = row.Length, j = 0;
        float max = float.NegativeInfinity;
        if (Vector512.IsHardwareAccelerated && v >= 16)
        {
            var vmax = Vector512.Create(float.NegativeInfinity);
            for (; j + 16 <= v; j += 16) vmax = Vector512.Max(vmax, Vector512.Create(row.Slice(j, 16)));
            max = HostMath.MaxLanes(vmax);
            for (; j < v; j++) max = MathF.Max(max, row[j]);
            j = 0;
        }
        else
            foreach (float x in row) max = MathF.Max(max, x);
        double sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vmax = Vector512.Create(max);
            var acc = Vector512<float>.Zero;
            for (; j + 16 <= v; j += 16)
            {
                var e = HostMath.Exp(Vector512.Create(row.Slice(j, 16)) - vmax);
                e.CopyTo(exps.AsSpan(j, 16));
                acc += e;
            }
            sum = Vector512.Sum(acc);
        }
        for (; j < v; j++) sum += exps[j] = MathF.Exp(row[j] - max);
        double target = u * sum, running = 0;
        for (j = 0; j < v; j++)
        {
            running += exps[j];
            if (running > target) return j;
        }
        for (j = v - 1; j > 0 && exps[j] == 0; j--) { } // rounding left the target past the end: the last possible token
        return j;
    }

    /// <summary>
    /// The discriminator's input: the original tokens (the labels at masked positions) with the
    /// samples written over the masked positions; RTD labels 1 where a sample differs from the
    /// original, 0 at other real tokens, −100 at padding.
    /// </summary>
    public static (BertInputs Input, int[] Labels) Corrupt(BertInputs masked, int[] positions, int[] samples)
    {
        var ids = masked.InputIds.ToArray();
        var labels = masked.AttentionMask.Select(m => m != 0 ? 0 : -100).ToArray();
        for (int k = 0; k < positions.Length; k++)
        {
            int at = positions[k], original = masked.Labels![at];
            ids[at] = samples[k];
            labels[at] = samples[k] != original ? 1 : 0;
        }
        var input = new BertInputs(masked.Batch, masked.SeqLen, ids, masked.TokenTypeIds, masked.AttentionMask)
        {
            AttentionPrefix = masked.AttentionPrefix,
            KeyRanks = masked.KeyRanks,
            QueryRanks = masked.QueryRanks,
            PositionIds = masked.PositionIds,
        };
        return (input, labels);
    }

    public void ZeroGrad()
    {
        foreach (var p in Parameters.All) p.Var.ZeroGrad();
    }

    public void Save(string path) => Parameters.Save(path);

    /// <summary>Loads every generator tensor from <paramref name="path"/>; a file lacking any, or of another width, is an error.</summary>
    public void Load(string path)
    {
        if (!System.IO.File.Exists(path)) throw new CheckpointException($"{path}: no such file (an ELECTRA run saves its generator there)");
        var (initialized, _) = Parameters.Load(path);
        if (initialized.Count > 0)
            throw new CheckpointException($"{path}: lacks generator tensor{(initialized.Count > 1 ? "s" : "")} {string.Join(", ", initialized.Take(3))}");
    }

    public void Dispose() => Parameters.Dispose();
}

/// <summary>
/// One ELECTRA step's outputs: the generator's MLM loss, the discriminator's detection loss, the
/// discriminator's input and labels, and its last hidden states [B·S, H] (a sentence objective can use them).
/// </summary>
public sealed record ElectraStep(Loss Mlm, Loss Rtd, BertInputs Corrupted, int[] RtdLabels, Var LastHiddenState)
{
    /// <summary>The share of real tokens the draws replaced (RTD label 1 among labels ≠ −100).</summary>
    public double ReplacedShare => (double)RtdLabels.Count(l => l == 1) / RtdLabels.Count(l => l != -100);
}
