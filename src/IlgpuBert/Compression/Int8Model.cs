// Post-training int8 quantization of a fine-tuned model (Q8BERT, Zafrir et al. 2019; BERTology
// §6.2): every Linear layer (encoder, pooler, head) gets int8 weights, symmetric per output channel
// (s_w[n] = max_k |W[n, k]| / 127), and a static per-tensor input scale s_x = max|x| / 127 measured
// on calibration examples; at inference the layer runs the int8 GEMM (Ops.Int8Linear). Embeddings,
// LayerNorm, softmax and GELU stay in float, as in Q8BERT's inference.
//
// Saved in HF's folder layout: each quantized weight keeps its checkpoint name with dtype I8, beside
// `<name>_scale` ([out] F32) and `<module>.input_scale` ([1] F32), the names compressed-tensors uses;
// config.json says so under quantization_config. The float weights a loader sees are the
// dequantized ones (q·s), so float and int8 paths of a loaded model start from the same numbers.
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Compression;

/// <summary>One Linear layer's int8 weight [out, in], its per-channel scales and its input scale.</summary>
public sealed class QuantizedLinear(Int8Tensor weight, Tensor scales, float inputScale) : IDisposable
{
    public Int8Tensor Weight { get; } = weight;
    public Tensor Scales { get; } = scales;
    public float InputScale { get; } = inputScale;

    public void Dispose()
    {
        Weight.Dispose();
        Scales.Dispose();
    }
}

/// <summary>A fine-tuned model whose Linear layers run in int8.</summary>
public sealed class Int8Model : IDisposable
{
    public const string Method = "ilgpu-bert-int8";

    private readonly Dictionary<Var, QuantizedLinear> layers;

    private Int8Model(BertForTask model, Dictionary<Var, QuantizedLinear> layers)
    {
        Model = model;
        this.layers = layers;
        Hooks = new BertHooks { Linear = Linear };
    }

    /// <summary>The model, its Linear weights replaced by their dequantized values (what the int8 path computes with).</summary>
    public BertForTask Model { get; }

    /// <summary>Pass these to <see cref="BertForTask.Forward"/> to run every quantized layer in int8.</summary>
    public BertHooks Hooks { get; }

    public int QuantizedLayers => layers.Count;

    private Var Linear(Tape tape, Var x, Var w, Var? b, ActivationKind? act) =>
        layers.TryGetValue(w, out var q) ? Ops.Int8Linear(tape, x, q.Weight, q.Scales, q.InputScale, b, act) : Ops.Linear(tape, x, w, b, act);

    /// <summary>max |x| of the input of every Linear layer over the batches (each layer's weight Var is its key).</summary>
    public static Dictionary<Var, float> Calibrate(BertForTask model, IEnumerable<TaskBatch> batches)
    {
        var max = new Dictionary<Var, float>();
        var hooks = new BertHooks
        {
            Linear = (tape, x, w, b, act) =>
            {
                float m = x.Value.ToHost().Aggregate(0f, (a, v) => MathF.Max(a, MathF.Abs(v)));
                if (!float.IsFinite(m)) throw new InvalidOperationException($"calibration: the input of {w.Name} holds {m}");
                max[w] = MathF.Max(max.GetValueOrDefault(w), m);
                return Ops.Linear(tape, x, w, b, act);
            },
        };
        foreach (var batch in batches)
        {
            using var tape = new Tape(recording: false);
            model.Forward(tape, batch, Dropouts.Off, hooks);
        }
        if (max.Count == 0) throw new ArgumentException("calibration needs at least one example");
        return max;
    }

