// BertConfig mirrors HF's config.json field for field (names and bert-base defaults from
// transformers' BertConfig). Keys IlgpuBert does not use (architectures, torch_dtype, id2label, …)
// are kept as they were and written back, so a round trip loses nothing.
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Kernels;

namespace IlgpuBert.Model;

/// <summary>A BERT's hyperparameters as HF's config.json holds them (unknown keys kept in <see cref="Extra"/>).</summary>
public sealed record BertConfig
{
    /// <summary>vocab_size: rows of the word-embedding table.</summary>
    public int VocabSize { get; init; } = 30522;
    /// <summary>hidden_size: the width of every layer.</summary>
    public int HiddenSize { get; init; } = 768;
    /// <summary>num_hidden_layers: encoder layers.</summary>
    public int NumHiddenLayers { get; init; } = 12;
    /// <summary>num_attention_heads: heads per layer (hidden_size must divide by it).</summary>
    public int NumAttentionHeads { get; init; } = 12;
    /// <summary>intermediate_size: the feed-forward width.</summary>
    public int IntermediateSize { get; init; } = 3072;
    /// <summary>hidden_act: gelu, gelu_new, gelu_pytorch_tanh or relu.</summary>
    public string HiddenAct { get; init; } = "gelu";
    /// <summary>hidden_dropout_prob: dropout after embeddings, attention output and feed-forward.</summary>
    public float HiddenDropoutProb { get; init; } = 0.1f;
    /// <summary>attention_probs_dropout_prob: dropout on the attention probabilities.</summary>
    public float AttentionProbsDropoutProb { get; init; } = 0.1f;
    /// <summary>max_position_embeddings: the longest sequence, in tokens.</summary>
    public int MaxPositionEmbeddings { get; init; } = 512;
    /// <summary>type_vocab_size: token type (segment) ids.</summary>
    public int TypeVocabSize { get; init; } = 2;
    /// <summary>initializer_range: the standard deviation of the truncated-normal initialisation.</summary>
    public float InitializerRange { get; init; } = 0.02f;
    /// <summary>layer_norm_eps: the ε of every LayerNorm.</summary>
    public float LayerNormEps { get; init; } = 1e-12f;
    /// <summary>pad_token_id: the id of [PAD].</summary>
    public int PadTokenId { get; init; }

    /// <summary>
    /// Classes of the sentence-relationship head: 2 (HF's NSP, and ALBERT's SOP), or 3 for the
    /// next / previous / random objective. Written to config.json only when it is not 2, under a
    /// key HF ignores.
    /// </summary>
    public int SentenceClasses { get; init; } = 2;

    /// <summary>
    /// The token-level pretraining heads this model carries (ERNIE 2.0's, ELECTRA's detector; <see cref="AuxHeadNames"/>), each a
    /// 2-way classifier on the last hidden states saved as cls.aux.NAME.weight/bias. Written to
    /// config.json only when there are some, under a key HF ignores (HF's BertForPreTraining loads the
    /// folder and leaves those tensors unused).
    /// </summary>
    public IReadOnlyList<string> AuxHeads { get; init; } = [];

    /// <summary>
    /// capitalization: was the word capitalised (uncased vocabularies); token-document: does the
    /// token occur elsewhere in its document (both ERNIE 2.0); replaced: ELECTRA's replaced-token detection.
    /// </summary>
    public static readonly string[] AuxHeadNames = ["capitalization", "token-document", "replaced"];

    /// <summary>Every other key of config.json, untouched.</summary>
    public JsonObject Extra { get; init; } = new();

    /// <summary>
    /// ALBERT (Lan et al. 2019; HF's AlbertConfig, model_type "albert"): factorised embeddings of
    /// <see cref="EmbeddingSize"/> projected to hidden_size, and the layers' parameters shared within
    /// <see cref="NumHiddenGroups"/> groups. Checkpoints use HF's ALBERT tensor names (AlbertNames).
    /// </summary>
    public bool Albert { get; init; }

