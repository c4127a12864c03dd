// Differentiable ops on Vars: each computes its output with the kernels and, on a recording
// tape, records how to push the output's gradient back to its inputs. Every output is owned by
// the tape (freed with it). 2-D views: a Var of shape [..., C] is read as [Length / C, C].
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Autograd;

/// <summary>A scalar loss on the device ([mean, count] from the cross-entropy kernel).</summary>
public sealed class Loss(Tensor value) : IDisposable
{
    public Tensor Value { get; } = value;

    /// <summary>∂(total)/∂(this loss) used in backward; 1 by default, 1/N for gradient accumulation.</summary>
    public float Weight { get; set; } = 1f;

    public float Read() => Value.ToHost()[0];

    public void Dispose() => Value.Dispose();
}

/// <summary>
/// Integer data on the device (token ids, labels, masks), uploaded once per batch. The buffer is a
/// pooled float buffer of the same length viewed as int (both 4 bytes), so batches of a steady
/// shape allocate no device memory.
/// </summary>
public sealed class DeviceInts : IDisposable
{
    private readonly PooledBuffer buffer;

    public DeviceInts(BertDevice device, int[] host)
    {
        Host = host;
        buffer = device.Pool.Rent(Math.Max(host.Length, 1));
        if (host.Length > 0) View.CopyFromCPU(device.Accelerator.DefaultStream, host);
    }

    public int[] Host { get; }
    public ArrayView<int> View => buffer.View.Cast<int>().SubView(0, Host.Length);

    public void Dispose() => buffer.Dispose();
}

public static partial class Ops
{
    private static int Cols(Var v) => v.Shape[^1];
    private static int Rows(Var v) => (int)(v.Length / Math.Max(Cols(v), 1));
    private static KernelSet K(Var v) => v.Device.Kernels;

    private static Var Output(Tape tape, BertDevice device, bool requiresGrad, params int[] shape) =>
        tape.Own(new Var(new Tensor(device, shape), requiresGrad));

    /// <summary>y = act(x·Wᵀ + b), HF nn.Linear (weight [out, in]); act null for none. x: [..., in].</summary>
    public static Var Linear(Tape tape, Var x, Var w, Var? b, ActivationKind? act = null) => Linear(tape, x, w, b, act, null);

