// A sentence-transformers model folder (what SentenceTransformer.save writes and the HF hub serves):
// modules.json lists the modules applied in order — Transformer (an HF BERT folder, often the folder
// itself; sentence_bert_config.json gives max_seq_length and do_lower_case), Pooling
// (1_Pooling/config.json: which of CLS, max, mean, mean-sqrt-len, weighted-mean, last-token, their
// outputs concatenated in that order as sentence_transformers.models.Pooling does), Dense (a linear
// layer with an activation, weights in its own folder) and Normalize (L2). config_sentence_transformers.json
// adds named prompts, prepended to the text. Any other module type is refused by name rather than
// skipped: skipping it would give a different embedding than the model's authors intended.
// A folder without modules.json gets the one rule IlgpuBert uses everywhere: mean pooling over the
// attention mask, then L2 normalisation.
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;

namespace IlgpuBert.Pipelines;

/// <summary>sentence_transformers.models.Pooling's modes; the vector is the concatenation of the enabled ones in this order.</summary>
public sealed record PoolingModes
{
    /// <summary>pooling_mode_cls_token: the [CLS] vector.</summary>
    public bool ClsToken { get; init; }
    /// <summary>pooling_mode_max_tokens: the element-wise maximum over the tokens.</summary>
    public bool MaxTokens { get; init; }
    /// <summary>pooling_mode_mean_tokens: the mean over the tokens.</summary>
    public bool MeanTokens { get; init; }
    /// <summary>pooling_mode_mean_sqrt_len_tokens: the sum over the tokens divided by √count.</summary>
    public bool MeanSqrtLenTokens { get; init; }
    /// <summary>pooling_mode_weightedmean_tokens: the mean with position i (from 1) weighing i.</summary>
    public bool WeightedMeanTokens { get; init; }
    /// <summary>pooling_mode_lasttoken: the last token's vector.</summary>
    public bool LastToken { get; init; }

    /// <summary>false: the prompt's tokens (and [CLS]) are left out of the pooling, as sentence-transformers' include_prompt = false.</summary>
    public bool IncludePrompt { get; init; } = true;

    /// <summary>Mean pooling alone.</summary>
    public static readonly PoolingModes Mean = new() { MeanTokens = true };
    /// <summary>[CLS] pooling alone.</summary>
    public static readonly PoolingModes Cls = new() { ClsToken = true };

    /// <summary>How many modes are on (the pooled vector is this many times the hidden size).</summary>
    public int Count => (ClsToken ? 1 : 0) + (MaxTokens ? 1 : 0) + (MeanTokens ? 1 : 0) + (MeanSqrtLenTokens ? 1 : 0) + (WeightedMeanTokens ? 1 : 0) + (LastToken ? 1 : 0);

    /// <summary>The modes as sentence-transformers names them (cls, max, mean, mean_sqrt_len, weightedmean, lasttoken), joined with '+'.</summary>
    public override string ToString() => string.Join("+", new[]
    {
        ClsToken ? "cls" : null, MaxTokens ? "max" : null, MeanTokens ? "mean" : null,
        MeanSqrtLenTokens ? "mean_sqrt_len" : null, WeightedMeanTokens ? "weightedmean" : null, LastToken ? "lasttoken" : null,
    }.Where(m => m is not null)) + (IncludePrompt ? "" : " (prompt excluded)");
}

/// <summary>sentence_transformers.models.Dense: y = activation(W·x + b), W [Out, In].</summary>
public sealed record DenseModule(int In, int Out, float[] Weight, float[]? Bias, string Activation)
{
    /// <summary>The activations sentence-transformers writes as activation_function (torch.nn module paths), by their last name.</summary>
    public static readonly string[] Activations = ["Identity", "Tanh", "ReLU", "Sigmoid"];

    /// <summary>activation(W·x + b).</summary>
    public float[] Apply(float[] x)
    {
        if (x.Length != In) throw new ArgumentException($"the Dense module takes {In} inputs, got a {x.Length}-dimensional vector");
        var y = new float[Out];
        for (int o = 0; o < Out; o++)
        {
            double sum = Bias?[o] ?? 0;
            for (int i = 0; i < In; i++) sum += (double)Weight[(long)o * In + i] * x[i];
            y[o] = (float)(Activation switch
            {
                "Identity" => sum,
                "Tanh" => Math.Tanh(sum),
                "ReLU" => Math.Max(sum, 0),
                "Sigmoid" => 1 / (1 + Math.Exp(-sum)),
                _ => throw new InvalidOperationException(Activation),
            });
        }
        return y;
    }
}

