// Pruning (BERTology §6.2):
// - Head importance (Michel et al. 2019, "Are sixteen heads really better than one?"): a mask ξ_h
//   multiplies each head's context; I_h = mean over batches of |∂L/∂ξ_h| at ξ = 1, then each
//   layer's scores are divided by their L2 norm (the paper's normalisation; HF's bertology example).
// - Structured removal: the pruned heads' rows of query/key/value and columns of the attention
//   output projection are cut out, so the matrices really shrink; config.json records HF's
//   pruned_heads (original head indices per layer) and HF's from_pretrained prunes the same way.
// - Magnitude pruning (Gordon et al. 2020): the smallest |w| of all encoder Linear weights, one
//   global threshold, set to zero; the zeros are the mask, re-applied after every optimizer step of a
//   later fine-tuning (config key ilgpu_bert_sparsity tells it to).
// - Layer dropping (Sajjad et al. 2020, "Poor man's BERT"): whole encoder layers removed and the
//   rest renumbered.
using System.Globalization;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;
using IlgpuBert.Training;

namespace IlgpuBert.Compression;

/// <summary>Importance scores by layer and by original head index (heads already pruned have none).</summary>
public sealed record HeadImportance(IReadOnlyList<IReadOnlyDictionary<int, double>> Scores)
{
    public JsonObject ToJson() => new(Scores.Select((layer, l) => KeyValuePair.Create(l.ToString(CultureInfo.InvariantCulture),
        (JsonNode?)new JsonObject(layer.Select(kv => KeyValuePair.Create(kv.Key.ToString(CultureInfo.InvariantCulture), (JsonNode?)kv.Value))))));
}

public static class Pruning
{
    public const string SparsityKey = MagnitudeMasks.SparsityKey;

    /// <summary>
    /// The gradient of the task loss w.r.t. a mask of ones on every head, |·| per batch, averaged
    /// over the batches; with <paramref name="normalizeLayers"/>, each layer divided by its L2 norm.
    /// Parameters get no gradients (their RequiresGrad is restored afterwards).
    /// </summary>
    public static HeadImportance Importance(BertForTask model, IEnumerable<TaskBatch> batches, bool normalizeLayers = true)
    {
        var layers = model.Bert.Layers;
        var masks = layers.Select(l => new Var(Tensor.FromHost(model.Device, Enumerable.Repeat(1f, l.Heads).ToArray(), l.Heads), requiresGrad: true, name: $"head_mask.{l.Index}")).ToList();
        var sums = layers.Select(l => new double[l.Heads]).ToArray();
        var held = model.Parameters.All.Where(p => p.Var.RequiresGrad).ToList();
        foreach (var p in held) p.Var.RequiresGrad = false;
        int count = 0;
        try
        {
            var hooks = new BertHooks { HeadMasks = masks };
            foreach (var batch in batches)
            {
                if (!batch.HasLabels) throw new ArgumentException("head importance needs labelled examples (the gradient of the loss)");
                foreach (var m in masks) m.ZeroGrad();
                using (var tape = new Tape())
                {
                    var outputs = model.Forward(tape, batch, Dropouts.Off, hooks);
                    if (!double.IsFinite(outputs.ReadLoss()!.Value)) throw new NonFiniteLossException("head importance: the loss is not finite on a batch");
                    tape.Backward();
                }
                for (int l = 0; l < masks.Count; l++)
                {
                    var g = masks[l].Grad?.ToHost() ?? new float[layers[l].Heads];
                    for (int h = 0; h < g.Length; h++) sums[l][h] += Math.Abs(g[h]);
                }
                count++;
            }
        }
        finally
        {
            foreach (var p in held) p.Var.RequiresGrad = true;
            foreach (var m in masks) m.Dispose();
        }
        if (count == 0) throw new ArgumentException("head importance needs at least one batch");
        var scores = new List<IReadOnlyDictionary<int, double>>();
        for (int l = 0; l < layers.Length; l++)
        {
            var s = sums[l].Select(v => v / count).ToArray();
            double norm = Math.Sqrt(s.Sum(v => v * v));
            if (normalizeLayers && norm > 0) s = s.Select(v => v / norm).ToArray();
            var original = model.Config.HeadsOf(l);
            scores.Add(original.Select((head, i) => (head, s[i])).ToDictionary(t => t.head, t => t.Item2));
        }
        return new HeadImportance(scores);
    }

    /// <summary>The <paramref name="count"/> least important heads (ties by position), at least one head kept per layer.</summary>
    public static Dictionary<int, int[]> LeastImportant(HeadImportance importance, int count) =>
        Choose(importance.Scores.Select(s => s.Count).ToArray(), count, importance.Scores.SelectMany((layer, l) => layer.Select(kv => (l, kv.Key, kv.Value))).OrderBy(t => t.Value).ThenBy(t => t.l).ThenBy(t => t.Key)
            .Select(t => (t.l, t.Key)).ToList());

