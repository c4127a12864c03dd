// BERT (Devlin et al. 2019) as HF transformers' modeling_bert.py builds BertForPreTraining, module
// for module, on the autograd ops. Differences in form, not in numbers:
// - self-attention projects Q, K and V with one fused [3H, H] weight (the checkpoint's separate
//   query/key/value tensors are its three row blocks), so the fused attention kernel reads
//   [B, S, 3, NH, HD] straight from the GEMM;
// - the MLM decoder is tied to the word embeddings (one Var used twice; gradients add).
// Dropout sites get fixed tensor ids so their masks are reproducible from (seed, step).
using IlgpuBert.Autograd;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

/// <summary>A parameter with its HF checkpoint name(s) and whether AdamW decays it.</summary>
public sealed record Parameter(Var Var, bool Decay);

public sealed class BertEmbeddings
{
    public BertEmbeddings(BertParameters p)
    {
        int e = p.Config.EmbeddingSize; // hidden_size, or ALBERT's factorised width
        Word = p.Add("bert.embeddings.word_embeddings.weight", true, p.Config.VocabSize, e);
        Position = p.Add("bert.embeddings.position_embeddings.weight", true, p.Config.MaxPositionEmbeddings, e);
        TokenType = p.Add("bert.embeddings.token_type_embeddings.weight", true, p.Config.TypeVocabSize, e);
        LayerNormWeight = p.Add("bert.embeddings.LayerNorm.weight", false, e);
        LayerNormBias = p.Add("bert.embeddings.LayerNorm.bias", false, e);
    }

    public Var Word { get; }
    public Var Position { get; }
    public Var TokenType { get; }
    public Var LayerNormWeight { get; }
    public Var LayerNormBias { get; }

    public Var Forward(Tape tape, BertConfig c, DeviceInts ids, DeviceInts positions, DeviceInts types, int batch, int seqLen, Dropouts dropouts)
    {
        var e = Ops.Embeddings(tape, ids, positions, types, batch, seqLen, Word, Position, TokenType);
        e = Ops.LayerNorm(tape, e, null, LayerNormWeight, LayerNormBias, c.LayerNormEps);
        return Ops.Dropout(tape, e, dropouts.Hidden, dropouts.Key(0));
    }
}

/// <summary>BertLayer: self-attention, BertSelfOutput (dense, dropout, Add &amp; Norm), BertIntermediate, BertOutput.</summary>
public sealed class BertLayer
{
    public BertLayer(BertParameters p, int index)
    {
        Index = index;
        int h = p.Config.HiddenSize, inter = p.Config.IntermediateSize;
        Heads = p.Config.HeadsOf(index).Length;
        int a = Heads * p.Config.HeadDim; // all_head_size: H, less the pruned heads
        string at = $"bert.encoder.layer.{index}.";
        QkvWeight = p.AddFused(at + "attention.self.{0}.weight", ["query", "key", "value"], a, h);
        QkvBias = p.AddFused(at + "attention.self.{0}.bias", ["query", "key", "value"], a);
        AttentionOutputWeight = p.Add(at + "attention.output.dense.weight", true, h, a);
        AttentionOutputBias = p.Add(at + "attention.output.dense.bias", false, h);
        AttentionLayerNormWeight = p.Add(at + "attention.output.LayerNorm.weight", false, h);
        AttentionLayerNormBias = p.Add(at + "attention.output.LayerNorm.bias", false, h);
        IntermediateWeight = p.Add(at + "intermediate.dense.weight", true, inter, h);
        IntermediateBias = p.Add(at + "intermediate.dense.bias", false, inter);
        OutputWeight = p.Add(at + "output.dense.weight", true, h, inter);
        OutputBias = p.Add(at + "output.dense.bias", false, h);
        OutputLayerNormWeight = p.Add(at + "output.LayerNorm.weight", false, h);
        OutputLayerNormBias = p.Add(at + "output.LayerNorm.bias", false, h);
    }

    /// <summary>Attention heads of this layer: num_attention_heads less the pruned ones.</summary>
    public int Heads { get; }