    /// <param name="packedWeight">w packed by <see cref="GemmKernels.PackB"/> (the CPU path then skips packing it); the same values as w.</param>
    public static Var Linear(Tape tape, Var x, Var w, Var? b, ActivationKind? act, PackedMatrix? packedWeight)
    {
        int n = Rows(x), inDim = Cols(x), outDim = w.Shape[0];
        if (w.Shape[1] != inDim) throw new ArgumentException($"Linear: input has {inDim} features, weight {w.Name} expects {w.Shape[1]}");
        var shape = x.Shape.ToArray();
        shape[^1] = outDim;
        // Not recording (inference): no pre-activation kept, and the output needs no gradient.
        bool grad = tape.Recording && (x.RequiresGrad || w.RequiresGrad || (b?.RequiresGrad ?? false));
        var y = Output(tape, x.Device, grad, shape);
        var k = K(x);
        Tensor? pre = null;
        // Inference with a packed copy never reads w itself (which PackedLinears may have released).
        var wView = packedWeight is not null && !grad ? default : w.Value.View;
        if (act is null)
            k.Gemm.Forward(Transpose.N, Transpose.T, n, outDim, inDim, 1f, x.Value.View, inDim, wView, inDim, 0f, y.Value.View, outDim, b?.Value.View ?? default,
                packedB: packedWeight);
        else
        {
            // One pass (the GEMM's epilogue applies the activation); pre is what backward needs.
            pre = grad || !k.Gemm.FusesWithoutPre(act.Value) ? new Tensor(x.Device, shape) : null;
            k.Gemm.ForwardActivation(Transpose.N, Transpose.T, n, outDim, inDim, x.Value.View, inDim, wView, inDim, pre?.View ?? default, outDim,
                b?.Value.View ?? default, act.Value, y.Value.View, packedWeight);
        }
        if (!grad) { pre?.Dispose(); return y; }
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            var dPre = y.Grad;
            Tensor? temp = null;
            if (act is not null)
            {
                temp = new Tensor(x.Device, shape);
                k.Activation.Backward(act.Value, pre!.View, b?.Value.View ?? default, y.Grad.View, temp.View, default, n, outDim, false);
                dPre = temp;
            }
            b?.Accumulate((g, accumulate) => k.Bias.Backward(dPre.View, g.View, n, outDim, accumulate));
            x.Accumulate((g, accumulate) => k.Gemm.Forward(Transpose.N, Transpose.N, n, inDim, outDim, 1f, dPre.View, outDim,
                w.Value.View, inDim, accumulate ? 1f : 0f, g.View, inDim));
            w.Accumulate((g, accumulate) => k.Gemm.Forward(Transpose.T, Transpose.N, outDim, inDim, n, 1f, dPre.View, outDim,
                x.Value.View, inDim, accumulate ? 1f : 0f, g.View, inDim));
            temp?.Dispose();
        }, pre is null ? [] : [pre]);
        return y;
    }

    /// <summary>y = LayerNorm(x + residual)·γ + β over the last dimension (residual may be null).</summary>
    public static Var LayerNorm(Tape tape, Var x, Var? residual, Var gamma, Var beta, float eps)
    {
        int n = Rows(x), c = Cols(x);
        bool grad = x.RequiresGrad || (residual?.RequiresGrad ?? false) || gamma.RequiresGrad || beta.RequiresGrad;
        var y = Output(tape, x.Device, grad, x.Shape);
        var mean = new Tensor(x.Device, n);
        var rstd = new Tensor(x.Device, n);
        var k = K(x);
        var r = residual?.Value.View ?? default;
        k.LayerNorm.Forward(x.Value.View, r, gamma.Value.View, beta.Value.View, y.Value.View, mean.View, rstd.View, n, c, eps);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            using var dx = new Tensor(x.Device, x.Shape);
            var dGamma = gamma.RequiresGrad ? gamma.EnsureGrad().View : default;
            var dBeta = beta.RequiresGrad ? beta.EnsureGrad().View : default;
            k.LayerNorm.Backward(x.Value.View, r, gamma.Value.View, mean.View, rstd.View, y.Grad.View, dx.View, dGamma, dBeta, n, c, true);
            x.AddGrad(dx);
            residual?.AddGrad(dx);
        }, mean, rstd);
        return y;
    }

    /// <summary>Inverted dropout with a Philox key; p = 0 returns x itself.</summary>
    public static Var Dropout(Tape tape, Var x, float p, DropoutKey key)
    {
        if (p == 0f) return x;
        var y = Output(tape, x.Device, x.RequiresGrad, x.Shape);
        var k = K(x);
        k.Dropout.Forward(x.Value.View, y.Value.View, x.Length, p, key);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            using var dx = new Tensor(x.Device, x.Shape);
            k.Dropout.Backward(y.Grad.View, dx.View, x.Length, p, key);
            x.AddGrad(dx);
        });
        return y;
    }

    /// <summary>word[input_ids] + position[position_ids] + token_type[token_type_ids] → [B, S, H].</summary>
    public static Var Embeddings(Tape tape, DeviceInts ids, DeviceInts positions, DeviceInts types, int batch, int seqLen, Var word, Var position, Var tokenType)
    {
        int h = word.Shape[1];
        var shape = new EmbeddingShape
        {
            Tokens = batch * seqLen, SeqLen = seqLen, Hidden = h, VocabSize = word.Shape[0],
            MaxPositions = position.Shape[0], TypeVocabSize = tokenType.Shape[0],
        };
        bool grad = word.RequiresGrad || position.RequiresGrad || tokenType.RequiresGrad;
        var y = Output(tape, word.Device, grad, batch, seqLen, h);
        var k = K(word);
        k.Embeddings.Forward(ids.View, positions.View, types.View, word.Value.View, position.Value.View, tokenType.Value.View, y.Value.View, shape);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            k.Embeddings.Backward(y.Grad.View, ids.Host, positions.Host, types.Host,
                word.RequiresGrad ? word.EnsureGrad().View : default,
                position.RequiresGrad ? position.EnsureGrad().View : default,
                tokenType.RequiresGrad ? tokenType.EnsureGrad().View : default, shape);
        });
        return y;
    }

    /// <summary>
    /// Fused multi-head self-attention: qkv [B, S, 3H] → context [B, S, H]. With
    /// <paramref name="probs"/> ([B, NH, S, S]) the attention probabilities are written too.
    /// </summary>
    public static Var Attention(Tape tape, Var qkv, DeviceInts? mask, AttentionShape shape, Tensor? probs = null)
    {
        var y = Output(tape, qkv.Device, qkv.RequiresGrad, shape.Batch, shape.SeqLen, shape.Hidden);
        var lse = new Tensor(qkv.Device, shape.Batch, shape.Heads, shape.SeqLen);
        var k = K(qkv);
        var m = mask?.View ?? default;
        k.Attention.Forward(qkv.Value.View, m, y.Value.View, lse.View, shape, probs?.View ?? default);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            using var dQkv = new Tensor(qkv.Device, qkv.Shape);
            k.Attention.Backward(qkv.Value.View, m, y.Value.View, lse.View, y.Grad.View, dQkv.View, shape);
            qkv.AddGrad(dQkv);
        }, lse);
        return y;
    }

    /// <summary>The rows of x ([N, C]) listed in <paramref name="rows"/> → [rows.Length, C].</summary>
    public static Var GatherRows(Tape tape, Var x, int[] rows)
    {
        int n = Rows(x), c = Cols(x);
        var y = Output(tape, x.Device, x.RequiresGrad, rows.Length, c);
        var k = K(x);
        k.Embeddings.Gather(x.Value.View, rows, y.Value.View, n, c);
        tape.Record(() =>
        {
            if (y.Grad is null || !x.RequiresGrad) return;
            k.Embeddings.ScatterAdd(y.Grad.View, rows, x.EnsureGrad().View, n, c, "rows");
        });
        return y;
    }

    /// <summary>Mean cross-entropy of logits [N, V] against labels (−100 ignored).</summary>
    public static Loss CrossEntropy(Tape tape, Var logits, DeviceInts labels)
    {
        int n = Rows(logits), v = Cols(logits);
        if (labels.Host.Length != n) throw new ArgumentException($"{labels.Host.Length} labels for {n} rows of logits");
        var loss = tape.Own(new Loss(new Tensor(logits.Device, 2)));
        var lse = new Tensor(logits.Device, n);
        var k = K(logits);
        k.CrossEntropy.Forward(logits.Value.View, labels.View, lse.View, loss.Value.View, n, v);
        tape.Record(() =>
        {
            using var dLogits = new Tensor(logits.Device, logits.Shape);
            k.CrossEntropy.Backward(logits.Value.View, labels.View, lse.View, loss.Value.View, dLogits.View, n, v, loss.Weight);
            logits.AddGrad(dLogits);
        }, lse);
        return loss;
    }

}