    /// <summary><paramref name="count"/> of the model's heads drawn at random (the baseline importance has to beat), at least one kept per layer.</summary>
    public static Dictionary<int, int[]> RandomHeads(BertConfig config, int count, int seed)
    {
        var heads = Enumerable.Range(0, config.NumHiddenLayers).Select(config.HeadsOf).ToArray();
        var all = heads.SelectMany((layer, l) => layer.Select(h => (l, h))).ToArray();
        new Random(seed).Shuffle(all);
        return Choose(heads.Select(h => h.Length).ToArray(), count, all.ToList());
    }

    /// <summary>The first <paramref name="count"/> heads of <paramref name="order"/> that leave every layer (of the given head counts) at least one.</summary>
    private static Dictionary<int, int[]> Choose(int[] headsPerLayer, int count, List<(int Layer, int Head)> order)
    {
        int prunable = headsPerLayer.Sum(n => n - 1);
        if (count < 0 || count > prunable) throw new ArgumentException($"can prune 0..{prunable} heads (one stays in each layer), asked for {count}");
        var left = headsPerLayer.ToArray();
        var chosen = new Dictionary<int, List<int>>();
        foreach (var (l, h) in order)
        {
            if (chosen.Values.Sum(v => v.Count) == count) break;
            if (left[l] == 1) continue;
            left[l]--;
            (chosen.TryGetValue(l, out var list) ? list : chosen[l] = []).Add(h);
        }
        return chosen.ToDictionary(kv => kv.Key, kv => kv.Value.Order().ToArray());
    }

    /// <summary>Head masks (1 kept, 0 pruned) for <see cref="BertHooks.HeadMasks"/>, by the heads the model has now.</summary>
    public static List<Var?> Masks(BertForTask model, IReadOnlyDictionary<int, int[]> prune) =>
        model.Bert.Layers.Select(layer =>
        {
            var heads = model.Config.HeadsOf(layer.Index);
            var off = prune.GetValueOrDefault(layer.Index) ?? [];
            var mask = heads.Select(h => off.Contains(h) ? 0f : 1f).ToArray();
            return (Var?)new Var(Tensor.FromHost(model.Device, mask, mask.Length));
        }).ToList();