    public int Index { get; }
    public Var QkvWeight { get; }  // [3A, H]: query, key, value row blocks, A = Heads·HD
    public Var QkvBias { get; }    // [3A]
    public Var AttentionOutputWeight { get; }
    public Var AttentionOutputBias { get; }
    public Var AttentionLayerNormWeight { get; }
    public Var AttentionLayerNormBias { get; }
    public Var IntermediateWeight { get; }
    public Var IntermediateBias { get; }
    public Var OutputWeight { get; }
    public Var OutputBias { get; }
    public Var OutputLayerNormWeight { get; }
    public Var OutputLayerNormBias { get; }

    /// <param name="probs">When given ([B, NH, S, S]), receives the attention probabilities.</param>
    /// <param name="hooks">Where fine-tuning and compression reach in (Linear layers, head masks, attention maps).</param>
    /// <param name="mask">The rank mask [2, B, S] (<see cref="BertInputs.AttentionRanks"/>).</param>
    /// <param name="position">Where in the encoder this layer runs (its dropout keys and head mask): <see cref="Index"/>, unless ALBERT runs one layer's parameters at several places.</param>
    public Var Forward(Tape tape, BertConfig c, Var x, DeviceInts mask, int batch, int seqLen, Dropouts dropouts, Tensor? probs = null,
        BertHooks? hooks = null, List<Var>? attentionMaps = null, int? position = null)
    {
        int at = position ?? Index;
        var linear = hooks?.Linear ?? Ops.Linear;
        var qkv = linear(tape, x, QkvWeight, QkvBias, null); // [B, S, 3A] = [B, S, 3, NH, HD]
        var shape = AttentionShape.Create(batch, seqLen, Heads, c.HeadDim, dropouts.Attention, dropouts.Key(1 + 3 * at));
        shape.Ranks = 1;
        var context = Ops.Attention(tape, qkv, mask, shape, probs);
        if (attentionMaps is not null) attentionMaps.Add(Ops.AttentionProbs(tape, qkv, mask, shape));
        if (hooks?.HeadMasks?[at] is { } headMask) context = Ops.ScaleHeads(tape, context, headMask, c.HeadDim);
        var attention = linear(tape, context, AttentionOutputWeight, AttentionOutputBias, null);
        attention = Ops.Dropout(tape, attention, dropouts.Hidden, dropouts.Key(2 + 3 * at));
        var h1 = Ops.LayerNorm(tape, attention, x, AttentionLayerNormWeight, AttentionLayerNormBias, c.LayerNormEps);
        var intermediate = linear(tape, h1, IntermediateWeight, IntermediateBias, c.Activation);
        var output = linear(tape, intermediate, OutputWeight, OutputBias, null);
        output = Ops.Dropout(tape, output, dropouts.Hidden, dropouts.Key(3 + 3 * at));
        return Ops.LayerNorm(tape, output, h1, OutputLayerNormWeight, OutputLayerNormBias, c.LayerNormEps);
    }

    /// <summary>The Linear weights of this layer (what Mixout mixes).</summary>
    public IEnumerable<Var> LinearWeights => [QkvWeight, AttentionOutputWeight, IntermediateWeight, OutputWeight];
}

/// <summary>A Linear layer y = act(x·Wᵀ + b): <see cref="Ops.Linear(Tape, Var, Var, Var?, ActivationKind?)"/> or a replacement for it.</summary>
public delegate Var LinearLayer(Tape tape, Var x, Var weight, Var? bias, ActivationKind? activation);

/// <summary>
/// Where fine-tuning and compression reach into the model: <see cref="Linear"/> runs every Linear
/// layer of the encoder, pooler and task head (Mixout mixes weights there, quantization calibrates,
/// fake-quantizes or runs int8), <see cref="EmbeddingOutput"/> maps the embedding layer's output
/// before the first layer (FreeLB's and SMART's perturbations), <see cref="HeadMasks"/> scales each
/// layer's heads ([heads of that layer] per layer, Michel et al. 2019), and
/// <see cref="AttentionMaps"/> asks for differentiable attention probabilities (distillation).
/// </summary>
public sealed class BertHooks
{
    public LinearLayer? Linear { get; init; }
    public Func<Var, Var>? EmbeddingOutput { get; init; }
    public IReadOnlyList<Var?>? HeadMasks { get; init; }
    public bool AttentionMaps { get; init; }
}