/// <summary>How a model folder turns hidden states into one sentence vector.</summary>
public sealed record SentenceTransformer
{
    /// <summary>The file that makes a folder a sentence-transformers model.</summary>
    public const string ModulesFile = "modules.json";

    /// <summary>The HF model folder the Transformer module reads (the folder itself for most models).</summary>
    public required string TransformerDir { get; init; }

    /// <summary>sentence_bert_config.json's max_seq_length (tokens, [CLS] and [SEP] included); 0: the model's maximum.</summary>
    public int MaxSeqLength { get; init; }

    /// <summary>sentence_bert_config.json's do_lower_case: texts are lower-cased before the tokenizer sees them.</summary>
    public bool LowerCase { get; init; }

    /// <summary>The Pooling module's modes.</summary>
    public PoolingModes Pooling { get; init; } = PoolingModes.Mean;
    /// <summary>The Dense modules after the pooling, in order.</summary>
    public IReadOnlyList<DenseModule> Dense { get; init; } = [];
    /// <summary>Whether a Normalize module (L2) ends the model.</summary>
    public bool Normalize { get; init; } = true;

    /// <summary>config_sentence_transformers.json's prompts (name → text prepended to every input) and default_prompt_name.</summary>
    public IReadOnlyDictionary<string, string> Prompts { get; init; } = new Dictionary<string, string>();
    /// <summary>The prompt used when none is asked for (null: none).</summary>
    public string? DefaultPromptName { get; init; }

    /// <summary>True when the folder had modules.json (false: IlgpuBert's rule for plain HF folders).</summary>
    public bool FromModules { get; init; }

    /// <summary>What the vector is, in one line (printed by the CLI).</summary>
    public string Describe() => Summary + (FromModules ? " (the folder's modules.json)" : " (no modules.json: mean pooling and L2 normalisation)");

    /// <summary>The pooling, Dense modules and normalisation, without where they came from.</summary>
    public string Summary => $"{Pooling} pooling{string.Concat(Dense.Select(d => $", Dense {d.In}→{d.Out} {d.Activation}"))}{(Normalize ? ", L2-normalised" : ", not normalised")}";

    /// <summary>This model with its pooling and normalisation overridden where given (mean keeps the folder's include_prompt).</summary>
    public SentenceTransformer With(EmbeddingPooling? pooling, bool? normalize)
    {
        var modes = pooling switch
        {
            EmbeddingPooling.Mean => PoolingModes.Mean with { IncludePrompt = Pooling.IncludePrompt },
            EmbeddingPooling.Cls => PoolingModes.Cls,
            _ => Pooling,
        };
        if (Dense.Count > 0 && modes.Count != Pooling.Count)
            throw new ArgumentException($"{modes} pooling gives {modes.Count} vector(s) per text where the model's {Pooling} gives {Pooling.Count}, and its Dense module takes {Dense[0].In} inputs");
        return this with { Pooling = modes, Normalize = normalize ?? Normalize };
    }