    /// <summary>Per output channel: the int8 rows and scales of W [out, in].</summary>
    public static (sbyte[] Q, float[] Scales) QuantizeWeight(float[] w, int rows, int cols)
    {
        var q = new sbyte[w.Length];
        var scales = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            float max = 0f;
            for (int c = 0; c < cols; c++) max = MathF.Max(max, MathF.Abs(w[r * cols + c]));
            float s = max > 0f ? max / 127f : 1f;
            scales[r] = s;
            float inv = 1f / s;
            for (int c = 0; c < cols; c++) q[r * cols + c] = QuantizationKernels.QuantizeValue(w[r * cols + c], inv);
        }
        return (q, scales);
    }

    /// <summary>
    /// Quantizes every Linear layer <paramref name="inputMax"/> names (from <see cref="Calibrate"/>).
    /// The model's float weights are overwritten with their dequantized values; the result owns the model.
    /// </summary>
    public static Int8Model Quantize(BertForTask model, IReadOnlyDictionary<Var, float> inputMax)
    {
        var layers = new Dictionary<Var, QuantizedLinear>();
        try
        {
            foreach (var (w, max) in inputMax)
            {
                int rows = w.Shape[0], cols = w.Shape[1];
                var (q, scales) = QuantizeWeight(w.Value.ToHost(), rows, cols);
                w.Value.CopyFrom(Dequantize(q, scales, cols));
                layers[w] = new QuantizedLinear(Int8Tensor.FromHost(model.Device, q, rows, cols), Tensor.FromHost(model.Device, scales, rows),
                    max > 0f ? max / 127f : 1f);
            }
            return new Int8Model(model, layers);
        }
        catch
        {
            foreach (var l in layers.Values) l.Dispose();
            throw;
        }
    }

    private static float[] Dequantize(sbyte[] q, float[] scales, int cols)
    {
        var w = new float[q.Length];
        for (int i = 0; i < q.Length; i++) w[i] = q[i] * scales[i / cols];
        return w;
    }

    /// <summary>Writes the quantized model (I8 weights with their scales) in HF's folder layout.</summary>
    /// <param name="calibrationExamples">how many examples the input ranges were measured on; null: learned in quantization-aware training.</param>
    public void Save(string dir, string? vocabSource, int? calibrationExamples)
    {
        var extra = (JsonObject)Model.Config.Extra.DeepClone();
        extra["quantization_config"] = new JsonObject
        {
            ["quant_method"] = Method, ["bits"] = 8,
            ["weights"] = "int8, symmetric, per output channel", ["activations"] = "int8, symmetric, per tensor, static",
        };
        if (calibrationExamples is { } n) extra["quantization_config"]!["calibration_examples"] = n;
        else extra["quantization_config"]!["activation_ranges"] = "quantization-aware training (" + FineTuning.QuantizationAware.Method + ", EMA of max |x|)";
        var tensors = Model.Parameters.ToHost();
        foreach (var name in Model.Parameters.Names)
        {
            var (v, offset, shape) = Model.Parameters[name];
            if (!layers.TryGetValue(v, out var q)) continue;
            int cols = v.Shape[1], row0 = (int)(offset / cols), rows = shape[0];
            var data = q.Weight.ToHost().AsSpan(row0 * cols, rows * cols).ToArray();
            tensors[name] = new HostTensor(shape, Array.ConvertAll(data, x => (float)x), "I8");
            tensors[name + "_scale"] = new HostTensor([rows], q.Scales.ToHost().AsSpan(row0, rows).ToArray());
            tensors[name[..^"weight".Length] + "input_scale"] = new HostTensor([1], [q.InputScale]);
        }
        Directory.CreateDirectory(dir);
        (Model.Config with { Extra = extra }).Write(Path.Combine(dir, BertFolder.ConfigFile));
        SafeTensors.Write(Path.Combine(dir, BertFolder.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt", ["quantization"] = Method });
        if (vocabSource is not null) BertFolder.CopyVocabulary(vocabSource, dir);
    }

    /// <summary>Whether a model folder holds an int8 model written by <see cref="Save"/>.</summary>
    public static bool IsQuantized(BertConfig config) => config.Extra["quantization_config"]?["quant_method"]?.GetValue<string>() == Method;

    /// <summary>Loads a folder written by <see cref="Save"/>.</summary>
    public static Int8Model Load(BertDevice device, string dir)
    {
        string configPath = Path.Combine(dir, BertFolder.ConfigFile);
        var config = BertConfig.Read(configPath);
        if (!IsQuantized(config)) throw new CheckpointException($"{configPath}: not an int8 model (no quantization_config with quant_method \"{Method}\")");
        var task = TaskSpec.FromConfig(config, configPath) ?? throw new CheckpointException($"{configPath}: an int8 model needs its task head");
        var extra = (JsonObject)config.Extra.DeepClone();
        extra.Remove("quantization_config");
        string path = Path.Combine(dir, BertFolder.WeightsFile);
        var file = SafeTensors.Read(path);
        var model = new BertForTask(device, config with { Extra = extra }, task);
        var layers = new Dictionary<Var, QuantizedLinear>();
        try
        {
            // Gather each Var's int8 rows, scales and input scale from its named blocks (query/key/value share one Var).
            var parts = new Dictionary<Var, (sbyte[] Q, float[] Scales, float? Input)>();
            foreach (var name in model.Parameters.Names)
            {
                if (!file.TryGetValue(name, out var t) || t.Dtype != "I8") continue;
                var (v, offset, shape) = model.Parameters[name];
                string scaleName = name + "_scale", inputName = name[..^"weight".Length] + "input_scale";
                if (!file.TryGetValue(scaleName, out var scale) || scale.Length != shape[0])
                    throw new CheckpointException($"{path}: int8 tensor {name} needs {scaleName} with {shape[0]} values");
                if (!file.TryGetValue(inputName, out var input) || input.Length != 1 || !(input.Data[0] > 0f) || !float.IsFinite(input.Data[0]))
                    throw new CheckpointException($"{path}: int8 tensor {name} needs a positive {inputName}");
                if (scale.Data.Any(s => !(s > 0f) || !float.IsFinite(s))) throw new CheckpointException($"{path}: {scaleName} must be positive and finite");
                if (!t.Shape.SequenceEqual(shape)) throw new CheckpointException($"{path}: tensor {name} has shape {t.ShapeText}, the config needs [{string.Join(", ", shape)}]");
                int cols = v.Shape[1], row0 = (int)(offset / cols);
                if (!parts.TryGetValue(v, out var p)) p = (new sbyte[v.Length], new float[v.Shape[0]], null);
                if (p.Input is { } seen && seen != input.Data[0]) throw new CheckpointException($"{path}: {inputName} differs from its sibling projections' input scale (they read the same input)");
                for (int i = 0; i < t.Data.Length; i++) p.Q[row0 * cols + i] = (sbyte)t.Data[i];
                scale.Data.CopyTo(p.Scales, row0);
                parts[v] = (p.Q, p.Scales, input.Data[0]);
                file[name] = new HostTensor(shape, t.Data.Select((q, i) => q * scale.Data[i / cols]).ToArray());
            }
            if (parts.Count == 0) throw new CheckpointException($"{path}: no I8 tensors, though config.json says the model is int8");
            var fromFile = model.Parameters.Load(file, path);
            if (fromFile.Initialized.Count > 0) throw new CheckpointException($"{path}: missing {string.Join(", ", fromFile.Initialized)}");
            foreach (var (v, p) in parts)
                layers[v] = new QuantizedLinear(Int8Tensor.FromHost(device, p.Q, v.Shape), Tensor.FromHost(device, p.Scales, v.Shape[0]), p.Input!.Value);
            return new Int8Model(model, layers);
        }
        catch
        {
            foreach (var l in layers.Values) l.Dispose();
            model.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var l in layers.Values) l.Dispose();
        layers.Clear();
        Model.Dispose();
    }
}