/// <summary>What <see cref="BertModel.Forward"/> returns; Vars live as long as the tape.</summary>
public sealed class BertEncoderOutputs
{
    public required Var LastHiddenState { get; init; }             // [B, S, H]
    public Var? PoolerOutput { get; init; }                        // [B, H], when the model has a pooler
    public required IReadOnlyList<Var> HiddenStates { get; init; } // L + 1 entries, 0 = embeddings output
    public IReadOnlyList<Tensor>? Attentions { get; init; }        // L entries [B, NH, S, S], on request
    public IReadOnlyList<Var>? AttentionMaps { get; init; }        // L entries [B, NH, S, S] with gradients, on request (hooks)
}

/// <summary>HF's BertModel: embeddings, the encoder layers and (optionally) the pooler — the body every head sits on.</summary>
/// <summary>
/// HF's BertModel: embeddings, the encoder layers and optionally the pooler. Inside a model with
/// heads it shares that model's parameters; loaded alone (<see cref="BertFolder.LoadBody"/>) it owns
/// them, and <see cref="Dispose"/> frees them.
/// </summary>
public sealed class BertModel : IDisposable
{
    private readonly bool ownsParameters;

    public BertModel(BertParameters p, bool addPoolingLayer = true) : this(p, addPoolingLayer, ownsParameters: false) { }

    internal BertModel(BertParameters p, bool addPoolingLayer, bool ownsParameters)
    {
        this.ownsParameters = ownsParameters;
        Parameters = p;
        Config = p.Config;
        Device = p.Device;
        int h = Config.HiddenSize;
        Embeddings = new BertEmbeddings(p);
        if (Config.Albert)
        {
            EmbeddingMappingWeight = p.Add("bert.encoder.embedding_hidden_mapping_in.weight", true, h, Config.EmbeddingSize);
            EmbeddingMappingBias = p.Add("bert.encoder.embedding_hidden_mapping_in.bias", false, h);
        }
        // ALBERT's cross-layer sharing: layer i runs group GroupOf(i)'s parameters (BERT: its own).
        var groups = Enumerable.Range(0, Config.NumHiddenGroups).Select(g => new BertLayer(p, g)).ToArray();
        Layers = Enumerable.Range(0, Config.NumHiddenLayers).Select(i => groups[Config.GroupOf(i)]).ToArray();
        if (addPoolingLayer)
        {
            PoolerWeight = p.Add("bert.pooler.dense.weight", true, h, h);
            PoolerBias = p.Add("bert.pooler.dense.bias", false, h);
        }
    }

    public BertConfig Config { get; }
    public BertDevice Device { get; }

    /// <summary>The parameters its modules use (a model with heads has more in the same set).</summary>
    public BertParameters Parameters { get; }
    public BertEmbeddings Embeddings { get; }

    /// <summary>The encoder's layers in order; with ALBERT's sharing an entry repeats its group's layer.</summary>
    public BertLayer[] Layers { get; }

    /// <summary>ALBERT's embedding_hidden_mapping_in: embedding_size → hidden_size, before the first layer (null for BERT).</summary>
    public Var? EmbeddingMappingWeight { get; }
    public Var? EmbeddingMappingBias { get; }
    public Var? PoolerWeight { get; }
    public Var? PoolerBias { get; }

    /// <summary>Every pretrained Linear weight of the encoder and pooler (what Mixout mixes).</summary>
    public IEnumerable<Var> LinearWeights => Layers.Distinct().SelectMany(l => l.LinearWeights).Concat(PoolerWeight is null ? [] : [PoolerWeight]);

