// Every parameter of a BERT model under its HF checkpoint name, with initialisation as HF's
// BertPreTrainedModel._init_weights does it and loading/saving in HF's safetensors layout.
//
// Load accepts what HF users have: BertForPreTraining files (the tied decoder weight, and the
// decoder bias alias, accepted and ignored if present), BertModel files without the "bert."
// prefix (heads initialised, and said so), and legacy TF-port names (LayerNorm.gamma/beta).
// A missing encoder tensor or a tensor of the wrong shape is an error that names it.
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

public sealed class BertParameters : IDisposable
{
    private readonly List<Parameter> all = new();
    private readonly Dictionary<string, (Var Var, long Offset, int[] Shape)> byName = new(StringComparer.Ordinal);

    /// <param name="prefix">Put before every name (a second model trained beside a BERT, such as ELECTRA's generator, keeps its names apart).</param>
    public BertParameters(BertDevice device, BertConfig config, string prefix = "")
    {
        Device = device;
        Config = config;
        this.prefix = prefix;
    }

    private readonly string prefix;

    public BertDevice Device { get; }
    public BertConfig Config { get; }
    public IReadOnlyList<Parameter> All => all;

    /// <summary>HF names, in the order they were added (the model's module order).</summary>
    public IEnumerable<string> Names => byName.Keys;

    public (Var Var, long Offset, int[] Shape) this[string name] => byName[name];

    internal Var Add(string name, bool decay, params int[] shape)
    {
        name = prefix + name;
        var v = new Var(new Tensor(Device, shape), requiresGrad: true, name: name);
        all.Add(new Parameter(v, decay));
        byName[name] = (v, 0, shape);
        return v;
    }

    /// <summary>One tensor whose row blocks carry several checkpoint names (fused QKV).</summary>
    internal Var AddFused(string pattern, string[] parts, params int[] blockShape)
    {
        pattern = prefix + pattern;
        var shape = blockShape.ToArray();
        shape[0] *= parts.Length;
        bool isWeight = blockShape.Length == 2;
        var v = new Var(new Tensor(Device, shape), requiresGrad: true, name: string.Format(pattern, string.Join("+", parts)));
        all.Add(new Parameter(v, isWeight));
        long block = HostTensor.Elements(blockShape);
        for (int i = 0; i < parts.Length; i++)
            byName[string.Format(pattern, parts[i])] = (v, i * block, blockShape);
        return v;
    }

    /// <summary>
    /// HF's initialisation: Linear and embedding weights ~ N(0, initializer_range), the padding
    /// row of the word embeddings 0, LayerNorm weights 1, every bias 0. Deterministic in the seed.
    /// </summary>
    public void Initialize(int seed) => InitializeWhere(seed, _ => true);

    private void InitializeWhere(int seed, Func<string, bool> which)
    {
        // One random stream over every name in order, so a tensor's initial values do not depend on
        // which others are initialised; a name not chosen only advances the stream (no arithmetic).
        var rng = new Random(seed);
        foreach (var name in Names.ToList())
        {
            if (which(name)) Set(name, InitialValue(name, rng));
            else if (IsGaussian(name))
                for (long i = 2 * HostTensor.Elements(byName[name].Shape); i > 0; i--) rng.NextDouble();
        }
    }

    private static bool IsGaussian(string name) => !name.EndsWith(".bias", StringComparison.Ordinal) && !name.EndsWith("scalar_mix.weights", StringComparison.Ordinal)
        && !name.EndsWith("scalar_mix.gamma", StringComparison.Ordinal) && !name.Contains("LayerNorm", StringComparison.Ordinal);

