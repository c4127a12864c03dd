// Quantization-aware training, as Q8BERT (Zafrir et al. 2019; "A Primer in BERTology" §6.2) does it:
// during fine-tuning every Linear layer computes with fake-quantized operands, the values the int8
// path will compute with:
// - its weight per output channel, s_w[n] = max_k |W[n, k]| / 127, from the current weight each step;
// - its input per tensor, s_x = EMA(max |x|) / 127: an exponential moving average of the batches'
//   maxima (decay 0.99; the first batch starts it), updated in training passes and fixed in evaluation;
// all of it on the device (QuantizationKernels: row scales, the range statistic, the rounding), so a
// GPU step reads nothing back;
// rounding as the int8 kernels round (⌊v/s + ½⌋, clamped to ±127). The gradient is the straight-
// through estimator with clipping (Ops.FakeQuantize). The learned input ranges are saved in
// config.json ("quantization_aware_training"), and `quantize` uses them instead of calibration.
using System.Globalization;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;

namespace IlgpuBert.FineTuning;

public sealed class QuantizationAware : IDisposable
{
    public const string ConfigKey = "quantization_aware_training", Method = "q8bert";
    public const float Decay = 0.99f;

    /// <summary>Per Linear layer (its weight): the EMA of max |x| and the input scale it gives, one float each on the device.</summary>
    private readonly Dictionary<Var, (Tensor Ema, Tensor Scale)> ranges = new();

    /// <summary>False: weights alone are fake-quantized (the input ranges are still tracked).</summary>
    public bool FakeQuantizeInputs { get; init; } = true;

    /// <summary>EMA of max |x| of each Linear layer's input, keyed by its weight (read from the device).</summary>
    public IReadOnlyDictionary<Var, float> InputMax => ranges.ToDictionary(r => r.Key, r => r.Value.Ema.ToHost()[0]);

    /// <summary>Hooks that fake-quantize every Linear layer; <paramref name="training"/> passes update the input ranges.</summary>
    public BertHooks Hooks(bool training, LinearLayer? inner = null) => new() { Linear = (t, x, w, b, act) => Linear(t, x, w, b, act, training, inner) };

    /// <summary>The weight fake-quantized per output channel (what `quantize` will store, dequantized); the scales stay on the device.</summary>
    public static Var QuantizeWeight(Tape tape, Var w)
    {
        int rows = w.Shape[0], cols = w.Shape[1];
        var scales = tape.Own(new Tensor(w.Device, rows));
        w.Device.Kernels.Quantization.RowScales(w.Value.View, scales.View, rows, cols);
        return Ops.FakeQuantize(tape, w, scales);
    }

    private Var Linear(Tape tape, Var x, Var w, Var? b, ActivationKind? act, bool training, LinearLayer? inner)
    {
        var q = x.Device.Kernels.Quantization;
        bool started = ranges.TryGetValue(w, out var range);
        Tensor scale;
        if (training)
        {
            if (!started) ranges[w] = range = (Tensor.FromHost(x.Device, [0f], 1), Tensor.FromHost(x.Device, [1f], 1));
            q.UpdateRange(x.Value.View, x.Length, range.Ema.View, range.Scale.View, Decay, started ? RangeMode.Update : RangeMode.Start);
            scale = range.Scale;
        }
        else if (started) scale = range.Scale;
        else
        {
            // Evaluation before any training pass: the batch's own range.
            scale = tape.Own(new Tensor(x.Device, 1));
            var unused = tape.Own(new Tensor(x.Device, 1));
            q.UpdateRange(x.Value.View, x.Length, unused.View, scale.View, Decay, RangeMode.Batch);
        }
        var xq = FakeQuantizeInputs ? Ops.FakeQuantize(tape, x, scale) : x;
        var wq = QuantizeWeight(tape, w);
        return inner is null ? Ops.Linear(tape, xq, wq, b, act) : inner(tape, xq, wq, b, act);
    }

    public void Dispose()
    {
        foreach (var (ema, scale) in ranges.Values) { ema.Dispose(); scale.Dispose(); }
        ranges.Clear();
    }

    /// <summary>The learned ranges as config.json's "quantization_aware_training" entry, by module name (query, key and value share theirs).</summary>
    public JsonObject ToConfig(BertParameters parameters)
    {
        var ranges = new JsonObject();
        var inputMax = InputMax;
        foreach (var name in parameters.Names.Where(n => n.EndsWith(".weight", StringComparison.Ordinal)))
            if (inputMax.TryGetValue(parameters[name].Var, out float max))
                ranges[name[..^".weight".Length]] = (double)max; // exact, and read back to the same float
        return new JsonObject { ["method"] = Method, ["bits"] = 8, ["ema_decay"] = Decay, ["input_max"] = ranges };
    }

    /// <summary>
    /// The ranges a folder's config.json learned (keyed by the model's weight Vars), or null when it
    /// was not trained quantization-aware; a malformed entry is refused.
    /// </summary>
    public static Dictionary<Var, float>? FromConfig(BertConfig config, BertParameters parameters, string source)
    {
        if (config.Extra[ConfigKey] is not JsonObject entry) return null;
        if (entry["input_max"] is not JsonObject ranges || ranges.Count == 0) throw new CheckpointException($"{source}: {ConfigKey} has no input_max ranges");
        var result = new Dictionary<Var, float>();
        foreach (var (module, node) in ranges)
        {
            string name = module + ".weight";
            if (!parameters.Names.Contains(name)) throw new CheckpointException($"{source}: {ConfigKey} names {module}, which the model does not have");
            float value = node is JsonValue v && v.TryGetValue(out double d) ? (float)d : float.NaN;
            if (!(value >= 0f) || !float.IsFinite(value)) throw new CheckpointException($"{source}: {ConfigKey} range of {module} must be a finite number ≥ 0, got {node?.ToJsonString() ?? "null"}");
            var w = parameters[name].Var;
            if (result.TryGetValue(w, out float seen) && seen != value)
                throw new CheckpointException($"{source}: {ConfigKey} gives {module} another range than its sibling projections ({value.ToString(CultureInfo.InvariantCulture)} against {seen.ToString(CultureInfo.InvariantCulture)}); they read the same input");
            result[w] = value;
        }
        return result;
    }
}