    public BertEncoderOutputs Forward(Tape tape, BertInputs inputs, Dropouts dropouts, bool outputAttentions = false, BertHooks? hooks = null)
    {
        var c = Config;
        inputs.Validate(c);
        int b = inputs.Batch, s = inputs.SeqLen;
        var ids = tape.Own(new DeviceInts(Device, inputs.InputIds));
        var positions = tape.Own(new DeviceInts(Device, inputs.Positions()));
        var types = tape.Own(new DeviceInts(Device, inputs.TokenTypeIds));
        var mask = tape.Own(new DeviceInts(Device, inputs.AttentionRanks()));

        var hidden = Embeddings.Forward(tape, c, ids, positions, types, b, s, dropouts);
        if (hooks?.EmbeddingOutput is { } perturb) hidden = perturb(hidden);
        if (EmbeddingMappingWeight is not null) hidden = Ops.Linear(tape, hidden, EmbeddingMappingWeight, EmbeddingMappingBias);
        var states = new List<Var> { hidden };
        var attentions = outputAttentions ? new List<Tensor>() : null;
        var maps = hooks?.AttentionMaps == true ? new List<Var>() : null;
        if (hooks?.HeadMasks is { } masks && masks.Count != Layers.Length)
            throw new ArgumentException($"{masks.Count} head masks for {Layers.Length} layers");
        for (int l = 0; l < Layers.Length; l++)
        {
            var layer = Layers[l];
            var probs = outputAttentions ? tape.Own(new Tensor(Device, b, layer.Heads, s, s)) : null;
            if (!tape.Recording && maps is null)
            {
                // Inference: a layer's intermediates are freed when it is done, only its output kept,
                // so a forward holds one layer's activations at a time (and the pool reuses them).
                using var layerTape = new Tape(recording: false);
                hidden = tape.Own(layerTape.Release(layer.Forward(layerTape, c, hidden, mask, b, s, dropouts, probs, hooks, maps, l)));
            }
            else hidden = layer.Forward(tape, c, hidden, mask, b, s, dropouts, probs, hooks, maps, l);
            states.Add(hidden);
            if (probs is not null) attentions!.Add(probs);
        }

        Var? pooled = null;
        if (PoolerWeight is not null)
        {
            var cls = Ops.GatherRows(tape, hidden, Enumerable.Range(0, b).Select(i => i * s).ToArray());
            pooled = (hooks?.Linear ?? Ops.Linear)(tape, cls, PoolerWeight, PoolerBias, ActivationKind.Tanh);
        }
        return new BertEncoderOutputs { LastHiddenState = hidden, PoolerOutput = pooled, HiddenStates = states, Attentions = attentions, AttentionMaps = maps };
    }

    /// <summary>Frees the parameters when this model owns them (loaded alone); otherwise nothing.</summary>
    public void Dispose()
    {
        if (ownsParameters) Parameters.Dispose();
    }
}

/// <summary>Dropout probabilities and the Philox key of one forward pass (all zero in eval mode).</summary>
public readonly record struct Dropouts(float Hidden, float Attention, ulong Seed, uint Step)
{
    public static Dropouts Off => new(0f, 0f, 0, 0);

    public static Dropouts Training(BertConfig c, ulong seed, uint step) => new(c.HiddenDropoutProb, c.AttentionProbsDropoutProb, seed, step);

    public DropoutKey Key(int site) => new(Seed, Step, (uint)site);
}

/// <summary>What <see cref="BertForPreTraining.Forward"/> returns; Vars live as long as the tape.</summary>
public sealed class BertOutputs
{
    public required Var LastHiddenState { get; init; }          // [B, S, H]
    public required Var PoolerOutput { get; init; }             // [B, H]
    public required Var PredictionLogits { get; init; }         // [B, S, V], or [M, V] at masked positions
    public required Var SeqRelationshipLogits { get; init; }    // [B, sentence classes] (2 for NSP)
    public required IReadOnlyList<Var> HiddenStates { get; init; } // L + 1 entries, 0 = embeddings output
    public IReadOnlyList<Tensor>? Attentions { get; init; }     // L entries [B, NH, S, S], on request
    public Loss? MlmLoss { get; init; }
    public Loss? NspLoss { get; init; }

    /// <summary>The auxiliary token heads' losses, by head, where their labels were given (not part of HF's loss).</summary>
    public IReadOnlyDictionary<string, Loss> AuxLosses { get; init; } = new Dictionary<string, Loss>();

    /// <summary>The masked positions (b·S + s) the logits were computed at, when only those were.</summary>
    public int[]? MaskedPositions { get; init; }

    /// <summary>HF's total loss: MLM plus NSP, each where its labels were given.</summary>
    public float? ReadLoss() => MlmLoss is null && NspLoss is null ? null : (MlmLoss?.Read() ?? 0f) + (NspLoss?.Read() ?? 0f);
}

/// <summary>The mean of several losses on one tape: its weight in backward is shared out equally.</summary>
public sealed class MeanLoss
{
    private readonly Loss[] parts;
    private float weight;

    public MeanLoss(params Loss[] parts)
    {
        this.parts = parts;
        Weight = 1f;
    }

    public float Read() => parts.Sum(p => p.Read()) / parts.Length;

    /// <summary>∂(total)/∂(this mean), as <see cref="Loss.Weight"/>.</summary>
    public float Weight
    {
        get => weight;
        set
        {
            weight = value;
            foreach (var p in parts) p.Weight = value / parts.Length;
        }
    }
}

