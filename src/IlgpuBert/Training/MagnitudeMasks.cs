// The zero weights of a magnitude-pruned model (Compression/Pruning.cs makes them) kept at zero
// while it trains: a constraint of the optimizer step, so it lives with the optimizer, and any
// trainer (fine-tuning, distillation) applies it from the config alone.
using IlgpuBert.Autograd;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Training;

/// <summary>
/// The masks of a magnitude-pruned model (its zero weights), re-applied after each optimizer step so
/// pruned weights stay zero through fine-tuning (Gordon et al. 2020).
/// </summary>
public sealed class MagnitudeMasks : IDisposable
{
    /// <summary>The config.json key a magnitude-pruned model carries (its sparsity), which turns the masks on.</summary>
    public const string SparsityKey = "ilgpu_bert_sparsity";

    /// <summary>The encoder's Linear weights, the ones magnitude pruning thins.</summary>
    public static IEnumerable<Var> Targets(BertModel bert) => bert.Layers.SelectMany(l => l.LinearWeights);

    private readonly List<(Var Weight, Tensor Mask)> masks = new();

    private MagnitudeMasks(BertModel bert)
    {
        foreach (var w in Targets(bert))
        {
            var mask = w.Value.ToHost().Select(v => v == 0f ? 0f : 1f).ToArray();
            masks.Add((w, Tensor.FromHost(bert.Device, mask, mask.Length)));
        }
    }

    /// <summary>The masks of a model whose config says it was magnitude-pruned; null otherwise.</summary>
    public static MagnitudeMasks? For(BertModel bert, BertConfig config) =>
        config.Extra[SparsityKey]?.GetValue<double>() > 0 ? new MagnitudeMasks(bert) : null;

    public long Zeros => masks.Sum(m => m.Mask.ToHost().LongCount(v => v == 0f));

    /// <summary>w ← w ⊙ mask for every masked weight.</summary>
    public void Apply()
    {
        foreach (var (w, mask) in masks)
            w.Device.Kernels.Elementwise.ScaleBlocks(w.Value.View, mask.View, w.Value.View, 1, (int)w.Length, 1);
    }

    public void Dispose()
    {
        foreach (var (_, m) in masks) m.Dispose();
        masks.Clear();
    }
}