    /// <summary>embedding_size (ALBERT): the width of the embedding tables; hidden_size for BERT.</summary>
    public int EmbeddingSize
    {
        get => embeddingSize ?? HiddenSize;
        init => embeddingSize = value;
    }

    private readonly int? embeddingSize;

    /// <summary>num_hidden_groups (ALBERT): layer i uses group i / (L / G)'s parameters; L (no sharing) for BERT.</summary>
    public int NumHiddenGroups
    {
        get => numHiddenGroups ?? (Albert ? 1 : NumHiddenLayers);
        init => numHiddenGroups = value;
    }

    private readonly int? numHiddenGroups;

    /// <summary>The parameter group encoder layer <paramref name="layer"/> runs (HF's int(i / (L / G))).</summary>
    public int GroupOf(int layer) => layer / (NumHiddenLayers / NumHiddenGroups);

    /// <summary>Refuses an ALBERT where a feature assumes one set of parameters per layer and hidden-wide embeddings.</summary>
    public void RequireNotAlbert(string feature)
    {
        if (Albert) throw new ArgumentException($"{feature} is not supported for an ALBERT (shared layers, factorised embeddings)");
    }

    /// <summary>This config as ALBERT: embedding_size min(128, H / 2) (the paper's 128 at base), one shared layer group.</summary>
    public BertConfig AsAlbert(int? embeddingSize = null, int groups = 1)
    {
        var extra = (JsonObject)Extra.DeepClone();
        extra.Remove("model_type");
        extra.Remove("architectures");
        return (this with { Albert = true, EmbeddingSize = embeddingSize ?? Math.Min(128, HiddenSize / 2), NumHiddenGroups = groups, Extra = extra }).Validate();
    }

    /// <summary>hidden_size / num_attention_heads.</summary>
    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>
    /// HF's pruned_heads: per layer, the original indices of the attention heads removed
    /// (PreTrainedModel.prune_heads). Empty for an unpruned model.
    /// </summary>
    public IReadOnlyDictionary<int, int[]> PrunedHeads
    {
        get
        {
            var result = new Dictionary<int, int[]>();
            if (Extra["pruned_heads"] is not JsonObject heads) return result;
            foreach (var (key, node) in heads)
            {
                if (!int.TryParse(key, out int layer) || node is not JsonArray list)
                    throw new FormatException($"layer numbers must map to lists of heads, got \"{key}\": {node?.ToJsonString()}"); // Validate names the file
                result[layer] = list.Select(h => h?.GetValue<int>() ?? -1).Distinct().Order().ToArray();
            }
            return result;
        }
    }

    /// <summary>The heads layer <paramref name="layer"/> still has, by original index.</summary>
    public int[] HeadsOf(int layer)
    {
        var pruned = PrunedHeads.GetValueOrDefault(layer) ?? [];
        return Enumerable.Range(0, NumAttentionHeads).Except(pruned).ToArray();
    }