    /// <summary>
    /// A new model without the heads in <paramref name="prune"/> (layer → original head indices):
    /// query/key/value rows and attention-output columns removed, pruned_heads updated.
    /// </summary>
    public static BertForTask PruneHeads(BertForTask model, IReadOnlyDictionary<int, int[]> prune)
    {
        var c = model.Config;
        c.RequireNotAlbert("head pruning");
        int hd = c.HeadDim;
        var merged = c.PrunedHeads.ToDictionary(kv => kv.Key, kv => kv.Value.ToHashSet());
        foreach (var (l, heads) in prune)
        {
            if (l < 0 || l >= c.NumHiddenLayers) throw new ArgumentException($"layer {l} does not exist (the model has {c.NumHiddenLayers})");
            var current = c.HeadsOf(l);
            foreach (int h in heads)
                if (!current.Contains(h)) throw new ArgumentException($"head {h} of layer {l} is not in the model (heads left: {string.Join(", ", current)})");
            (merged.TryGetValue(l, out var set) ? set : merged[l] = []).UnionWith(heads);
        }
        var config = c.WithPrunedHeads(merged.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()));
        var tensors = model.Parameters.ToHost();
        foreach (var (l, heads) in prune)
        {
            var current = c.HeadsOf(l);
            var keep = current.Select((h, i) => (h, i)).Where(t => !heads.Contains(t.h)).Select(t => t.i).ToArray(); // positions kept
            string at = $"bert.encoder.layer.{l}.attention.";
            foreach (var part in new[] { "query", "key", "value" })
            {
                tensors[$"{at}self.{part}.weight"] = KeepRows(tensors[$"{at}self.{part}.weight"], keep, hd);
                tensors[$"{at}self.{part}.bias"] = KeepRows(tensors[$"{at}self.{part}.bias"], keep, hd);
            }
            tensors[$"{at}output.dense.weight"] = KeepColumns(tensors[$"{at}output.dense.weight"], keep, hd);
        }
        return Rebuild(model, config, tensors);
    }

    private static HostTensor KeepRows(HostTensor t, int[] heads, int hd)
    {
        int cols = t.Shape.Length == 2 ? t.Shape[1] : 1;
        var data = heads.SelectMany(h => t.Data.Skip(h * hd * cols).Take(hd * cols)).ToArray();
        return new HostTensor(t.Shape.Length == 2 ? [heads.Length * hd, cols] : [heads.Length * hd], data);
    }

    private static HostTensor KeepColumns(HostTensor t, int[] heads, int hd)
    {
        int rows = t.Shape[0], cols = t.Shape[1];
        var data = new float[rows * heads.Length * hd];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < heads.Length; i++)
                Array.Copy(t.Data, r * cols + heads[i] * hd, data, (r * heads.Length + i) * hd, hd);
        return new HostTensor([rows, heads.Length * hd], data);
    }

    /// <summary>A new model without the encoder layers in <paramref name="drop"/>; the rest renumbered.</summary>
    public static BertForTask DropLayers(BertForTask model, IReadOnlyCollection<int> drop)
    {
        var c = model.Config;
        c.RequireNotAlbert("dropping layers");
        int layers = c.NumHiddenLayers;
        if (drop.Any(l => l < 0 || l >= layers)) throw new ArgumentException($"layers to drop must be in [0, {layers})");
        var keep = Enumerable.Range(0, layers).Where(l => !drop.Contains(l)).ToArray();
        if (keep.Length == 0) throw new ArgumentException("dropping every layer leaves no encoder");
        var source = model.Parameters.ToHost();
        var tensors = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        const string prefix = "bert.encoder.layer.";
        foreach (var (name, t) in source)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal)) { tensors[name] = t; continue; }
            int dot = name.IndexOf('.', prefix.Length), l = int.Parse(name[prefix.Length..dot], CultureInfo.InvariantCulture);
            int to = Array.IndexOf(keep, l);
            if (to >= 0) tensors[$"{prefix}{to}{name[dot..]}"] = t;
        }
        if (tensors.TryGetValue("ilgpu_bert.scalar_mix.weights", out var mix)) // state 0 (embeddings) and each kept layer's output
            tensors["ilgpu_bert.scalar_mix.weights"] = new HostTensor([keep.Length + 1], new[] { mix.Data[0] }.Concat(keep.Select(l => mix.Data[l + 1])).ToArray());
        var pruned = c.PrunedHeads.Where(kv => keep.Contains(kv.Key)).ToDictionary(kv => Array.IndexOf(keep, kv.Key), kv => kv.Value);
        var config = (c with { NumHiddenLayers = keep.Length }).WithPrunedHeads(pruned);
        return Rebuild(model, config, tensors);
    }

    private static BertForTask Rebuild(BertForTask model, BertConfig config, Dictionary<string, HostTensor> tensors)
    {
        var result = new BertForTask(model.Device, config, model.Task);
        try
        {
            var (initialized, _) = result.Parameters.Load(tensors, "pruned model");
            if (initialized.Count > 0) throw new InvalidOperationException($"pruning lost {string.Join(", ", initialized)}");
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>The encoder's Linear weights, the ones magnitude pruning thins.</summary>
    public static IEnumerable<Var> MagnitudeTargets(BertModel bert) => MagnitudeMasks.Targets(bert);

    /// <summary>
    /// Sets the fraction <paramref name="sparsity"/> of smallest-magnitude encoder Linear weights to
    /// zero (one global threshold) and records the sparsity in the config; returns the pruned count.
    /// </summary>
    public static long PruneMagnitude(BertModel bert, BertConfig config, double sparsity, out BertConfig pruned)
    {
        if (!(sparsity >= 0 && sparsity < 1)) throw new ArgumentOutOfRangeException(nameof(sparsity), $"sparsity must be in [0, 1), got {sparsity}");
        var weights = MagnitudeTargets(bert).Select(w => (Var: w, Data: w.Value.ToHost())).ToList();
        var magnitudes = weights.SelectMany(w => w.Data.Select(MathF.Abs)).ToArray();
        long target = (long)Math.Round(sparsity * magnitudes.Length);
        long zeroed = 0;
        if (target > 0)
        {
            // Exactly `target` weights: all below the target-th smallest |w|, then ties at it in position order.
            Array.Sort(magnitudes);
            float threshold = magnitudes[target - 1];
            long below = magnitudes.LongCount(m => m < threshold), ties = target - below;
            foreach (var (v, data) in weights)
            {
                for (int i = 0; i < data.Length; i++)
                {
                    float m = MathF.Abs(data[i]);
                    if (m < threshold || (m == threshold && ties-- > 0)) { data[i] = 0f; zeroed++; }
                }
                v.Value.CopyFrom(data);
            }
        }
        var extra = (JsonObject)config.Extra.DeepClone();
        extra[SparsityKey] = sparsity;
        pruned = config with { Extra = extra };
        return zeroed;
    }
}
