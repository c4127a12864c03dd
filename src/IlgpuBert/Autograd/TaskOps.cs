// Ops the task heads and the fine-tuning methods need, each with its backward beside it:
// - Add (a perturbation on the embedding output: FreeLB, SMART);
// - ConcatColumns / SliceColumns (concat-last4 features; QA start and end logits);
// - MixRows (a constant [R, N] matrix times x: masked mean pooling over each sequence);
// - ScalarMix (ELMo's γ·Σ softmax(w)ₗ·hₗ over all layers' outputs, Peters et al. 2018);
// - Mixout (Lee et al. 2020): the weight with each element swapped for its pretrained value with
//   probability p and rescaled, u + dropout_p(w − u), so its mask is Philox's dropout mask;
// - MeanSquaredError and SymmetricKl: losses over a handful of values per example ([B] or [B, C]),
//   computed on the host in double (a device round trip of a few hundred floats; the network's
//   large reductions stay on the device).
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Autograd;

public static partial class Ops
{
    /// <summary>y = a + b, same shape.</summary>
    public static Var Add(Tape tape, Var a, Var b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"Add: {a.Length} vs {b.Length} elements");
        var y = Output(tape, a.Device, a.RequiresGrad || b.RequiresGrad, a.Shape);
        var k = K(a);
        Copy(a.Value, y.Value);
        k.Elementwise.Axpy(1f, b.Value.View, y.Value.View, a.Length);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            a.AddGrad(y.Grad);
            b.AddGrad(y.Grad);
        });
        return y;
    }

    /// <summary>[N, C₁] ‖ [N, C₂] ‖ … → [N, ΣCᵢ] (features side by side, row by row).</summary>
    public static Var ConcatColumns(Tape tape, IReadOnlyList<Var> xs)
    {
        int n = Rows(xs[0]), total = xs.Sum(Cols);
        if (xs.Any(x => Rows(x) != n)) throw new ArgumentException("ConcatColumns: inputs have different row counts");
        var y = Output(tape, xs[0].Device, xs.Any(x => x.RequiresGrad), n, total);
        var k = K(xs[0]);
        int offset = 0;
        foreach (var x in xs)
        {
            k.Elementwise.CopyColumns(x.Value.View, Cols(x), 0, y.Value.View, total, offset, n, Cols(x));
            offset += Cols(x);
        }
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            int at = 0;
            foreach (var x in xs)
            {
                int c = Cols(x), from = at;
                x.Accumulate((g, accumulate) => k.Elementwise.CopyColumns(y.Grad.View, total, from, g.View, c, 0, n, c, accumulate));
                at += c;
            }
        });
        return y;
    }

    /// <summary>Columns [offset, offset + cols) of x [N, C] → [N, cols], or <paramref name="shape"/> with as many elements.</summary>
    public static Var SliceColumns(Tape tape, Var x, int offset, int cols, int[]? shape = null)
    {
        int n = Rows(x), c = Cols(x);
        shape ??= [n, cols];
        if (shape.Aggregate(1L, (a, d) => a * d) != (long)n * cols) throw new ArgumentException($"SliceColumns: shape [{string.Join(", ", shape)}] does not hold {n} × {cols}");
        var y = Output(tape, x.Device, x.RequiresGrad, shape);
        var k = K(x);
        k.Elementwise.CopyColumns(x.Value.View, c, offset, y.Value.View, cols, 0, n, cols);
        tape.Record(() =>
        {
            if (y.Grad is null || !x.RequiresGrad) return;
            k.Elementwise.CopyColumns(y.Grad.View, cols, 0, x.EnsureGrad().View, c, offset, n, cols, accumulate: true);
        });
        return y;
    }

    /// <summary>y = M·x for a constant M [R, N] (host) and x [N, C] → [R, C]; backward dx = Mᵀ·dy.</summary>
    public static Var MixRows(Tape tape, float[] m, int r, Var x)
    {
        int n = Rows(x), c = Cols(x);
        if (m.Length != (long)r * n) throw new ArgumentException($"MixRows: a [{r}, {n}] matrix needs {(long)r * n} values, got {m.Length}");
        var y = Output(tape, x.Device, x.RequiresGrad, r, c);
        var mix = Tensor.FromHost(x.Device, m, r, n);
        var k = K(x);
        k.Gemm.Forward(Transpose.N, Transpose.N, r, c, n, 1f, mix.View, n, x.Value.View, c, 0f, y.Value.View, c);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            x.Accumulate((g, accumulate) => k.Gemm.Forward(Transpose.T, Transpose.N, n, c, r, 1f, mix.View, n, y.Grad.View, c,
                accumulate ? 1f : 0f, g.View, c));
        }, mix);
        return y;
    }

    /// <summary>
    /// γ·Σₗ softmax(w)ₗ·hₗ over equally shaped <paramref name="layers"/>; w [L] and γ [1] are
    /// parameters. The L coefficients are computed on the host (L + 1 floats); backward needs
    /// ⟨hₗ, dy⟩ for each layer, one dot product each on the device.
    /// </summary>
    public static Var ScalarMix(Tape tape, IReadOnlyList<Var> layers, Var weights, Var gamma)
    {
        int count = layers.Count;
        if (weights.Length != count) throw new ArgumentException($"ScalarMix: {weights.Length} weights for {count} layers");
        var w = weights.Value.ToHost();
        float g = gamma.Value.ToHost()[0];
        double max = w.Max();
        var e = w.Select(v => Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        var s = e.Select(v => v / sum).ToArray();

        var x0 = layers[0];
        bool grad = layers.Any(l => l.RequiresGrad) || weights.RequiresGrad || gamma.RequiresGrad;
        var y = Output(tape, x0.Device, grad, x0.Shape);
        var k = K(x0);
        k.Elementwise.Zero(y.Value.View);
        for (int l = 0; l < count; l++) k.Elementwise.Axpy((float)(g * s[l]), layers[l].Value.View, y.Value.View, y.Length);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            var dots = new double[count];
            using var dot = new Tensor(x0.Device, 1);
            long len = y.Length;
            for (int l = 0; l < count; l++)
            {
                // ⟨hₗ, dy⟩ as a 1×1 GEMM over the flattened tensors.
                k.Gemm.Forward(Transpose.N, Transpose.T, 1, 1, (int)len, 1f, layers[l].Value.View, (int)len, y.Grad.View, (int)len, 0f, dot.View, 1);
                dots[l] = dot.ToHost()[0];
                layers[l].Accumulate((dh, accumulate) =>
                {
                    if (!accumulate) k.Elementwise.Zero(dh.View);
                    k.Elementwise.Axpy((float)(g * s[l]), y.Grad.View, dh.View, len);
                });
            }
            // y = γ Σ sₗ hₗ: ∂/∂γ = Σ sₗ dotₗ; ∂/∂wⱼ = γ sⱼ (dotⱼ − Σ sₗ dotₗ).
            double mixed = 0;
            for (int l = 0; l < count; l++) mixed += s[l] * dots[l];
            if (gamma.RequiresGrad) AddHost(gamma, [(float)mixed]);
            if (weights.RequiresGrad) AddHost(weights, Enumerable.Range(0, count).Select(j => (float)(g * s[j] * (dots[j] - mixed))).ToArray());
        });
        return y;
    }

    /// <summary>
    /// Mixout(w, u, p): each element replaced by its pretrained value u with probability p, and
    /// the result rescaled so its expectation is w: u + dropout_p(w − u). The mask comes from
    /// <paramref name="key"/>; backward is dw = dropout_p(dy) with the same mask.
    /// </summary>
    public static Var Mixout(Tape tape, Var w, Tensor pretrained, float p, DropoutKey key)
    {
        if (p == 0f) return w;
        if (pretrained.Length != w.Length) throw new ArgumentException($"Mixout: the pretrained tensor for {w.Name} has {pretrained.Length} elements, the weight {w.Length}");
        var y = Output(tape, w.Device, w.RequiresGrad, w.Shape);
        var k = K(w);
        using (var diff = new Tensor(w.Device, w.Shape))
        {
            Copy(w.Value, diff);
            k.Elementwise.Axpy(-1f, pretrained.View, diff.View, w.Length);
            k.Dropout.Forward(diff.View, y.Value.View, w.Length, p, key);
        }
        k.Elementwise.Axpy(1f, pretrained.View, y.Value.View, w.Length);
        tape.Record(() =>
        {
            if (y.Grad is null) return;
            using var dw = new Tensor(w.Device, w.Shape);
            k.Dropout.Backward(y.Grad.View, dw.View, w.Length, p, key);
            w.AddGrad(dw);
        });
        return y;
    }

    /// <summary>Mean of (prediction − target)² over predictions [N] or [N, 1] (HF's MSELoss for regression).</summary>
    public static Loss MeanSquaredError(Tape tape, Var predictions, float[] targets)
    {
        if (predictions.Length != targets.Length) throw new ArgumentException($"{targets.Length} targets for {predictions.Length} predictions");
        var pred = predictions.Value.ToHost();
        int n = pred.Length;
        double sum = 0;
        for (int i = 0; i < n; i++) sum += (pred[i] - (double)targets[i]) * (pred[i] - (double)targets[i]);
        var loss = tape.Own(new Loss(Tensor.FromHost(predictions.Device, [(float)(sum / Math.Max(n, 1)), n], 2)));
        tape.Record(() =>
        {
            if (n == 0) return;
            var d = new float[n];
            for (int i = 0; i < n; i++) d[i] = (float)(2.0 * (pred[i] - (double)targets[i]) / n * loss.Weight);
            AddHost(predictions, d);
        });
        return loss;
    }

    /// <summary>
    /// SMART's smoothness term between perturbed outputs and fixed clean ones, averaged over rows:
    /// for classification logits [N, C] the symmetric KL, KL(p‖q) + KL(q‖p) with p = softmax(clean),
    /// q = softmax(perturbed); for regression (C = 1) the squared difference. The clean side is a
    /// constant (no gradient), as in SMART's and MT-DNN's adversarial training.
    /// </summary>
    public static Loss SymmetricKl(Tape tape, Var perturbed, float[] clean)
    {
        int c = Cols(perturbed), n = Rows(perturbed);
        if (clean.Length != perturbed.Length) throw new ArgumentException($"SymmetricKl: {clean.Length} clean values for {perturbed.Length} perturbed");
        var z = perturbed.Value.ToHost();
        var grad = new double[z.Length];
        double total = 0;
        for (int r = 0; r < n; r++)
        {
            int o = r * c;
            if (c == 1)
            {
                double d = z[o] - clean[o];
                total += d * d;
                grad[o] = 2 * d / n;
                continue;
            }
            var p = Softmax(clean, o, c);
            var q = Softmax(z, o, c);
            double kq = 0; // Σ q (log q − log p)
            for (int j = 0; j < c; j++) kq += q[j] * (Math.Log(q[j]) - Math.Log(p[j]));
            for (int j = 0; j < c; j++)
            {
                double lr = Math.Log(q[j]) - Math.Log(p[j]);
                total += (p[j] - q[j]) * -lr;
                // ∂KL(p‖q)/∂z = q − p;  ∂KL(q‖p)/∂z = q ⊙ (log q − log p) − q·KL(q‖p).
                grad[o + j] = ((q[j] - p[j]) + q[j] * lr - q[j] * kq) / n;
            }
        }
        var loss = tape.Own(new Loss(Tensor.FromHost(perturbed.Device, [(float)(total / Math.Max(n, 1)), n], 2)));
        tape.Record(() => AddHost(perturbed, grad.Select(g => (float)(g * loss.Weight)).ToArray()));
        return loss;
    }

    private static double[] Softmax(float[] z, int offset, int c)
    {
        double max = double.NegativeInfinity;
        for (int j = 0; j < c; j++) max = Math.Max(max, z[offset + j]);
        var e = new double[c];
        double sum = 0;
        for (int j = 0; j < c; j++) sum += e[j] = Math.Exp(z[offset + j] - max);
        // Clamped away from 0 so the logs stay finite when a probability underflows.
        for (int j = 0; j < c; j++) e[j] = Math.Max(e[j] / sum, 1e-30);
        return e;
    }

    private static void Copy(Tensor from, Tensor to) =>
        ((ArrayView1D<float, Stride1D.Dense>)from.View).CopyTo(from.Device.Accelerator.DefaultStream, (ArrayView1D<float, Stride1D.Dense>)to.View);

    /// <summary>Adds a host gradient to a Var's gradient.</summary>
    private static void AddHost(Var v, float[] grad)
    {
        if (!v.RequiresGrad) return;
        using var t = Tensor.FromHost(v.Device, grad, v.Shape);
        v.AddGrad(t);
    }
}
