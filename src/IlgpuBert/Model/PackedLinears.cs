// Inference on the CPU repacks every Linear weight into the GEMM's panels on every call: at batch 1
// that is as much memory traffic as the product itself (perf/RESULTS.md). ONNX Runtime prepacks a
// MatMul's constant weight once; this does the same for a model that only runs forward.
using IlgpuBert.Autograd;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

/// <summary>
/// Linear layers whose weights are packed on first use and reused (<see cref="GemmKernels.PackB"/>):
/// pass <see cref="Hooks"/> to a forward. The packed copies are snapshots, so only code that owns a
/// model it never trains again uses this (the pipelines, predict, compare). Where the GEMM reads B as
/// it is (GPU kernels), layers run as <see cref="Ops.Linear(Tape, Var, Var, Var?, ActivationKind?)"/> and nothing is kept.
/// </summary>
public sealed class PackedLinears
{
    private readonly Dictionary<Var, PackedMatrix?> packed = new(ReferenceEqualityComparer.Instance);

    public PackedLinears() => Hooks = new BertHooks { Linear = Linear };

    public BertHooks Hooks { get; }

    /// <summary>How many weights are packed so far.</summary>
    public int Count
    {
        get
        {
            lock (packed) return packed.Values.Count(p => p is not null);
        }
    }

    /// <summary>
    /// Packs <paramref name="weights"/> now. With <paramref name="release"/>, each weight that was packed
    /// (the CPU path) gives its own buffer back and the pool frees it: the packed copy is then the only
    /// one, so weights are held once. Only for a model used through <see cref="Hooks"/> alone and never
    /// read otherwise again (saving it, or a forward without these hooks, would fail on the released
    /// weights); on GPUs nothing is packed and nothing released.
    /// </summary>
    public void Pack(IEnumerable<Var> weights, bool release)
    {
        BertDevice? device = null;
        foreach (var w in weights)
        {
            if (release && PackedFor(w) is not null)
            {
                w.Value.Dispose();
                device = w.Device;
            }
        }
        device?.Pool.Trim();
    }

    public Var Linear(Tape tape, Var x, Var w, Var? b, ActivationKind? act) => Ops.Linear(tape, x, w, b, act, PackedFor(w));

    /// <summary>w's packed copy, made on first request (null where the GEMM reads B as it is).</summary>
    private PackedMatrix? PackedFor(Var w)
    {
        lock (packed)
        {
            if (!packed.TryGetValue(w, out var p))
                packed[w] = p = w.Device.Kernels.Gemm.PackB(Transpose.T, w.Shape[0], w.Shape[1], w.Value.View, w.Shape[1]);
            return p;
        }
    }
}