    /// <summary>A copy with <paramref name="pruned"/> (layer → original head indices) written as pruned_heads.</summary>
    public BertConfig WithPrunedHeads(IReadOnlyDictionary<int, int[]> pruned)
    {
        var extra = (JsonObject)Extra.DeepClone();
        var heads = new JsonObject();
        foreach (var (layer, list) in pruned.Where(kv => kv.Value.Length > 0).OrderBy(kv => kv.Key))
            heads[layer.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonArray(list.Distinct().Order().Select(h => (JsonNode)h).ToArray());
        if (heads.Count > 0) extra["pruned_heads"] = heads;
        else extra.Remove("pruned_heads");
        return (this with { Extra = extra }).Validate();
    }
    /// <summary>hidden_act as the kernels' activation.</summary>
    public ActivationKind Activation => ActivationKernels.Parse(HiddenAct);

    private static readonly string[] Known =
    [
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
        "initializer_range", "layer_norm_eps", "pad_token_id", "ilgpu_bert_sentence_classes", "ilgpu_bert_aux_heads",
        "embedding_size", "num_hidden_groups", "inner_group_num",
    ];

    /// <summary>The sizes of Turc et al. 2019 ("Well-read students learn better"): L layers, H hidden, A heads, 4H intermediate.</summary>
    public static BertConfig ForSize(string size, int vocabSize = 30522)
    {
        var (layers, hidden, heads) = size switch
        {
            "tiny" => (2, 128, 2),
            "mini" => (4, 256, 4),
            "small" => (4, 512, 8),
            "medium" => (8, 512, 8),
            "base" => (12, 768, 12),
            "large" => (24, 1024, 16),
            _ => throw new ArgumentException($"unknown size \"{size}\" (tiny, mini, small, medium, base, large)"),
        };
        return new BertConfig
        {
            VocabSize = vocabSize, HiddenSize = hidden, NumHiddenLayers = layers, NumAttentionHeads = heads, IntermediateSize = 4 * hidden,
        };
    }

    /// <summary>Models larger than this are refused before anything is allocated (BERT-large has 0.34 billion).</summary>
    public const long MaxParameters = 2_000_000_000;

    /// <summary>Parameters of BertForPreTraining with this config (embeddings, encoder, pooler, both heads).</summary>
    public long ParameterCount()
    {
        long v = VocabSize, h = HiddenSize, i = IntermediateSize, e = EmbeddingSize;
        long embeddings = (v + MaxPositionEmbeddings + TypeVocabSize) * e + 2 * e + (Albert ? e * h + h : 0);
        long layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
        long heads = (h * h + h) + (h * e + e + 2 * e + v) + (h * SentenceClasses + SentenceClasses) + AuxHeads.Count * (2 * h + 2);
        return embeddings + Math.Min(NumHiddenGroups, NumHiddenLayers) * layer + heads;
    }

    /// <summary>Throws a <see cref="CheckpointException"/> naming the first inconsistent field.</summary>
    /// <summary>Checks every field; errors start with <paramref name="source"/> (the file, when read from one).</summary>
    public BertConfig Validate(string source = "config")
    {
        void Positive(string name, long v)
        {
            if (v < 1) throw new CheckpointException($"{source}: {name} must be positive, got {v}");
        }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("num_hidden_layers", NumHiddenLayers);
        Positive("num_attention_heads", NumAttentionHeads);
        Positive("intermediate_size", IntermediateSize);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        Positive("type_vocab_size", TypeVocabSize);
        if (HiddenSize % NumAttentionHeads != 0)
            throw new CheckpointException($"{source}: num_attention_heads ({NumAttentionHeads}) does not divide hidden_size ({HiddenSize})");
        if (HeadDim > AttentionShape.MaxHeadDim)
            throw new CheckpointException($"{source}: head size {HeadDim} exceeds the supported {AttentionShape.MaxHeadDim}");
        if (!(LayerNormEps > 0 && LayerNormEps < 1)) throw new CheckpointException($"{source}: layer_norm_eps must be in (0, 1), got {LayerNormEps}");
        if (!(InitializerRange >= 0 && float.IsFinite(InitializerRange))) throw new CheckpointException($"{source}: initializer_range must be a finite non-negative number, got {InitializerRange}");
        if (Math.Max((long)VocabSize, Math.Max(MaxPositionEmbeddings, IntermediateSize)) * HiddenSize > Array.MaxLength)
            throw new CheckpointException($"{source}: a weight matrix of this model would exceed {Array.MaxLength:N0} elements (vocab_size, max_position_embeddings or intermediate_size × hidden_size)");
        long parameters = ParameterCount();
        if (parameters > MaxParameters)
            throw new CheckpointException($"{source}: this model would have {parameters:N0} parameters ({parameters * 4.0 / (1L << 30):F1} GiB in FP32); more than the {MaxParameters:N0} supported (check vocab_size, hidden_size, intermediate_size, num_hidden_layers, max_position_embeddings)");
        if (SentenceClasses < 2) throw new CheckpointException($"{source}: ilgpu_bert_sentence_classes must be at least 2, got {SentenceClasses}");
        if (!Albert && (embeddingSize is not null && embeddingSize != HiddenSize || numHiddenGroups is not null && numHiddenGroups != NumHiddenLayers))
            throw new CheckpointException($"{source}: embedding_size and num_hidden_groups other than hidden_size and num_hidden_layers are ALBERT's (model_type \"albert\")");
        if (Albert)
        {
            Positive("embedding_size", EmbeddingSize);
            Positive("num_hidden_groups", NumHiddenGroups);
            if (NumHiddenLayers % NumHiddenGroups != 0)
                throw new CheckpointException($"{source}: num_hidden_groups ({NumHiddenGroups}) must divide num_hidden_layers ({NumHiddenLayers})");
            if (PrunedHeads.Count > 0) throw new CheckpointException($"{source}: pruned_heads on an ALBERT (shared layers) is not supported");
        }
        foreach (var name in AuxHeads)
            if (!AuxHeadNames.Contains(name)) throw new CheckpointException($"{source}: ilgpu_bert_aux_heads names \"{name}\"; known heads are {string.Join(", ", AuxHeadNames)}");
        if (AuxHeads.Distinct().Count() != AuxHeads.Count) throw new CheckpointException($"{source}: ilgpu_bert_aux_heads names a head twice");
        if (HiddenDropoutProb is < 0 or >= 1 || AttentionProbsDropoutProb is < 0 or >= 1)
            throw new CheckpointException($"{source}: dropout probabilities must be in [0, 1)");
        try { _ = Activation; }
        catch (ArgumentException e) { throw new CheckpointException($"{source}: {e.Message}"); }
        try
        {
            foreach (var (layer, heads) in PrunedHeads)
            {
                if (layer < 0 || layer >= NumHiddenLayers) throw new CheckpointException($"{source}: pruned_heads names layer {layer}; the model has {NumHiddenLayers}");
                if (heads.Any(h => h < 0 || h >= NumAttentionHeads)) throw new CheckpointException($"{source}: pruned_heads of layer {layer} must be heads in [0, {NumAttentionHeads})");
                if (heads.Length == NumAttentionHeads) throw new CheckpointException($"{source}: pruned_heads removes every head of layer {layer}; keep at least one (or drop the layer)");
            }
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new CheckpointException($"{source}: pruned_heads must map layer numbers to lists of integer head indices ({e.Message})");
        }
        return this;
    }

    /// <summary>Parses config.json's text; <paramref name="source"/> names the file in errors.</summary>
    public static BertConfig Parse(string json, string source = "config.json")
    {
        var obj = StrictJson.Parse(json, source) as JsonObject ?? throw new CheckpointException($"{source}: not a JSON object");
        var defaults = new BertConfig();
        T Get<T>(string key, T fallback)
        {
            if (!obj.TryGetPropertyValue(key, out var node) || node is null) return fallback;
            try { return node.GetValue<T>(); }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            {
                throw new CheckpointException($"{source}: {key} has the wrong type ({StrictJson.Short(node.ToJsonString(), 60)})");
            }
        }
        var extra = new JsonObject();
        foreach (var (key, node) in obj)
            if (!Known.Contains(key)) extra[key] = node?.DeepClone();
        bool albert = obj["model_type"] is JsonValue type && type.TryGetValue<string>(out var modelType) && modelType == "albert";
        if (albert && Get("inner_group_num", 1) != 1)
            throw new CheckpointException($"{source}: inner_group_num {Get("inner_group_num", 1)}: only ALBERT's inner_group_num 1 (every released ALBERT) is supported");
        if (!albert)
            foreach (var key in new[] { "embedding_size", "num_hidden_groups", "inner_group_num" })
                if (obj.ContainsKey(key)) extra[key] = obj[key]?.DeepClone(); // not BERT's: kept as they were
        var config = new BertConfig
        {
            VocabSize = Get("vocab_size", defaults.VocabSize),
            HiddenSize = Get("hidden_size", defaults.HiddenSize),
            NumHiddenLayers = Get("num_hidden_layers", defaults.NumHiddenLayers),
            NumAttentionHeads = Get("num_attention_heads", defaults.NumAttentionHeads),
            IntermediateSize = Get("intermediate_size", defaults.IntermediateSize),
            HiddenAct = Get("hidden_act", defaults.HiddenAct),
            HiddenDropoutProb = Get("hidden_dropout_prob", defaults.HiddenDropoutProb),
            AttentionProbsDropoutProb = Get("attention_probs_dropout_prob", defaults.AttentionProbsDropoutProb),
            MaxPositionEmbeddings = Get("max_position_embeddings", defaults.MaxPositionEmbeddings),
            TypeVocabSize = Get("type_vocab_size", defaults.TypeVocabSize),
            InitializerRange = Get("initializer_range", defaults.InitializerRange),
            LayerNormEps = Get("layer_norm_eps", defaults.LayerNormEps),
            PadTokenId = Get("pad_token_id", defaults.PadTokenId),
            SentenceClasses = Get("ilgpu_bert_sentence_classes", defaults.SentenceClasses),
            AuxHeads = AuxHeadList(obj["ilgpu_bert_aux_heads"], source),
            Extra = extra,
            Albert = albert,
        };
        // HF's AlbertConfig defaults: embedding_size 128, num_hidden_groups 1.
        if (albert) config = config with { EmbeddingSize = Get("embedding_size", 128), NumHiddenGroups = Get("num_hidden_groups", 1) };
        return config.Validate(source);
    }

    private static string[] AuxHeadList(JsonNode? node, string source)
    {
        if (node is null) return [];
        if (node is not JsonArray list) throw new CheckpointException($"{source}: ilgpu_bert_aux_heads must be a list of head names");
        return [.. list.Select(n => n is JsonValue v && v.TryGetValue<string>(out var name) ? name
            : throw new CheckpointException($"{source}: ilgpu_bert_aux_heads must be a list of head names"))];
    }

    /// <summary>Reads config.json.</summary>
    public static BertConfig Read(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: no such file (a model folder needs config.json)");
        return Parse(BoundedFile.ReadAllText(path, BoundedFile.ConfigBytes, "config.json"), path);
    }

    /// <summary>The config as config.json's JSON (HF's keys, then the kept extra keys).</summary>
    public string ToJson()
    {
        var obj = new JsonObject();
        if (!Extra.ContainsKey("architectures")) obj["architectures"] = new JsonArray(Albert ? "AlbertForPreTraining" : "BertForPreTraining");
        if (!Extra.ContainsKey("model_type")) obj["model_type"] = Albert ? "albert" : "bert";
        if (Albert)
        {
            obj["embedding_size"] = EmbeddingSize;
            obj["num_hidden_groups"] = NumHiddenGroups;
            obj["inner_group_num"] = 1;
        }
        obj["vocab_size"] = VocabSize;
        obj["hidden_size"] = HiddenSize;
        obj["num_hidden_layers"] = NumHiddenLayers;
        obj["num_attention_heads"] = NumAttentionHeads;
        obj["intermediate_size"] = IntermediateSize;
        obj["hidden_act"] = HiddenAct;
        obj["hidden_dropout_prob"] = HiddenDropoutProb;
        obj["attention_probs_dropout_prob"] = AttentionProbsDropoutProb;
        obj["max_position_embeddings"] = MaxPositionEmbeddings;
        obj["type_vocab_size"] = TypeVocabSize;
        obj["initializer_range"] = InitializerRange;
        obj["layer_norm_eps"] = LayerNormEps;
        obj["pad_token_id"] = PadTokenId;
        if (SentenceClasses != 2) obj["ilgpu_bert_sentence_classes"] = SentenceClasses;
        if (AuxHeads.Count > 0) obj["ilgpu_bert_aux_heads"] = new JsonArray([.. AuxHeads.Select(n => (JsonNode)JsonValue.Create(n))]);
        foreach (var (key, node) in Extra) obj[key] = node?.DeepClone();
        return obj.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Writes config.json atomically.</summary>
    public void Write(string path) => AtomicFile.WriteText(path, ToJson() + "\n");
}
