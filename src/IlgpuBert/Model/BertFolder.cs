// A model folder in HF's layout: config.json, model.safetensors (or an older folder's
// pytorch_model.bin), vocab.txt or tokenizer.json (and optionally tokenizer_config.json). This is what `init` writes, `forward`/`grad` read, and what HF's
// save_pretrained produces.
using IlgpuBert.Checkpoints;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

/// <summary>An HF model folder: its file names, and loading and saving a model in it.</summary>
public static class BertFolder
{
    /// <summary>The file names of an HF folder: the config, the weights, the WordPiece vocabulary, HF tokenizers' file.</summary>
    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors", VocabFile = "vocab.txt", TokenizerFile = "tokenizer.json";

    /// <summary>A fine-tuned folder's evaluation results (what tells it from a pretraining folder).</summary>
    public const string EvalFile = "eval.json";

    /// <summary>Loads config and weights; messages about initialised or unused tensors go to <paramref name="log"/>.</summary>
    public static BertForPreTraining Load(BertDevice device, string dir, TextWriter? log = null) => Load(device, dir, log, out _);

    /// <summary>As <see cref="Load(BertDevice, string, TextWriter?)"/>, also naming the parameters the file lacked (initialised instead).</summary>
    public static BertForPreTraining Load(BertDevice device, string dir, TextWriter? log, out IReadOnlyList<string> initializedNames)
    {
        Require(dir);
        var config = BertConfig.Read(Path.Combine(dir, ConfigFile));
        string weights = WeightsPath(dir);
        var model = new BertForPreTraining(device, config);
        try
        {
            var (initialized, unused) = LoadInto(model.Parameters, dir);
            initializedNames = initialized;
            if (initialized.Count > 0)
                log?.WriteLine($"note: {weights} has no {string.Join(", ", initialized)}; initialised them (a BertModel checkpoint has no pre-training heads)");
            if (unused.Count > 0)
                log?.WriteLine($"note: ignored tensors not in BertForPreTraining: {string.Join(", ", unused)}");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// HF's BertModel alone — embeddings, encoder and (with <paramref name="addPoolingLayer"/>) the
    /// pooler — from any model folder, its heads left in the file: what inference that needs only
    /// hidden states loads (nothing is initialised at random). The model owns its parameters.
    /// </summary>
    public static BertModel LoadBody(BertDevice device, string dir, bool addPoolingLayer)
    {
        Require(dir);
        var config = BertConfig.Read(Path.Combine(dir, ConfigFile)).Validate();
        var parameters = new BertParameters(device, config);
        try
        {
            var model = new BertModel(parameters, addPoolingLayer, ownsParameters: true);
            var (initialized, _) = LoadInto(parameters, dir);
            if (initialized.Count > 0)
                throw new CheckpointException($"{WeightsPath(dir)}: has no {string.Join(", ", initialized)}");
            return model;
        }
        catch
        {
            parameters.Dispose();
            throw;
        }
    }

    /// <summary>Loads a folder's weights into <paramref name="parameters"/> (<see cref="BertParameters.Load(string, int, Func{string, bool}?)"/>).</summary>
    public static (List<string> Initialized, List<string> Unused) LoadInto(BertParameters parameters, string dir, int seedForMissingHeads = 0, Func<string, bool>? take = null)
    {
        string weights = WeightsPath(dir);
        return weights.EndsWith(PyTorchCheckpoint.FileName, StringComparison.Ordinal)
            ? parameters.Load(PyTorchCheckpoint.Read(weights), weights, seedForMissingHeads, take)
            : parameters.Load(weights, seedForMissingHeads, take);
    }

    /// <summary>The tensor names in a folder's weights, as the file has them (of model.safetensors only its header is read).</summary>
    public static IReadOnlyCollection<string> WeightNames(string dir)
    {
        Require(dir);
        string weights = WeightsPath(dir);
        if (weights.EndsWith(PyTorchCheckpoint.FileName, StringComparison.Ordinal)) return PyTorchCheckpoint.Read(weights).Keys;
        using var file = SafeTensorsFile.Open(weights);
        return file.Entries.Keys.ToList();
    }

    /// <summary>Refuses what is not a finished model folder: a missing one, or one a run stopped while writing (.tmp).</summary>
    public static void Require(string dir)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException($"{dir}: no such model folder");
        if (Path.TrimEndingDirectorySeparator(dir).EndsWith(".tmp", StringComparison.Ordinal))
            throw new CheckpointException($"{dir}: an unfinished checkpoint (a run stopped while writing it); use the folder without .tmp");
    }

    /// <summary>Which of BertForPreTraining's parts beyond the encoder a folder's weights hold.</summary>
    public static (bool Pooler, bool MlmHead, bool NspHead) Heads(string dir)
    {
        var names = WeightNames(dir);
        if (AlbertNames.IsAlbertFile(names)) names = [.. names.Select(AlbertNames.FromHf)];
        return (names.Any(n => n is "bert.pooler.dense.weight" or "pooler.dense.weight"),
            names.Any(n => n.StartsWith("cls.predictions.", StringComparison.Ordinal)),
            names.Any(n => n.StartsWith("cls.seq_relationship.", StringComparison.Ordinal)));
    }

    /// <summary>
    /// The folder's weights: model.safetensors, or else (older HF folders) pytorch_model.bin, read by
    /// a restricted unpickler (<see cref="PyTorchCheckpoint"/>).
    /// </summary>
    public static string WeightsPath(string dir)
    {
        string safetensors = Path.Combine(dir, WeightsFile), pickle = Path.Combine(dir, PyTorchCheckpoint.FileName);
        if (File.Exists(safetensors)) return safetensors;
        if (File.Exists(pickle)) return pickle;
        throw new CheckpointException($"{safetensors}: no such file (a model folder needs model.safetensors or {PyTorchCheckpoint.FileName})");
    }

    /// <summary>The folder's weights as host tensors, from whichever file <see cref="WeightsPath"/> finds.</summary>
    public static Dictionary<string, HostTensor> ReadWeights(string dir)
    {
        string path = WeightsPath(dir);
        return path.EndsWith(PyTorchCheckpoint.FileName, StringComparison.Ordinal) ? PyTorchCheckpoint.Read(path) : SafeTensors.Read(path);
    }

    /// <summary>Writes config.json and model.safetensors (each atomically), and copies the vocabulary if given.</summary>
    public static void Save(BertForPreTraining model, string dir, string? vocabSource = null) => Save(model.Config, model.Parameters, dir, vocabSource);

    /// <summary>Writes config.json and model.safetensors (each atomically), and copies the vocabulary if given.</summary>
    public static void Save(BertConfig config, BertParameters parameters, string dir, string? vocabSource = null)
    {
        bool existed = Directory.Exists(dir);
        Directory.CreateDirectory(dir);
        try
        {
            parameters.Save(Path.Combine(dir, WeightsFile)); // the large file first: a full disk fails here, before the config says "model"
            config.Write(Path.Combine(dir, ConfigFile));
            if (vocabSource is not null) CopyVocabulary(vocabSource, dir);
        }
        catch when (!existed)
        {
            // A folder this call created holds nothing usable: remove it rather than leave half a model.
            try { Directory.Delete(dir, true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>The safetensors dtypes <see cref="Convert"/> writes, and the torch_dtype config.json names each by.</summary>
    public static readonly IReadOnlyDictionary<string, string> TorchDtypes = new Dictionary<string, string> { ["F32"] = "float32", ["F16"] = "float16", ["BF16"] = "bfloat16" };

    /// <summary>
    /// A copy of a float model folder with its weights stored as <paramref name="dtype"/> (F32, F16 or
    /// BF16; each value rounded to nearest, ties to even). Every other file is copied as it is (vocabulary,
    /// tokenizer and sentence-transformers files, subfolders), config.json gains HF's torch_dtype, and an
    /// older folder's pytorch_model.bin becomes model.safetensors. The weights are written first, so a
    /// failure leaves no folder that claims to hold a model. Int8 folders are refused: their integers
    /// and scales are not a float checkpoint. Returns the number of tensors written.
    /// </summary>
    public static int Convert(string dir, string dtype, string outDir)
    {
        if (!TorchDtypes.TryGetValue(dtype, out var torchDtype)) throw new ArgumentException($"dtype {dtype}: convert writes F32, F16 or BF16");
        Require(dir);
        if (Path.GetFullPath(dir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/')) throw new ArgumentException($"{outDir} is the folder being converted; write the copy elsewhere");
        string configPath = Path.Combine(dir, ConfigFile);
        var config = BertConfig.Read(configPath);
        if (config.Extra["quantization_config"] is not null) throw new CheckpointException($"{configPath}: a quantized model (quantization_config); convert takes float checkpoints");
        var tensors = ReadWeights(dir);
        if (tensors.FirstOrDefault(t => t.Value.Dtype == "I8") is { Key: not null } int8) throw new CheckpointException($"{WeightsPath(dir)}: tensor {int8.Key} is I8; convert takes float checkpoints");
        var converted = tensors.ToDictionary(t => t.Key, t => t.Value with { Dtype = dtype }, StringComparer.Ordinal);
        bool existed = Directory.Exists(outDir);
        Directory.CreateDirectory(outDir);
        try
        {
            SafeTensors.Write(Path.Combine(outDir, WeightsFile), converted, new Dictionary<string, string> { ["format"] = "pt" });
            string root = Path.GetFullPath(dir);
            foreach (var file in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories))
            {
                string relative = Path.GetRelativePath(root, file);
                if (relative is ConfigFile or WeightsFile or PyTorchCheckpoint.FileName) continue;
                string target = Path.Combine(outDir, relative);
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                CopyInto(file, Path.GetDirectoryName(target)!, Path.GetFileName(target));
            }
            var extra = (System.Text.Json.Nodes.JsonObject)config.Extra.DeepClone();
            extra["torch_dtype"] = torchDtype;
            (config with { Extra = extra }).Write(Path.Combine(outDir, ConfigFile));
        }
        catch when (!existed)
        {
            try { Directory.Delete(outDir, true); } catch (IOException) { }
            throw;
        }
        return converted.Count;
    }

    /// <summary>
    /// Copies a folder's vocabulary into <paramref name="dir"/>: <paramref name="vocabSource"/> (a
    /// vocab.txt) and the tokenizer.json beside it, whichever exist (a folder from the hub may have only
    /// tokenizer.json).
    /// </summary>
    public static void CopyVocabulary(string vocabSource, string dir)
    {
        string json = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(vocabSource))!, TokenizerFile);
        if (!File.Exists(vocabSource) && !File.Exists(json))
            throw new CheckpointException($"{vocabSource}: no such file, and no {TokenizerFile} beside it (the model's vocabulary)");
        if (File.Exists(vocabSource)) CopyInto(vocabSource, dir, VocabFile);
        if (File.Exists(json)) CopyInto(json, dir, TokenizerFile);
    }

    /// <summary>Copies a file into <paramref name="dir"/> as <paramref name="name"/> (atomically), unless it is already that file.</summary>
    public static void CopyInto(string source, string dir, string name)
    {
        string target = Path.Combine(dir, name);
        if (Path.GetFullPath(source) != Path.GetFullPath(target))
            AtomicFile.Write(target, s => { using var src = File.OpenRead(source); src.CopyTo(s); });
    }
}