    private float[] InitialValue(string name, Random rng)
    {
        var (_, _, shape) = byName[name];
        var data = new float[HostTensor.Elements(shape)];
        if (!IsGaussian(name))
        {
            if (!name.EndsWith(".bias", StringComparison.Ordinal) && !name.EndsWith("scalar_mix.weights", StringComparison.Ordinal)) Array.Fill(data, 1f);
            return data;
        }
        for (int i = 0; i < data.Length; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = (float)(Config.InitializerRange * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        if (name == "bert.embeddings.word_embeddings.weight" && Config.PadTokenId >= 0 && Config.PadTokenId < Config.VocabSize)
            Array.Clear(data, Config.PadTokenId * Config.EmbeddingSize, Config.EmbeddingSize);
        return data;
    }

    public void Set(string name, float[] data)
    {
        var (v, offset, shape) = byName[name];
        if (data.LongLength != HostTensor.Elements(shape)) throw new ArgumentException($"{name}: {data.Length} values for shape [{string.Join(", ", shape)}]");
        v.Value.View.SubView(offset, data.LongLength).CopyFromCPU(Device.Accelerator.DefaultStream, data);
    }

    public float[] Get(string name)
    {
        var (v, offset, shape) = byName[name];
        return Slice(v.Value, offset, shape);
    }

    /// <summary>The gradient of one named parameter (zeros if none accumulated).</summary>
    public float[] GetGrad(string name)
    {
        var (v, offset, shape) = byName[name];
        int n = (int)HostTensor.Elements(shape);
        return v.Grad is null ? new float[n] : Slice(v.Grad, offset, shape);
    }

    private float[] Slice(Tensor t, long offset, int[] shape)
    {
        var host = new float[HostTensor.Elements(shape)];
        t.View.SubView(offset, host.LongLength).CopyToCPU(Device.Accelerator.DefaultStream, host);
        Device.Accelerator.DefaultStream.Synchronize();
        return host;
    }

    /// <summary>Every tensor under its HF name, the tied decoder weight excluded.</summary>
    public Dictionary<string, HostTensor> ToHost() =>
        Names.ToDictionary(n => n, n => new HostTensor(byName[n].Shape, Get(n)), StringComparer.Ordinal);

    /// <summary>
    /// Writes every parameter (atomically), an ALBERT's under HF's ALBERT names; refuses, writing
    /// nothing, when any holds NaN or ∞ (a diverged run must not replace a good file).
    /// </summary>
    public void Save(string path)
    {
        var tensors = ToHost();
        if (Config.Albert) tensors = tensors.ToDictionary(kv => AlbertNames.ToHf(kv.Key), kv => kv.Value, StringComparer.Ordinal);
        if (tensors.FirstOrDefault(kv => kv.Value.Data.Any(v => !float.IsFinite(v))) is { Key: { } bad })
            throw new CheckpointException($"{path}: not written: parameter {bad} holds NaN or infinite values (training diverged; try a lower --lr)");
        SafeTensors.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>
    /// Loads a safetensors file; returns the names it initialised because the file lacked them
    /// (heads of a BertModel checkpoint) and the names in the file it did not use.
    /// </summary>
    /// <param name="take">When given, only the file's tensors whose (normalised) names it accepts are used (two-stage fine-tuning keeps the encoder, not the head).</param>
    public (List<string> Initialized, List<string> Unused) Load(string path, int seedForMissingHeads = 0, Func<string, bool>? take = null)
    {
        // Each tensor is read straight into its parameter's memory (on the CPU, the device buffer
        // itself): no second copy of the weights is ever held.
        using var file = SafeTensorsFile.Open(path);
        return Load(file.Entries.ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, kv.Value.Dtype), StringComparer.Ordinal), path, seedForMissingHeads, take, file.ReadInto);
    }

    /// <summary>The encoder layer a tensor belongs to ("bert.encoder.layer.N."), or −1.</summary>
    private static int LayerOf(string name)
    {
        const string prefix = "bert.encoder.layer.";
        if (!name.StartsWith(prefix, StringComparison.Ordinal)) return -1;
        int dot = name.IndexOf('.', prefix.Length);
        return dot > prefix.Length && int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), out int layer) ? layer : -1;
    }

    /// <summary>A file's tensor name as ours: HF's ALBERT names mapped, "bert." added to a bare BertModel's names, TF-port LayerNorm.gamma/beta as weight/bias.</summary>
    private static string Canonical(string key, bool bare, bool albert)
    {
        string name = albert ? AlbertNames.FromHf(key) : bare && !key.StartsWith("cls.", StringComparison.Ordinal) ? "bert." + key : key;
        if (name.EndsWith("LayerNorm.gamma", StringComparison.Ordinal)) return name[..^"gamma".Length] + "weight";
        if (name.EndsWith("LayerNorm.beta", StringComparison.Ordinal)) return name[..^"beta".Length] + "bias";
        return name;
    }

    /// <summary>Loads tensors already read (<paramref name="path"/> names them in messages).</summary>
    public (List<string> Initialized, List<string> Unused) Load(Dictionary<string, HostTensor> file, string path, int seedForMissingHeads = 0, Func<string, bool>? take = null) =>
        Load(file.ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, kv.Value.Dtype), StringComparer.Ordinal), path, seedForMissingHeads, take,
            (key, destination) => file[key].Data.CopyTo(destination));

    private delegate void TensorReader(string key, Span<float> destination);

    // Every check that needs only names and shapes comes before any value is read; a tensor with NaN
    // or ∞ is found as it is read, after which the parameters hold part of the file (callers dispose).
    private (List<string> Initialized, List<string> Unused) Load(Dictionary<string, (int[] Shape, string Dtype)> file, string path, int seedForMissingHeads,
        Func<string, bool>? take, TensorReader read)
    {
        if (file.FirstOrDefault(kv => kv.Value.Dtype == "I8") is { Key: { } int8 })
            throw new CheckpointException($"{path}: tensor {int8} is int8 (a quantized model); quantized models run inference only (evaluate, predict, compare)");
        bool albert = AlbertNames.IsAlbertFile(file.Keys);
        if (albert != Config.Albert)
            throw new CheckpointException(albert
                ? $"{path}: holds an ALBERT's tensors (albert.…) but config.json is not ALBERT's (model_type \"albert\")"
                : $"{path}: config.json describes an ALBERT (model_type \"albert\") but the file holds no albert.… tensors");
        bool bare = !albert && !file.Keys.Any(k => k.StartsWith("bert.", StringComparison.Ordinal))
            && file.Keys.Any(k => k.StartsWith("embeddings.", StringComparison.Ordinal) || k.StartsWith("encoder.", StringComparison.Ordinal));
        var keys = new Dictionary<string, string>(StringComparer.Ordinal); // our name → the file's key
        foreach (var key in file.Keys)
        {
            string name = Canonical(key, bare, albert);
            if (!keys.TryAdd(name, key))
                throw new CheckpointException($"{path}: two tensors are {name} ({string.Join(" and ", file.Keys.Where(k => Canonical(k, bare, albert) == name))}); which one is meant is unclear");
        }
        if (!keys.ContainsKey("cls.predictions.bias") && keys.TryGetValue("cls.predictions.decoder.bias", out var decoderBias))
            keys["cls.predictions.bias"] = decoderBias;
        if (take is not null)
            foreach (var name in keys.Keys.Where(k => !take(k)).ToList()) keys.Remove(name);
        int[] ShapeOf(string name) => file[keys[name]].Shape;

        var missing = Names.Where(n => !keys.ContainsKey(n)).ToList();
        var missingBody = missing.Where(n => n.StartsWith("bert.", StringComparison.Ordinal) && !n.StartsWith("bert.pooler.", StringComparison.Ordinal)).ToList();
        if (missingBody.Count > 0)
            throw new CheckpointException($"{path}: missing tensor{(missingBody.Count > 1 ? "s" : "")} {string.Join(", ", missingBody.Take(5))}{(missingBody.Count > 5 ? $" and {missingBody.Count - 5} more" : "")}");
        foreach (var name in Names.Where(keys.ContainsKey))
        {
            var expected = byName[name].Shape;
            if (!ShapeOf(name).SequenceEqual(expected))
                throw new CheckpointException($"{path}: tensor {name} has shape [{string.Join(", ", ShapeOf(name))}], the config needs [{string.Join(", ", expected)}]");
        }
        var extraLayer = keys.Keys.Select(LayerOf).Where(l => l >= Config.NumHiddenGroups).DefaultIfEmpty(-1).Max();
        if (extraLayer >= 0)
            throw new CheckpointException(Config.Albert
                ? $"{path}: holds layer group {extraLayer} but config.json says num_hidden_groups {Config.NumHiddenGroups}; the config does not describe these weights"
                : $"{path}: holds encoder layer {extraLayer} but config.json says num_hidden_layers {Config.NumHiddenLayers}; the config does not describe these weights");
        if (keys.ContainsKey("cls.predictions.decoder.weight") && !ShapeOf("cls.predictions.decoder.weight").SequenceEqual(byName["bert.embeddings.word_embeddings.weight"].Shape))
            throw new CheckpointException($"{path}: tied decoder weight has shape [{string.Join(", ", ShapeOf("cls.predictions.decoder.weight"))}], unlike the word embeddings");

        foreach (var name in Names.Where(keys.ContainsKey))
        {
            var destination = Destination(name, out var staging);
            read(keys[name], destination);
            int bad = 0;
            foreach (float v in destination) if (!float.IsFinite(v)) bad++;
            if (bad > 0)
                throw new CheckpointException($"{path}: tensor {name} holds {bad} NaN or infinite value{(bad > 1 ? "s" : "")}; a model with them computes nothing useful");
            if (staging is not null) Set(name, staging);
        }
        if (missing.Count > 0)
        {
            var set = missing.ToHashSet();
            InitializeWhere(seedForMissingHeads, set.Contains);
        }
        var known = Names.ToHashSet();
        var unused = keys.Keys.Where(k => !known.Contains(k)
            && k is not ("cls.predictions.decoder.weight" or "cls.predictions.decoder.bias" or "bert.embeddings.position_ids")).ToList();
        return (missing, unused);
    }

    /// <summary>
    /// Where a parameter's values can be written from the host: on a CPU accelerator its own buffer
    /// (host memory), elsewhere a staging array (<paramref name="staging"/>) to copy over with <see cref="Set"/>.
    /// </summary>
    private unsafe Span<float> Destination(string name, out float[]? staging)
    {
        var (v, offset, shape) = byName[name];
        long n = HostTensor.Elements(shape);
        if (Device.Accelerator.AcceleratorType == AcceleratorType.CPU && n > 0)
        {
            Device.Accelerator.DefaultStream.Synchronize();
            staging = null;
            return new Span<float>((float*)v.Value.View.SubView(offset, n).LoadEffectiveAddressAsPtr(), checked((int)n));
        }
        staging = new float[n];
        return staging;
    }

    public void Dispose()
    {
        foreach (var p in all) p.Var.Dispose();
        all.Clear();
        byName.Clear();
    }
}
