// Ops for compression (BERTology §6): int8 Linear inference, head masks (Michel et al. 2019), the
// attention probabilities as a differentiable tensor (TinyBERT's attention loss) and the soft-target
// loss of knowledge distillation (Hinton et al. 2015).
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Autograd;

public static partial class Ops
{
    /// <summary>
    /// y = act(dequant(quant(x)·Wqᵀ) + b): x quantized per tensor with <paramref name="inputScale"/>,
    /// the int8 GEMM accumulating exactly in int32, then rescaled by inputScale·wScales[n].
    /// Inference only: a gradient cannot pass through rounding, so x must not require one.
    /// </summary>
    public static Var Int8Linear(Tape tape, Var x, Int8Tensor w, Tensor wScales, float inputScale, Var? b, ActivationKind? act = null)
    {
        int n = Rows(x), inDim = Cols(x), outDim = w.Shape[0];
        if (w.Shape[1] != inDim) throw new ArgumentException($"Int8Linear: input has {inDim} features, the weight expects {w.Shape[1]}");
        if (tape.Recording && x.RequiresGrad)
            throw new InvalidOperationException("int8 Linear layers have no backward (rounding has no gradient); train in float, or with fake quantization, then quantize");
        var shape = x.Shape.ToArray();
        shape[^1] = outDim;
        var y = Output(tape, x.Device, false, shape);
        var k = K(x);
        if (k.Quantization.UseHostLinear)
        {
            w.HostPacked ??= k.Quantization.PackForHost(w.View, outDim, inDim);
            k.Quantization.LinearOnHost(x.Value.View, w.HostPacked, wScales.View, inputScale, b?.Value.View ?? default, act, y.Value.View, n);
            return y;
        }
        using var qx = new Int8Tensor(x.Device, n, inDim);
        using var acc = x.Device.Pool.Rent(Math.Max(1L, (long)n * outDim));
        var accView = acc.View.Cast<int>().SubView(0, (long)n * outDim);
        k.Quantization.Quantize(x.Value.View, qx.View, x.Length, inputScale);
        k.Quantization.Gemm(qx.View, w.View, accView, n, outDim, inDim);
        if (act is null)
        {
            k.Quantization.Dequantize(accView, wScales.View, y.Value.View, n, outDim, inputScale);
            if (b is not null) k.Bias.Forward(y.Value.View, b.Value.View, y.Value.View, n, outDim);
        }
        else
        {
            using var pre = new Tensor(x.Device, shape);
            k.Quantization.Dequantize(accView, wScales.View, pre.View, n, outDim, inputScale);
            k.Activation.Forward(act.Value, pre.View, b?.Value.View ?? default, y.Value.View, n, outDim);
        }
        return y;
    }

    /// <summary>
    /// Fake quantization for quantization-aware training (Q8BERT): y = clamp(⌊x/s + ½⌋, ±127)·s, the
    /// values the int8 path computes with, with one scale s for the whole tensor (<paramref name="scales"/>
    /// of one element) or one per row (an output channel of a weight [out, in]). The backward is the
    /// straight-through estimator with clipping: the gradient passes unchanged where x's code was not
    /// clamped, and is 0 where it was. The scales get no gradient; the tape keeps them until backward.
    /// </summary>
    public static Var FakeQuantize(Tape tape, Var x, Tensor scales)
    {
        long cols = scales.Length == 1 ? x.Length : Cols(x);
        if (scales.Length != 1 && scales.Length != Rows(x)) throw new ArgumentException($"FakeQuantize: {scales.Length} scales for {Rows(x)} rows of {x.Name}");
        var y = Output(tape, x.Device, tape.Recording && x.RequiresGrad, x.Shape.ToArray());
        var k = K(x);
        k.Quantization.FakeQuantize(x.Value.View, scales.View, y.Value.View, x.Length, cols);
        if (y.RequiresGrad)
            tape.Record(() =>
            {
                if (y.Grad is null) return;
                using var dx = new Tensor(x.Device, x.Shape.ToArray());
                k.Quantization.FakeQuantizeBackward(x.Value.View, scales.View, y.Grad.View, dx.View, x.Length, cols);
                x.AddGrad(dx);
            });
        return y;
    }