public sealed class BertForPreTraining : IDisposable
{
    public BertForPreTraining(BertDevice device, BertConfig config)
    {
        Config = config.Validate();
        Device = device;
        Parameters = new BertParameters(device, config);
        var p = Parameters;
        int h = config.HiddenSize, e = config.EmbeddingSize; // ALBERT's head maps back to the embeddings' width
        Bert = new BertModel(p);
        TransformWeight = p.Add("cls.predictions.transform.dense.weight", true, e, h);
        TransformBias = p.Add("cls.predictions.transform.dense.bias", false, e);
        TransformLayerNormWeight = p.Add("cls.predictions.transform.LayerNorm.weight", false, e);
        TransformLayerNormBias = p.Add("cls.predictions.transform.LayerNorm.bias", false, e);
        DecoderBias = p.Add("cls.predictions.bias", false, config.VocabSize);
        SeqRelationshipWeight = p.Add("cls.seq_relationship.weight", true, config.SentenceClasses, h);
        SeqRelationshipBias = p.Add("cls.seq_relationship.bias", false, config.SentenceClasses);
        foreach (var name in config.AuxHeads)
            AuxHeads[name] = (p.Add(AuxTensor(name, "weight"), true, 2, h), p.Add(AuxTensor(name, "bias"), false, 2));
    }

    /// <summary>"token-document", "weight" → "cls.aux.token_document.weight".</summary>
    public static string AuxTensor(string head, string part) => $"cls.aux.{head.Replace('-', '_')}.{part}";

    /// <summary>ERNIE 2.0's token-level heads (config.AuxHeads): a 2-way classifier per head.</summary>
    public Dictionary<string, (Var Weight, Var Bias)> AuxHeads { get; } = new(StringComparer.Ordinal);

    public BertConfig Config { get; }
    public BertDevice Device { get; }
    public BertParameters Parameters { get; }
    public BertModel Bert { get; }
    public BertEmbeddings Embeddings => Bert.Embeddings;
    public BertLayer[] Layers => Bert.Layers;
    public Var PoolerWeight => Bert.PoolerWeight!;
    public Var PoolerBias => Bert.PoolerBias!;
    public Var TransformWeight { get; }
    public Var TransformBias { get; }
    public Var TransformLayerNormWeight { get; }
    public Var TransformLayerNormBias { get; }
    public Var DecoderBias { get; }
    public Var SeqRelationshipWeight { get; }
    public Var SeqRelationshipBias { get; }

    /// <summary>
    /// The forward pass of HF's BertForPreTraining. With <paramref name="maskedOnly"/> the MLM
    /// head runs only at positions whose label is not −100 (the training path); otherwise at every
    /// position. Losses are computed for the labels given. Pass a recording tape to differentiate,
    /// a non-recording one for inference; either owns every output.
    /// </summary>
    public BertOutputs Forward(Tape tape, BertInputs inputs, Dropouts dropouts, bool maskedOnly = false, bool outputAttentions = false)
    {
        var c = Config;
        int b = inputs.Batch, s = inputs.SeqLen;
        var encoded = Bert.Forward(tape, inputs, dropouts, outputAttentions);
        var hidden = encoded.LastHiddenState;
        var pooled = encoded.PoolerOutput!;

        int[]? positions = null;
        var mlmInput = hidden;
        if (maskedOnly)
        {
            if (inputs.Labels is null) throw new ArgumentException("masked-only MLM logits need labels");
            positions = Enumerable.Range(0, b * s).Where(i => inputs.Labels[i] != -100).ToArray();
            mlmInput = Ops.GatherRows(tape, hidden, positions);
        }
        var t = Ops.Linear(tape, mlmInput, TransformWeight, TransformBias, c.Activation);
        t = Ops.LayerNorm(tape, t, null, TransformLayerNormWeight, TransformLayerNormBias, c.LayerNormEps);
        var logits = Ops.Linear(tape, t, Embeddings.Word, DecoderBias);
        var nsp = Ops.Linear(tape, pooled, SeqRelationshipWeight, SeqRelationshipBias);

        Loss? mlmLoss = null, nspLoss = null;
        if (inputs.Labels is not null)
        {
            var labels = positions is null ? inputs.Labels : positions.Select(i => inputs.Labels[i]).ToArray();
            mlmLoss = Ops.CrossEntropy(tape, logits, tape.Own(new DeviceInts(Device, labels)));
        }
        if (inputs.NextSentenceLabel is not null)
            nspLoss = Ops.CrossEntropy(tape, nsp, tape.Own(new DeviceInts(Device, inputs.NextSentenceLabel)));
        var auxLosses = new Dictionary<string, Loss>(StringComparer.Ordinal);
        foreach (var (head, labels) in inputs.AuxLabels ?? new Dictionary<string, int[]>())
            if (labels.Any(l => l != -100))
                auxLosses[head] = AuxLoss(tape, hidden, head, labels); // BertInputs.Validate refused labels for a head the model lacks

        return new BertOutputs
        {
            LastHiddenState = hidden, PoolerOutput = pooled, PredictionLogits = logits, SeqRelationshipLogits = nsp,
            HiddenStates = encoded.HiddenStates, Attentions = encoded.Attentions, MlmLoss = mlmLoss, NspLoss = nspLoss, MaskedPositions = positions,
            AuxLosses = auxLosses,
        };
    }