    /// <summary>The folder's modules.json, followed; or, without one, mean pooling and L2 normalisation over the folder itself.</summary>
    public static SentenceTransformer Read(string dir)
    {
        string modulesPath = Path.Combine(dir, ModulesFile);
        if (!File.Exists(modulesPath)) return new SentenceTransformer { TransformerDir = dir };
        var modules = Json(modulesPath) as JsonArray ?? throw new CheckpointException($"{modulesPath}: expected a JSON array of modules");
        string? transformer = null;
        var pooling = (PoolingModes?)null;
        var dense = new List<DenseModule>();
        bool normalize = false;
        int maxSeqLength = 0;
        bool lowerCase = false;
        foreach (var (node, index) in modules.Select((m, i) => (m, i)))
        {
            string where = $"{modulesPath}: module {index}";
            string type = Str(node, "type", where) ?? throw new CheckpointException($"{where} has no \"type\"");
            string path = Str(node, "path", where) ?? "";
            string moduleDir = SafeSubfolder(dir, path, where);
            string name = type.Split('.')[^1];
            if (!type.StartsWith("sentence_transformers.", StringComparison.Ordinal)) name = type; // a custom module: refused below, named in full
            switch (name)
            {
                case "Transformer":
                    if (transformer is not null) throw new CheckpointException($"{where}: a second Transformer module (one encoder per model)");
                    if (pooling is not null || dense.Count > 0 || normalize) throw new CheckpointException($"{where}: the Transformer module must come first");
                    transformer = moduleDir;
                    (maxSeqLength, lowerCase) = ReadSentenceBertConfig(moduleDir);
                    break;
                case "Pooling":
                    if (transformer is null) throw new CheckpointException($"{where}: Pooling before any Transformer module");
                    if (pooling is not null) throw new CheckpointException($"{where}: a second Pooling module");
                    pooling = ReadPooling(Path.Combine(moduleDir, "config.json"));
                    break;
                case "Dense":
                    if (pooling is null) throw new CheckpointException($"{where}: Dense before the Pooling module");
                    dense.Add(ReadDense(moduleDir, dense.Count == 0 ? null : dense[^1].Out));
                    break;
                case "Normalize":
                    if (pooling is null) throw new CheckpointException($"{where}: Normalize before the Pooling module");
                    normalize = true;
                    break;
                default:
                    throw new CheckpointException($"{where}: module type {type} is not supported (IlgpuBert runs Transformer, Pooling, Dense and Normalize)");
            }
            if (name != "Normalize" && normalize) throw new CheckpointException($"{where}: {name} after Normalize is not supported");
        }
        if (transformer is null) throw new CheckpointException($"{modulesPath}: no sentence_transformers.models.Transformer module");
        if (pooling is null) throw new CheckpointException($"{modulesPath}: no sentence_transformers.models.Pooling module (the Transformer's token vectors would be the output)");
        if (dense.Count > 0 && dense[0].In != PooledWidth(transformer, pooling))
            throw new CheckpointException($"{modulesPath}: the first Dense module takes {dense[0].In} inputs but the pooling gives {PooledWidth(transformer, pooling)}");
        var (prompts, defaultPrompt) = ReadPrompts(Path.Combine(dir, "config_sentence_transformers.json"));
        return new SentenceTransformer
        {
            TransformerDir = transformer, MaxSeqLength = maxSeqLength, LowerCase = lowerCase, Pooling = pooling, Dense = dense,
            Normalize = normalize, Prompts = prompts, DefaultPromptName = defaultPrompt, FromModules = true,
        };
    }

    private static int PooledWidth(string transformerDir, PoolingModes pooling) =>
        Model.BertConfig.Read(Path.Combine(transformerDir, Model.BertFolder.ConfigFile)).HiddenSize * pooling.Count;

    /// <summary>A module's folder inside the model folder; a path leading out of it (absolute, "..") is refused.</summary>
    private static string SafeSubfolder(string dir, string path, string where)
    {
        string root = Path.GetFullPath(dir), full = Path.GetFullPath(Path.Combine(root, path));
        if (Path.IsPathRooted(path) || (full != root && !full.StartsWith(Path.TrimEndingDirectorySeparator(root) + Path.DirectorySeparatorChar, StringComparison.Ordinal)))
            throw new CheckpointException($"{where}: path \"{StrictJson.Short(path)}\" leads outside the model folder");
        if (!Directory.Exists(full)) throw new CheckpointException($"{where}: no folder {full}");
        return full;
    }

    private static JsonNode? Json(string path) => StrictJson.Parse(BoundedFile.ReadAllText(path, BoundedFile.ConfigBytes, Path.GetFileName(path)), path);

    private static string? Str(JsonNode? node, string key, string where) => node is JsonObject o && o[key] is { } v
        ? v is JsonValue jv && jv.TryGetValue(out string? s) ? s : throw new CheckpointException($"{where}: \"{key}\" must be a string")
        : null;

    private static T Value<T>(JsonObject o, string key, T fallback, string where)
    {
        if (o[key] is not { } v || v.GetValueKind() == System.Text.Json.JsonValueKind.Null) return fallback;
        try { return v.GetValue<T>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new CheckpointException($"{where}: \"{key}\" must be {(typeof(T) == typeof(bool) ? "true or false" : typeof(T) == typeof(int) ? "an integer" : "a string")}");
        }
    }

