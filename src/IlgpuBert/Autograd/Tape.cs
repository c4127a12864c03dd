// A small autograd tape in the spirit of micrograd: each differentiable op computes its output
// and, when a tape is recording, appends a closure that knows how to push the output's gradient
// to its inputs, together with whatever it saved for that. Backward runs the closures in reverse
// and then frees what they saved. Gradients accumulate (+=) into each Var's Grad, so parameters
// collect contributions from several uses (the tied MLM decoder) and from several micro-batches.
// Without a tape (inference) nothing is saved and nothing is recorded.
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Runtime;

namespace IlgpuBert.Autograd;

/// <summary>A tensor in a computation, with the gradient the tape accumulates into it.</summary>
public sealed class Var : IDisposable
{
    public Var(Tensor value, bool requiresGrad = false, string? name = null)
    {
        Value = value;
        RequiresGrad = requiresGrad;
        Name = name;
    }

    public Tensor Value { get; }
    public Tensor? Grad { get; private set; }
    /// <summary>Settable so a parameter can be frozen: ops recorded afterwards neither compute nor keep its gradient.</summary>
    public bool RequiresGrad { get; set; }
    public string? Name { get; }
    public int[] Shape => Value.Shape;
    public long Length => Value.Length;
    public BertDevice Device => Value.Device;

    /// <summary>
    /// Adds a gradient contribution through a kernel with an accumulate mode: <paramref name="write"/>
    /// receives the destination and whether to add into it (false on the first contribution,
    /// which overwrites).
    /// </summary>
    public void Accumulate(Action<Tensor, bool> write)
    {
        if (!RequiresGrad) return;
        if (Grad is null)
        {
            Grad = new Tensor(Device, Shape);
            write(Grad, false);
        }
        else
            write(Grad, true);
    }

    /// <summary>Adds a whole gradient contribution held in <paramref name="contribution"/>.</summary>
    public void AddGrad(Tensor contribution)
    {
        if (!RequiresGrad) return;
        if (Grad is null)
        {
            Grad = new Tensor(Device, Shape);
            ((ArrayView1D<float, Stride1D.Dense>)contribution.View).CopyTo(Device.Accelerator.DefaultStream, (ArrayView1D<float, Stride1D.Dense>)Grad.View);
        }
        else
            Device.Kernels.Elementwise.Axpy(1f, contribution.View, Grad.View, Length);
    }

    /// <summary>The gradient buffer, created zeroed if there is none yet (for kernels that only add).</summary>
    public Tensor EnsureGrad()
    {
        if (Grad is null)
        {
            Grad = new Tensor(Device, Shape);
            Device.Kernels.Elementwise.Zero(Grad.View);
        }
        return Grad;
    }

    /// <summary>Zeroes the gradient (keeps its buffer), as an optimizer step's end does.</summary>
    public void ZeroGrad()
    {
        if (Grad is not null) Device.Kernels.Elementwise.Zero(Grad.View);
    }

    /// <summary>Drops the gradient buffer back to the pool (activations, after backward).</summary>
    public void ReleaseGrad()
    {
        Grad?.Dispose();
        Grad = null;
    }

    public void Dispose()
    {
        ReleaseGrad();
        Value.Dispose();
    }
}

/// <summary>
/// Owns every intermediate of one forward pass and, when <see cref="Recording"/>, the backward
/// steps. Inference uses a non-recording tape only to free intermediates together.
/// </summary>
public sealed class Tape(bool recording = true) : IDisposable
{
    private readonly List<(Action Step, IDisposable[] Saved)> steps = new();
    private readonly List<IDisposable> owned = new();
    private bool done;

    public bool Recording { get; } = recording;

    /// <summary>
    /// Records one op's backward; <paramref name="saved"/> (what only that backward needs) is
    /// freed as soon as it has run, or with the tape when nothing is recorded.
    /// </summary>
    public void Record(Action backwardStep, params IDisposable[] saved)
    {
        if (!Recording)
        {
            owned.AddRange(saved);
            return;
        }
        if (done) throw new InvalidOperationException("this tape has already run backward; record a new one");
        steps.Add((backwardStep, saved));
    }

    /// <summary>Keeps a forward output alive until the tape is disposed.</summary>
    public T Own<T>(T value) where T : IDisposable
    {
        owned.Add(value);
        return value;
    }

    /// <summary>
    /// Hands a value this tape owns to the caller (to keep it past this tape's disposal, e.g. on an
    /// outer tape): only on a tape that records nothing, whose values no backward step refers to.
    /// </summary>
    public T Release<T>(T value) where T : IDisposable
    {
        if (Recording) throw new InvalidOperationException("a recording tape keeps its values for backward");
        int at = owned.LastIndexOf(value);
        if (at < 0) throw new ArgumentException("the value is not owned by this tape");
        owned.RemoveAt(at);
        return value;
    }

    /// <summary>
    /// Runs every recorded backward in reverse, freeing each op's saved state right after its
    /// step and the intermediate gradients at the end; parameter gradients stay. The caller has
    /// put the loss gradients in place (a Loss carries its own weight).
    /// </summary>
    public void Backward()
    {
        if (!Recording) throw new InvalidOperationException("this tape did not record: nothing to differentiate");
        if (done) throw new InvalidOperationException("backward has already run on this tape");
        done = true;
        for (int i = steps.Count - 1; i >= 0; i--)
        {
            steps[i].Step();
            foreach (var s in steps[i].Saved) s.Dispose();
        }
        steps.Clear();
        foreach (var v in owned.OfType<Var>()) v.ReleaseGrad();
    }

    /// <summary>Frees every forward output and anything backward did not.</summary>
    public void Dispose()
    {
        foreach (var (_, saved) in steps)
            foreach (var s in saved) s.Dispose();
        steps.Clear();
        for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
        owned.Clear();
    }
}