    /// <summary>
    /// y[r, h·HD + d] = x[r, h·HD + d]·ξ[h]: a mask (or gate) per attention head on the context
    /// [B, S, NH·HD]. With a ξ that requires a gradient, ∂L/∂ξ_h is the head-importance signal of
    /// Michel et al. (2019).
    /// </summary>
    public static Var ScaleHeads(Tape tape, Var x, Var headScale, int headDim)
    {
        int rows = Rows(x), cols = Cols(x);
        if (headScale.Length * headDim != cols) throw new ArgumentException($"ScaleHeads: {headScale.Length} heads of {headDim} do not cover {cols} columns");
        bool grad = x.RequiresGrad || headScale.RequiresGrad;
        var y = Output(tape, x.Device, grad, x.Shape);
        var k = K(x);
        k.Elementwise.ScaleBlocks(x.Value.View, headScale.Value.View, y.Value.View, rows, cols, headDim);
        if (!grad) return y;
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            if (x.RequiresGrad)
            {
                using var dx = new Tensor(x.Device, x.Shape);
                k.Elementwise.ScaleBlocks(y.Grad.View, headScale.Value.View, dx.View, rows, cols, headDim);
                x.AddGrad(dx);
            }
            headScale.Accumulate((g, accumulate) => k.Elementwise.BlockDot(y.Grad.View, x.Value.View, g.View, rows, cols, headDim, accumulate));
        });
        return y;
    }

    /// <summary>
    /// The attention probabilities softmax(QKᵀ/√HD + mask) [B, NH, S, S] of a fused qkv [B, S, 3, NH, HD],
    /// materialised (the fused kernel never stores them) and differentiable: backward is the softmax
    /// backward, then dQ = scale·dS·K and dK = scale·dSᵀ·Q by batched GEMMs into qkv's gradient.
    /// No dropout: this is the map TinyBERT's attention loss compares.
    /// </summary>
    public static Var AttentionProbs(Tape tape, Var qkv, DeviceInts? mask, AttentionShape shape)
    {
        shape.DropoutP = 0f;
        int b = shape.Batch, s = shape.SeqLen, nh = shape.Heads, hd = shape.HeadDim;
        var probs = Output(tape, qkv.Device, qkv.RequiresGrad, b, nh, s, s);
        var k = K(qkv);
        using (var context = new Tensor(qkv.Device, b, s, nh * hd))
            k.Attention.NaiveForward(qkv.Value.View, mask?.View ?? default, context.View, probs.Value.View, shape);
        if (!qkv.RequiresGrad) return probs;
        tape.Record(() =>
        {
            if (probs.Grad is null) return;
            long ss = (long)s * s;
            int ld = 3 * nh * hd;
            float scale = 1f / MathF.Sqrt(hd);
            using var dScores = new Tensor(qkv.Device, b, nh, s, s);
            k.Softmax.Backward(probs.Value.View, probs.Grad.View, dScores.View, b * nh * s, s);
            var dQkv = qkv.EnsureGrad().View;
            var q = qkv.Value.View;
            for (int i = 0; i < b; i++)
            {
                long at = (long)i * s * ld, kAt = at + (long)nh * hd;
                var dS = dScores.View.SubView(i * nh * ss, nh * ss);
                // dQ[i, d] += scale·Σ_j dS[i, j]·K[j, d];  dK[j, d] += scale·Σ_i dS[i, j]·Q[i, d]  (batched over heads)
                k.Gemm.Forward(Transpose.N, Transpose.N, s, hd, s, scale, dS, s, q.SubView(kAt, q.Length - kAt), ld, 1f,
                    dQkv.SubView(at, dQkv.Length - at), ld, default, nh, ss, hd, hd);
                k.Gemm.Forward(Transpose.T, Transpose.N, s, hd, s, scale, dS, s, q.SubView(at, q.Length - at), ld, 1f,
                    dQkv.SubView(kAt, dQkv.Length - kAt), ld, default, nh, ss, hd, hd);
            }
        });
        return probs;
    }

    /// <summary>
    /// Hinton et al.'s soft-target loss: the mean over rows of KL(p‖q) with p = softmax(teacher/T)
    /// and q = softmax(student/T), for student logits [N, C] and the teacher's (a constant).
    /// ∂/∂z = (q − p)/(T·N). The caller multiplies by T² (so gradients keep their size as T grows).
    /// </summary>
    public static Loss SoftTargetKl(Tape tape, Var student, float[] teacher, float temperature)
    {
        if (!(temperature > 0f)) throw new ArgumentOutOfRangeException(nameof(temperature), $"temperature must be positive, got {temperature}");
        if (teacher.Length != student.Length) throw new ArgumentException($"SoftTargetKl: {teacher.Length} teacher logits for {student.Length} student logits");
        int c = Cols(student), n = Rows(student);
        var z = student.Value.ToHost();
        var grad = new float[z.Length];
        double total = 0;
        var zt = new float[c];
        var tt = new float[c];
        for (int r = 0; r < n; r++)
        {
            int o = r * c;
            for (int j = 0; j < c; j++)
            {
                zt[j] = z[o + j] / temperature;
                tt[j] = teacher[o + j] / temperature;
            }
            var q = Softmax(zt, 0, c);
            var p = Softmax(tt, 0, c);
            for (int j = 0; j < c; j++)
            {
                total += p[j] * (Math.Log(p[j]) - Math.Log(q[j]));
                grad[o + j] = (float)((q[j] - p[j]) / (temperature * n));
            }
        }
        var loss = tape.Own(new Loss(Tensor.FromHost(student.Device, [(float)(total / Math.Max(n, 1)), n], 2)));
        tape.Record(() => AddHost(student, grad.Select(g => g * loss.Weight).ToArray()));
        return loss;
    }
}