    private static (int MaxSeqLength, bool LowerCase) ReadSentenceBertConfig(string transformerDir)
    {
        string path = Path.Combine(transformerDir, "sentence_bert_config.json");
        if (!File.Exists(path)) return (0, false);
        var o = Json(path) as JsonObject ?? throw new CheckpointException($"{path}: expected a JSON object");
        int max = Value(o, "max_seq_length", 0, path);
        if (max < 0) throw new CheckpointException($"{path}: max_seq_length must not be negative, got {max}");
        return (max, Value(o, "do_lower_case", false, path));
    }

    private static PoolingModes ReadPooling(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: no such file (the Pooling module's configuration)");
        var o = Json(path) as JsonObject ?? throw new CheckpointException($"{path}: expected a JSON object");
        var modes = new PoolingModes
        {
            ClsToken = Value(o, "pooling_mode_cls_token", false, path),
            MaxTokens = Value(o, "pooling_mode_max_tokens", false, path),
            MeanTokens = Value(o, "pooling_mode_mean_tokens", false, path),
            MeanSqrtLenTokens = Value(o, "pooling_mode_mean_sqrt_len_tokens", false, path),
            WeightedMeanTokens = Value(o, "pooling_mode_weightedmean_tokens", false, path),
            LastToken = Value(o, "pooling_mode_lasttoken", false, path),
            IncludePrompt = Value(o, "include_prompt", true, path),
        };
        if (modes.Count == 0) throw new CheckpointException($"{path}: no pooling_mode_* is true");
        return modes;
    }

    private static DenseModule ReadDense(string moduleDir, int? expectedIn)
    {
        string configPath = Path.Combine(moduleDir, "config.json");
        if (!File.Exists(configPath)) throw new CheckpointException($"{configPath}: no such file (the Dense module's configuration)");
        var o = Json(configPath) as JsonObject ?? throw new CheckpointException($"{configPath}: expected a JSON object");
        int n = Value(o, "in_features", 0, configPath), m = Value(o, "out_features", 0, configPath);
        if (n < 1 || m < 1) throw new CheckpointException($"{configPath}: in_features and out_features must be positive");
        if (expectedIn is { } e && e != n) throw new CheckpointException($"{configPath}: in_features {n}, but the module before gives {e}");
        bool bias = Value(o, "bias", true, configPath);
        string activationPath = Value(o, "activation_function", "torch.nn.modules.linear.Identity", configPath);
        string activation = activationPath.Split('.')[^1];
        if (!activationPath.StartsWith("torch.nn.", StringComparison.Ordinal) || !DenseModule.Activations.Contains(activation))
            throw new CheckpointException($"{configPath}: activation_function {activationPath} is not supported ({string.Join(", ", DenseModule.Activations)})");
        var tensors = Model.BertFolder.ReadWeights(moduleDir); // model.safetensors, else pytorch_model.bin
        float[] Take(string key, int[] shape)
        {
            if (!tensors.TryGetValue(key, out var t)) throw new CheckpointException($"{moduleDir}: the Dense weights have no {key}");
            if (!t.Shape.SequenceEqual(shape)) throw new CheckpointException($"{moduleDir}: {key} is {t.ShapeText}, expected [{string.Join(", ", shape)}]");
            return t.Data;
        }
        return new DenseModule(n, m, Take("linear.weight", [m, n]), bias ? Take("linear.bias", [m]) : null, activation);
    }

    private static (Dictionary<string, string>, string?) ReadPrompts(string path)
    {
        var prompts = new Dictionary<string, string>(StringComparer.Ordinal);
        if (!File.Exists(path)) return (prompts, null);
        var o = Json(path) as JsonObject ?? throw new CheckpointException($"{path}: expected a JSON object");
        if (o["prompts"] is JsonObject p)
            foreach (var (name, text) in p)
                prompts[name] = text is JsonValue v && v.TryGetValue(out string? s) ? s : throw new CheckpointException($"{path}: prompt \"{StrictJson.Short(name)}\" must be a string");
        string? defaultName = Value<string?>(o, "default_prompt_name", null, path);
        if (defaultName is not null && !prompts.ContainsKey(defaultName))
            throw new CheckpointException($"{path}: default_prompt_name \"{StrictJson.Short(defaultName)}\" is not one of the prompts");
        return (prompts, defaultName);
    }

    /// <summary>The HF folder's files a sentence-transformers folder carries at its root (the Transformer module).</summary>
    private static readonly string[] TransformerFiles =
        [Model.BertFolder.ConfigFile, Model.BertFolder.WeightsFile, PyTorchCheckpoint.FileName, Model.BertFolder.VocabFile,
         Text.TokenizerJson.FileName, "tokenizer_config.json", "special_tokens_map.json"];

    /// <summary>
    /// Writes this model as a sentence-transformers folder in <paramref name="dir"/>, laid out as
    /// SentenceTransformer.save does: the Transformer's HF files at the root with sentence_bert_config.json,
    /// modules.json, 1_Pooling/config.json, each Dense module as {n}_Dense/ (config.json, model.safetensors
    /// with linear.weight and linear.bias), {n}_Normalize/, and config_sentence_transformers.json
    /// (prompts, cosine similarity). Every file is written atomically; reading the folder back gives this model.
    /// </summary>
    public void Save(string dir)
    {
        Directory.CreateDirectory(dir);
        var config = Model.BertConfig.Read(Path.Combine(TransformerDir, Model.BertFolder.ConfigFile));
        // The weights first (the large file), then what says "model": a full disk fails before modules.json exists.
        foreach (var name in TransformerFiles)
            if (File.Exists(Path.Combine(TransformerDir, name)) && !(name == PyTorchCheckpoint.FileName && File.Exists(Path.Combine(TransformerDir, Model.BertFolder.WeightsFile))))
                Model.BertFolder.CopyInto(Path.Combine(TransformerDir, name), dir, name);
        var modules = new JsonArray { Module(0, "", "Transformer") };
        AtomicFile.WriteText(Path.Combine(dir, "sentence_bert_config.json"), new JsonObject
        {
            ["max_seq_length"] = MaxSeqLength > 0 ? MaxSeqLength : config.MaxPositionEmbeddings, ["do_lower_case"] = LowerCase,
        }.ToJsonString(Indented));
        Directory.CreateDirectory(Path.Combine(dir, "1_Pooling"));
        AtomicFile.WriteText(Path.Combine(dir, "1_Pooling", "config.json"), new JsonObject
        {
            ["word_embedding_dimension"] = config.HiddenSize,
            ["pooling_mode_cls_token"] = Pooling.ClsToken, ["pooling_mode_mean_tokens"] = Pooling.MeanTokens,
            ["pooling_mode_max_tokens"] = Pooling.MaxTokens, ["pooling_mode_mean_sqrt_len_tokens"] = Pooling.MeanSqrtLenTokens,
            ["pooling_mode_weightedmean_tokens"] = Pooling.WeightedMeanTokens, ["pooling_mode_lasttoken"] = Pooling.LastToken,
            ["include_prompt"] = Pooling.IncludePrompt,
        }.ToJsonString(Indented));
        modules.Add(Module(1, "1_Pooling", "Pooling"));
        foreach (var d in Dense)
        {
            string path = $"{modules.Count}_Dense", denseDir = Path.Combine(dir, path);
            Directory.CreateDirectory(denseDir);
            var tensors = new Dictionary<string, HostTensor> { ["linear.weight"] = new([d.Out, d.In], d.Weight) };
            if (d.Bias is not null) tensors["linear.bias"] = new([d.Out], d.Bias);
            SafeTensors.Write(Path.Combine(denseDir, Model.BertFolder.WeightsFile), tensors);
            string activation = d.Activation == "Identity" ? "torch.nn.modules.linear.Identity" : $"torch.nn.modules.activation.{d.Activation}";
            AtomicFile.WriteText(Path.Combine(denseDir, "config.json"), new JsonObject
            {
                ["in_features"] = d.In, ["out_features"] = d.Out, ["bias"] = d.Bias is not null, ["activation_function"] = activation,
            }.ToJsonString(Indented));
            modules.Add(Module(modules.Count, path, "Dense"));
        }
        if (Normalize)
        {
            string path = $"{modules.Count}_Normalize";
            Directory.CreateDirectory(Path.Combine(dir, path));
            modules.Add(Module(modules.Count, path, "Normalize"));
        }
        var prompts = new JsonObject();
        foreach (var (name, text) in Prompts) prompts[name] = text;
        AtomicFile.WriteText(Path.Combine(dir, "config_sentence_transformers.json"), new JsonObject
        {
            ["prompts"] = prompts, ["default_prompt_name"] = DefaultPromptName, ["similarity_fn_name"] = "cosine",
        }.ToJsonString(Indented));
        AtomicFile.WriteText(Path.Combine(dir, ModulesFile), modules.ToJsonString(Indented));
    }

    private static readonly System.Text.Json.JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static JsonObject Module(int idx, string path, string type) =>
        new() { ["idx"] = idx, ["name"] = $"{idx}", ["path"] = path, ["type"] = $"sentence_transformers.models.{type}" };

    /// <summary>The length of a sentence vector from hidden states of width <paramref name="h"/>: the pooled modes side by side, or the last Dense module's output.</summary>
    public int Dimension(int h) => Dense.Count > 0 ? Dense[^1].Out
        : h * new[] { Pooling.ClsToken, Pooling.MaxTokens, Pooling.MeanTokens, Pooling.MeanSqrtLenTokens, Pooling.WeightedMeanTokens, Pooling.LastToken }.Count(m => m);

    /// <summary>The vector of a blank text: zeros of <see cref="Dimension"/>.</summary>
    public float[] ZeroVector(int h) => new float[Dimension(h)];

    /// <summary>
    /// The sentence vector of row <paramref name="b"/> of a padded batch: pooling over
    /// <paramref name="hidden"/> [B, S, H] where <paramref name="mask"/> [B, S] is 1 (the first
    /// <paramref name="promptLength"/> positions left out when the prompt is excluded), then the
    /// Dense modules and the normalisation, each as sentence-transformers computes it.
    /// </summary>
    public float[] Pool(float[] hidden, int[] mask, int b, int s, int h, int promptLength = 0)
    {
        var pooled = new List<double[]>();
        long Row(int i) => ((long)b * s + i) * h;
        bool Keep(int i) => mask[b * s + i] != 0 && (Pooling.IncludePrompt || i >= promptLength);
        if (Pooling.ClsToken) pooled.Add(Enumerable.Range(0, h).Select(d => (double)hidden[Row(0) + d]).ToArray());
        if (Pooling.MaxTokens)
        {
            var v = Enumerable.Repeat(-1e9, h).ToArray(); // sentence-transformers fills masked positions with -1e9 before the max
            for (int i = 0; i < s; i++)
                if (Keep(i)) for (int d = 0; d < h; d++) v[d] = Math.Max(v[d], hidden[Row(i) + d]);
            pooled.Add(v);
        }
        if (Pooling.MeanTokens || Pooling.MeanSqrtLenTokens || Pooling.WeightedMeanTokens)
        {
            var sum = new double[h];
            var weighted = new double[h];
            double count = 0, weights = 0;
            for (int i = 0; i < s; i++)
            {
                if (!Keep(i)) continue;
                count++;
                weights += i + 1; // weightedmean: position i (from 1) weighs i
                for (int d = 0; d < h; d++)
                {
                    sum[d] += hidden[Row(i) + d];
                    weighted[d] += (i + 1.0) * hidden[Row(i) + d];
                }
            }
            count = Math.Max(count, 1e-9); // torch.clamp(sum_mask, min=1e-9)
            if (Pooling.MeanTokens) pooled.Add(sum.Select(x => x / count).ToArray());
            if (Pooling.MeanSqrtLenTokens) pooled.Add(sum.Select(x => x / Math.Sqrt(count)).ToArray());
            if (Pooling.WeightedMeanTokens) pooled.Add(weighted.Select(x => x / Math.Max(weights, 1e-9)).ToArray());
        }
        if (Pooling.LastToken)
        {
            int last = 0;
            for (int i = 0; i < s; i++) if (Keep(i)) last = i;
            pooled.Add(Enumerable.Range(0, h).Select(d => (double)hidden[Row(last) + d]).ToArray());
        }
        float[] x = pooled.SelectMany(v => v).Select(v => (float)v).ToArray();
        foreach (var dense in Dense) x = dense.Apply(x);
        if (!Normalize) return x;
        double norm = Math.Max(Math.Sqrt(x.Sum(v => (double)v * v)), 1e-12); // torch.nn.functional.normalize: x / max(‖x‖, ε)
        return x.Select(v => (float)(v / norm)).ToArray();
    }
}