    /// <summary>
    /// The loss of auxiliary token head <paramref name="head"/> (2-way) on the last hidden states
    /// [B·S, H], over the positions whose label [B·S] is not −100 (only those go through the head).
    /// </summary>
    public Loss AuxLoss(Tape tape, Var lastHiddenState, string head, int[] labels)
    {
        if (!AuxHeads.TryGetValue(head, out var w)) throw new ArgumentException($"labels for the {head} head, which this model does not have");
        var at = Enumerable.Range(0, labels.Length).Where(i => labels[i] != -100).ToArray();
        if (at.Length == 0) throw new ArgumentException($"no labelled position for the {head} head");
        var logits = Ops.Linear(tape, Ops.GatherRows(tape, lastHiddenState, at), w.Weight, w.Bias);
        return Ops.CrossEntropy(tape, logits, tape.Own(new DeviceInts(Device, at.Select(i => labels[i]).ToArray())));
    }

    /// <summary>
    /// The document-contrastive loss over a batch whose rows 2i and 2i + 1 are two segments of one
    /// document: each row's last layer is averaged over its real tokens (fine-tuning's mean pooling),
    /// standardised (a LayerNorm without parameters, so a dot product over H is a correlation), and
    /// each segment must pick its partner among the other half's N segments: cross-entropy over
    /// zᵢ·z'ⱼ / (H·τ), in both directions, averaged (InfoNCE with in-batch negatives, as SimCSE).
    /// </summary>
    public MeanLoss ContrastiveLoss(Tape tape, Var lastHiddenState, BertInputs inputs, float temperature)
    {
        int b = inputs.Batch, h = Config.HiddenSize, n = b / 2;
        if (b < 4 || b % 2 != 0) throw new ArgumentException($"the contrastive objective needs an even batch of at least 2 pairs, got {b} rows");
        if (!(temperature > 0)) throw new ArgumentException($"the contrastive temperature must be positive, got {temperature}");
        float[] Mean(int parity) => inputs.MeanPooling([.. Enumerable.Range(0, n).Select(i => 2 * i + parity)]);
        // γ = 1/√(H·τ) on both sides makes zᵢ·z'ⱼ = correlation / τ.
        var gamma = tape.Own(new Var(Tensor.FromHost(Device, Enumerable.Repeat(1f / MathF.Sqrt(h * temperature), h).ToArray(), h)));
        var beta = tape.Own(new Var(Tensor.FromHost(Device, new float[h], h)));
        var a = Ops.LayerNorm(tape, Ops.MixRows(tape, Mean(0), n, lastHiddenState), null, gamma, beta, 1e-6f);
        var p = Ops.LayerNorm(tape, Ops.MixRows(tape, Mean(1), n, lastHiddenState), null, gamma, beta, 1e-6f);
        var partners = tape.Own(new DeviceInts(Device, Enumerable.Range(0, n).ToArray()));
        var forward = Ops.CrossEntropy(tape, Ops.Linear(tape, a, p, null), partners);
        var backward = Ops.CrossEntropy(tape, Ops.Linear(tape, p, a, null), partners);
        return new MeanLoss(forward, backward);
    }

    public void ZeroGrad()
    {
        foreach (var p in Parameters.All) p.Var.ZeroGrad();
    }

    public void Dispose() => Parameters.Dispose();
}
