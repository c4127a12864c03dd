// Row and element-wise ops on ILGPU's CPU accelerator as host code over the accelerator's own
// buffers, as HostGemm and HostAttention do for the heavy ops. The emulator pays for every
// ArrayView access, every grid-index read and every group barrier (a LayerNorm over 2,048 rows of
// 128 took 22 ms there, a tiny model's whole training step was half emulator overhead); these
// loops do the same math directly.
//
// Same contracts and formulas as the kernels they stand in for (LayerNorm.cs, Activation.cs,
// Bias.cs, CrossEntropy.cs, Dropout.cs, AdamW.cs): the per-element math is shared (IActivation,
// Philox, Keeps), and sums that cross rows use the kernels' fixed chunks (32 rows, then the
// chunks in order), so results do not depend on how the work is split over cores.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

internal static unsafe class HostRows
{
    /// <summary>Below this many elements an op runs on the calling thread: a parallel loop costs more.</summary>
    private const long SerialBelow = 1 << 15;

    /// <summary>body(start, end) over [0, count) in one contiguous block per core (or inline when small).</summary>
    internal static void Blocks(int count, long work, Action<int, int> body)
    {
        int parts = work < SerialBelow ? 1 : Math.Min(count, Environment.ProcessorCount);
        if (parts <= 1)
        {
            if (count > 0) body(0, count);
            return;
        }
        HostParallel.For(0, parts, p => body((int)((long)count * p / parts), (int)((long)count * (p + 1) / parts)));
    }

    /// <summary>The view's first element (null for an empty view, which no loop then reads).</summary>
    private static float* P(ArrayView<float> v) => v.IsValid && v.Length > 0 ? (float*)v.LoadEffectiveAddressAsPtr() : null;
    private static int* P(ArrayView<int> v) => v.IsValid && v.Length > 0 ? (int*)v.LoadEffectiveAddressAsPtr() : null;

    // ---- Embeddings (Embeddings.cs) ----

    /// <summary>out[t] = word[ids[t]] + position[positionIds[t]] + token_type[types[t]]; a NaN row for an id outside its table, as the kernel.</summary>
    public static void EmbeddingsForward(ArrayView<int> ids, ArrayView<int> positionIds, ArrayView<int> typeIds, ArrayView<float> word, ArrayView<float> position,
        ArrayView<float> tokenType, ArrayView<float> output, EmbeddingShape s)
    {
        nint pi = (nint)P(ids), pq = (nint)P(positionIds), pt = (nint)P(typeIds), pw = (nint)P(word), pp = (nint)P(position), pty = (nint)P(tokenType), po = (nint)P(output);
        Blocks(s.Tokens, (long)s.Tokens * s.Hidden, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            int h = s.Hidden;
            for (int t = a; t < b; t++)
            {
                int id = ((int*)pi)[t], type = ((int*)pt)[t], p = ((int*)pq)[t];
                float* dst = (float*)po + (long)t * h;
                if ((uint)id >= (uint)s.VocabSize || (uint)type >= (uint)s.TypeVocabSize || (uint)p >= (uint)s.MaxPositions)
                {
                    new Span<float>(dst, h).Fill(float.NaN);
                    continue;
                }
                Add3(dst, (float*)pw + (long)id * h, (float*)pp + (long)p * h, (float*)pty + (long)type * h, h);
            }
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Add3(float* dst, float* x, float* y, float* z, int n)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; j + Vector512<float>.Count <= n; j += Vector512<float>.Count)
                (Vector512.Load(x + j) + Vector512.Load(y + j) + Vector512.Load(z + j)).Store(dst + j);
        for (; j < n; j++) dst[j] = x[j] + y[j] + z[j];
    }

    /// <summary>output[r] = table[rows[r]] (rows checked by the caller).</summary>
    public static void Gather(ArrayView<float> table, ReadOnlySpan<int> rows, ArrayView<float> output, int hidden)
    {
        float* src = P(table), dst = P(output);
        for (int r = 0; r < rows.Length; r++)
            new ReadOnlySpan<float>(src + (long)rows[r] * hidden, hidden).CopyTo(new Span<float>(dst + (long)r * hidden, hidden));
    }

    /// <summary>table[row] += the sum of its tokens' dOut rows in ascending token order (the index of EmbeddingKernels.BuildIndex), as the kernel.</summary>
    public static void ScatterAdd(ArrayView<float> dOut, int[] index, ArrayView<float> table, int hidden)
    {
        int distinct = index[0];
        int offsetsAt = 1, rowsAt = offsetsAt + distinct + 1, orderAt = rowsAt + distinct;
        nint pd = (nint)P(dOut), ptab = (nint)P(table);
        Blocks(distinct, (long)(index.Length - orderAt) * hidden, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            var sum = new float[hidden];
            fixed (float* acc = sum)
                for (int u = a; u < b; u++)
                {
                    new Span<float>(acc, hidden).Clear();
                    for (int q = index[offsetsAt + u]; q < index[offsetsAt + u + 1]; q++)
                        AddTo(acc, (float*)pd + (long)index[orderAt + q] * hidden, hidden);
                    float* row = (float*)ptab + (long)index[rowsAt + u] * hidden;
                    AddTo(row, acc, hidden);
                }
        });
    }

    /// <summary>dst[j] += x[j].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AddTo(float* dst, float* x, int n)
    {
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; j + Vector512<float>.Count <= n; j += Vector512<float>.Count)
                (Vector512.Load(dst + j) + Vector512.Load(x + j)).Store(dst + j);
        for (; j < n; j++) dst[j] += x[j];
    }

    // ---- LayerNorm ----

    public static void LayerNormForward(ArrayView<float> x, ArrayView<float> r, bool hasR, ArrayView<float> gamma, ArrayView<float> beta,
        ArrayView<float> y, ArrayView<float> mean, ArrayView<float> rstd, int rows, int cols, float eps)
    {
        nint px = (nint)P(x), pr = hasR ? (nint)P(r) : 0, pg = (nint)P(gamma), pb = (nint)P(beta), py = (nint)P(y), pm = (nint)P(mean), ps = (nint)P(rstd);
        Blocks(rows, (long)rows * cols, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            for (int row = a; row < b; row++)
                LayerNormRow(row, (float*)px, (float*)pr, (float*)pg, (float*)pb, (float*)py, (float*)pm, (float*)ps, cols, eps);
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void LayerNormRow(int row, float* x, float* r, float* gamma, float* beta, float* y, float* mean, float* rstd, int cols, float eps)
    {
        long off = (long)row * cols;
        float* xr = x + off, rr = r is null ? null : r + off, yr = y + off;
        // z = x + r; mean and variance about a shift (the first element) so large offsets do not cancel; 16 lanes, then the tail.
        int vectorEnd = Vector512.IsHardwareAccelerated ? cols & ~15 : 0;
        float shift = rr is null ? xr[0] : xr[0] + rr[0];
        var vShift = Vector512.Create(shift);
        var vs = Vector512<float>.Zero;
        for (int j = 0; j < vectorEnd; j += 16) vs += Z(xr, rr, j) - vShift;
        float s = Vector512.Sum(vs);
        for (int j = vectorEnd; j < cols; j++) s += (rr is null ? xr[j] : xr[j] + rr[j]) - shift;
        float mu = shift + s / cols;
        var vMu = Vector512.Create(mu);
        var vq = Vector512<float>.Zero;
        for (int j = 0; j < vectorEnd; j += 16)
        {
            var d = Z(xr, rr, j) - vMu;
            vq = Vector512.FusedMultiplyAdd(d, d, vq);
        }
        float q = Vector512.Sum(vq);
        for (int j = vectorEnd; j < cols; j++)
        {
            float d = (rr is null ? xr[j] : xr[j] + rr[j]) - mu;
            q += d * d;
        }
        float rs = 1f / MathF.Sqrt(q / cols + eps);
        var vRs = Vector512.Create(rs);
        for (int j = 0; j < vectorEnd; j += 16)
            Vector512.FusedMultiplyAdd((Z(xr, rr, j) - vMu) * vRs, Vector512.Load(gamma + j), Vector512.Load(beta + j)).Store(yr + j);
        for (int j = vectorEnd; j < cols; j++)
            yr[j] = ((rr is null ? xr[j] : xr[j] + rr[j]) - mu) * rs * gamma[j] + beta[j];
        mean[row] = mu;
        rstd[row] = rs;
    }

    /// <summary>x[j..j+16] (+ r[j..j+16] when there is a residual).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> Z(float* x, float* r, int j) => r is null ? Vector512.Load(x + j) : Vector512.Load(x + j) + Vector512.Load(r + j);

    public static void LayerNormBackward(ArrayView<float> x, ArrayView<float> r, bool hasR, ArrayView<float> gamma, ArrayView<float> mean,
        ArrayView<float> rstd, ArrayView<float> dy, ArrayView<float> dx, int rows, int cols)
    {
        nint px = (nint)P(x), pr = hasR ? (nint)P(r) : 0, pg = (nint)P(gamma), pm = (nint)P(mean), ps = (nint)P(rstd), pdy = (nint)P(dy), pdx = (nint)P(dx);
        Blocks(rows, (long)rows * cols, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            for (int row = a; row < b; row++)
                LayerNormBackwardRow(row, (float*)px, (float*)pr, (float*)pg, (float*)pm, (float*)ps, (float*)pdy, (float*)pdx, cols);
        });
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void LayerNormBackwardRow(int row, float* x, float* r, float* gamma, float* mean, float* rstd, float* dy, float* dx, int cols)
    {
        long off = (long)row * cols;
        float* xr = x + off, rr = r is null ? null : r + off, dyr = dy + off, dxr = dx + off;
        float mu = mean[row], rs = rstd[row];
        int vectorEnd = Vector512.IsHardwareAccelerated ? cols & ~15 : 0;
        Vector512<float> vMu = Vector512.Create(mu), vRs = Vector512.Create(rs), vG = default, vGX = default;
        for (int j = 0; j < vectorEnd; j += 16)
        {
            var xhat = (Z(xr, rr, j) - vMu) * vRs;
            var g = Vector512.Load(dyr + j) * Vector512.Load(gamma + j);
            vG += g;
            vGX = Vector512.FusedMultiplyAdd(g, xhat, vGX);
        }
        float sumG = Vector512.Sum(vG), sumGX = Vector512.Sum(vGX);
        for (int j = vectorEnd; j < cols; j++)
        {
            float xhat = ((rr is null ? xr[j] : xr[j] + rr[j]) - mu) * rs;
            float g = dyr[j] * gamma[j];
            sumG += g;
            sumGX += g * xhat;
        }
        float meanG = sumG / cols, meanGX = sumGX / cols;
        Vector512<float> vMeanG = Vector512.Create(meanG), vMeanGX = Vector512.Create(meanGX);
        for (int j = 0; j < vectorEnd; j += 16)
        {
            var xhat = (Z(xr, rr, j) - vMu) * vRs;
            (vRs * (Vector512.Load(dyr + j) * Vector512.Load(gamma + j) - vMeanG - xhat * vMeanGX)).Store(dxr + j);
        }
        for (int j = vectorEnd; j < cols; j++)
        {
            float xhat = ((rr is null ? xr[j] : xr[j] + rr[j]) - mu) * rs;
            dxr[j] = rs * (dyr[j] * gamma[j] - meanG - xhat * meanGX);
        }
    }

    /// <summary>Per 32-row chunk: Σ dy·x̂ into plane 0 and Σ dy into plane 1 of partial ([2, chunks, cols]).</summary>
    public static void LayerNormParamPartials(ArrayView<float> x, ArrayView<float> r, bool hasR, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dy, ArrayView<float> partial, int rows, int cols)
    {
        int chunks = (rows + BiasKernels.RowsPerChunk - 1) / BiasKernels.RowsPerChunk;
        long plane = (long)chunks * cols;
        nint px = (nint)P(x), pr = hasR ? (nint)P(r) : 0, pm = (nint)P(mean), ps = (nint)P(rstd), pdy = (nint)P(dy), pp = (nint)P(partial);
        Blocks(chunks, (long)rows * cols, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            float* xs = (float*)px, rs = (float*)pr, dys = (float*)pdy, part = (float*)pp;
            for (int c = a; c < b; c++)
            {
                float* sg = part + (long)c * cols, sb = part + plane + (long)c * cols;
                new Span<float>(sg, cols).Clear();
                new Span<float>(sb, cols).Clear();
                int end = Math.Min(rows, (c + 1) * BiasKernels.RowsPerChunk);
                for (int row = c * BiasKernels.RowsPerChunk; row < end; row++)
                {
                    long off = (long)row * cols;
                    float mu = ((float*)pm)[row], rsd = ((float*)ps)[row];
                    for (int j = 0; j < cols; j++)
                    {
                        float v = rs is null ? xs[off + j] : xs[off + j] + rs[off + j];
                        float d = dys[off + j];
                        sg[j] += d * ((v - mu) * rsd);
                        sb[j] += d;
                    }
                }
            }
        });
    }

    // ---- Bias column sums ----

    /// <summary>partial[c, j] = Σ over the rows of chunk c of x[r, j].</summary>
    public static void ChunkSums(ArrayView<float> x, ArrayView<float> partial, int rows, int cols)
    {
        int chunks = (rows + BiasKernels.RowsPerChunk - 1) / BiasKernels.RowsPerChunk;
        nint px = (nint)P(x), pp = (nint)P(partial);
        Blocks(chunks, (long)rows * cols, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            for (int c = a; c < b; c++)
            {
                float* s = (float*)pp + (long)c * cols;
                new Span<float>(s, cols).Clear();
                int end = Math.Min(rows, (c + 1) * BiasKernels.RowsPerChunk);
                for (int row = c * BiasKernels.RowsPerChunk; row < end; row++)
                {
                    float* xr = (float*)px + (long)row * cols;
                    for (int j = 0; j < cols; j++) s[j] += xr[j];
                }
            }
        });
    }

    /// <summary>result[j] (+)= Σ_c partial[c, j], c in order.</summary>
    public static void ReduceChunks(ArrayView<float> partial, ArrayView<float> result, int chunks, int cols, bool accumulate)
    {
        float* p = P(partial), res = P(result);
        for (int j = 0; j < cols; j++)
        {
            float s = 0f;
            for (int c = 0; c < chunks; c++) s += p[(long)c * cols + j];
            res[j] = accumulate ? res[j] + s : s;
        }
    }

    // ---- Activations ----

    public static void ActivationForward<TAct>(ArrayView<float> x, ArrayView<float> bias, bool hasBias, ArrayView<float> y, int rows, int cols)
        where TAct : struct, IActivation
    {
        nint px = (nint)P(x), pb = hasBias ? (nint)P(bias) : 0, py = (nint)P(y);
        Blocks(rows, (long)rows * cols * 8, (a, b) => ActivationRows<TAct>((float*)px, (float*)pb, null, (float*)py, a, b, cols));
    }

    public static void ActivationBackward<TAct>(ArrayView<float> x, ArrayView<float> bias, bool hasBias, ArrayView<float> dy, ArrayView<float> dx, int rows, int cols)
        where TAct : struct, IActivation
    {
        nint px = (nint)P(x), pb = hasBias ? (nint)P(bias) : 0, pdy = (nint)P(dy), pdx = (nint)P(dx);
        Blocks(rows, (long)rows * cols * 8, (a, b) => ActivationRows<TAct>((float*)px, (float*)pb, (float*)pdy, (float*)pdx, a, b, cols));
    }

    /// <summary>Forward (dy null): out = act(x + bias). Backward: out = dy·act'(x + bias).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ActivationRows<TAct>(float* x, float* bias, float* dy, float* output, int a, int b, int cols)
        where TAct : struct, IActivation
    {
        bool simd = typeof(TAct) == typeof(GeluErf) && Vector512.IsHardwareAccelerated;
        for (long i = (long)a * cols, end = (long)b * cols; i < end; i += cols)
        {
            int j = 0;
            if (simd)
                for (; j + Vector512<float>.Count <= cols; j += Vector512<float>.Count)
                {
                    var v = Vector512.Load(x + i + j);
                    if (bias is not null) v += Vector512.Load(bias + j);
                    if (dy is null)
                        GeluErf512(v).Store(output + i + j);
                    else
                    {
                        GeluErf512(v, out var derivative);
                        (Vector512.Load(dy + i + j) * derivative).Store(output + i + j);
                    }
                }
            for (; j < cols; j++)
            {
                float v = bias is null ? x[i + j] : x[i + j] + bias[j];
                float value = default(TAct).Apply(v, out float derivative);
                output[i + j] = dy is null ? value : dy[i + j] * derivative;
            }
        }
    }

    /// <summary>
    /// <see cref="GeluErf"/> on 16 lanes with its derivative: Φ(x) from Numerical Recipes' erfc fit (KernelMath.Erfc's
    /// coefficients), erfc(z) = t·e^(P(t) − z²), z = |x|/√2, and φ(x) = e^(−x²/2)/√(2π), with HostMath.Exp.
    /// </summary>
    /// <remarks>
    /// KernelMath splits the square (e^(−x²/2) from two exponentials) to keep relative accuracy far in the tails; here
    /// the argument of each exponential is rounded once, a relative error of |x²/2|·2⁻²⁴ in a value already below
    /// e^(−x²/2): at most ~1e-8 of x·Φ(x) absolute (largest near x = −2), a third of the arithmetic saved.
    /// The dense-grid test checks it against double.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> GeluErf512(Vector512<float> x, out Vector512<float> derivative)
    {
        var t = Vector512<float>.One / (Vector512<float>.One + (0.5f * 0.70710678118654752f) * Vector512.Abs(x));
        var gauss = HostMath.Exp(-0.5f * (x * x)); // e^(−x²/2)
        var half = 0.5f * (t * gauss * HostMath.Exp(ErfcPoly(t)));
        var cdf = Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), Vector512<float>.One - half, half);
        derivative = cdf + x * (0.39894228040143268f * gauss);
        return x * cdf;
    }

    /// <summary>x·Φ(x) alone (the forward), as the function above computes Φ but with one exponential: t·e^(P(t) − x²/2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    internal static Vector512<float> GeluErf512(Vector512<float> x)
    {
        var t = Vector512<float>.One / (Vector512<float>.One + (0.5f * 0.70710678118654752f) * Vector512.Abs(x));
        var half = 0.5f * (t * HostMath.Exp(ErfcPoly(t) - 0.5f * (x * x)));
        return x * Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(x, Vector512<float>.Zero), Vector512<float>.One - half, half);
    }

    /// <summary>The erfc fit's polynomial P(t) on 16 lanes (KernelMath.Erfc's coefficients, the same Horner order, fused multiply-adds).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> ErfcPoly(Vector512<float> t)
    {
        var poly = Vector512.Create(KernelMath.ErfcC9);
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC8));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC7));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC6));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC5));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC4));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC3));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC2));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC1));
        poly = Vector512.FusedMultiplyAdd(poly, t, Vector512.Create(KernelMath.ErfcC0));
        return poly;
    }

    // ---- Cross-entropy ----

    /// <summary>Per row: lse, the row loss and whether it counts; then loss = [mean, count] (rows in order).</summary>
    public static void CrossEntropyForward(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss,
        ArrayView<float> perRow, int rows, int vocab)
    {
        nint pl = (nint)P(logits), plab = (nint)P(labels), plse = (nint)P(lse), pr = (nint)P(perRow);
        Blocks(rows, (long)rows * vocab * 4, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            float* lg = (float*)pl, ls = (float*)plse, per = (float*)pr;
            int* lab = (int*)plab;
            for (int row = a; row < b; row++)
            {
                float* z = lg + (long)row * vocab;
                float l = LogSumExp(z, vocab);
                ls[row] = l;
                int label = lab[row];
                bool counted = label != CrossEntropyKernels.IgnoreIndex;
                per[row] = !counted ? 0f : label >= 0 && label < vocab ? l - z[label] : float.NaN;
                per[rows + row] = counted ? 1f : 0f;
            }
        });
        float* pp = (float*)pr, result = P(loss);
        float sum = 0f, count = 0f;
        for (int i = 0; i < rows; i++)
        {
            sum += pp[i];
            count += pp[rows + i];
        }
        result[0] = count > 0f ? sum / count : 0f;
        result[1] = count;
    }

    /// <summary>max + log Σ exp(z − max) over one row (16 lanes at a time where the hardware has them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float LogSumExp(float* z, int n)
    {
        float m = float.NegativeInfinity;
        int j = 0;
        if (Vector512.IsHardwareAccelerated && n >= Vector512<float>.Count)
        {
            var vm = Vector512.Create(float.NegativeInfinity);
            for (; j + Vector512<float>.Count <= n; j += Vector512<float>.Count) vm = Vector512.Max(vm, Vector512.Load(z + j));
            m = HostMath.MaxLanes(vm);
        }
        for (; j < n; j++) m = MathF.Max(m, z[j]);
        float s = 0f;
        j = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vs = Vector512<float>.Zero;
            var vmax = Vector512.Create(m);
            for (; j + Vector512<float>.Count <= n; j += Vector512<float>.Count) vs += HostMath.Exp(Vector512.Load(z + j) - vmax);
            s = Vector512.Sum(vs);
        }
        for (; j < n; j++) s += MathF.Exp(z[j] - m);
        return m + MathF.Log(s);
    }

    public static void CrossEntropyBackward(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss,
        ArrayView<float> dlogits, int rows, int vocab, float dLoss)
    {
        float count = P(loss)[1];
        float scale = count > 0f ? dLoss / count : 0f;
        nint pl = (nint)P(logits), plab = (nint)P(labels), plse = (nint)P(lse), pd = (nint)P(dlogits);
        Blocks(rows, (long)rows * vocab * 4, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            for (int row = a; row < b; row++)
            {
                float* z = (float*)pl + (long)row * vocab, d = (float*)pd + (long)row * vocab;
                int label = ((int*)plab)[row];
                if (label == CrossEntropyKernels.IgnoreIndex)
                {
                    new Span<float>(d, vocab).Clear();
                    continue;
                }
                float l = ((float*)plse)[row];
                float zLabel = (uint)label < (uint)vocab ? z[label] : 0f; // read before d, which may be z, is written
                int j = 0;
                if (Vector512.IsHardwareAccelerated)
                    for (; j + Vector512<float>.Count <= vocab; j += Vector512<float>.Count)
                        (HostMath.Exp(Vector512.Load(z + j) - Vector512.Create(l)) * scale).Store(d + j);
                for (; j < vocab; j++) d[j] = MathF.Exp(z[j] - l) * scale;
                if ((uint)label < (uint)vocab) d[label] = (MathF.Exp(zLabel - l) - 1f) * scale;
            }
        });
    }

    // ---- Dropout ----

    public static void Dropout(ArrayView<float> src, ArrayView<float> dst, long n, float p, DropoutKey key)
    {
        float scale = 1f / (1f - p);
        long groups = (n + 3) / 4;
        nint ps = (nint)P(src), pd = (nint)P(dst);
        int blocks = (int)Math.Min(groups, 1 << 20);
        Blocks(blocks, n * 8, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            float* s = (float*)ps, d = (float*)pd;
            long g0 = groups * a / blocks, g1 = groups * b / blocks, gi = g0;
            if (Avx512F.IsSupported)
                for (; gi + 16 <= g1 && gi * 4 + 64 <= n; gi += 16)
                {
                    Philox.Words64(key.Seed, key.Step, key.TensorId, gi, out var w0, out var w1, out var w2, out var w3);
                    float* x = s + gi * 4, y = d + gi * 4;
                    Vector512.Store(Dropped(w0, Vector512.Load(x), p, scale), y);
                    Vector512.Store(Dropped(w1, Vector512.Load(x + 16), p, scale), y + 16);
                    Vector512.Store(Dropped(w2, Vector512.Load(x + 32), p, scale), y + 32);
                    Vector512.Store(Dropped(w3, Vector512.Load(x + 48), p, scale), y + 48);
                }
            for (; gi < g1; gi++)
            {
                Philox.Bits(key.Seed, key.Step, key.TensorId, gi, out uint r0, out uint r1, out uint r2, out uint r3);
                long i = gi * 4;
                d[i] = DropoutKernels.Keeps(r0, p) ? s[i] * scale : 0f;
                if (i + 1 < n) d[i + 1] = DropoutKernels.Keeps(r1, p) ? s[i + 1] * scale : 0f;
                if (i + 2 < n) d[i + 2] = DropoutKernels.Keeps(r2, p) ? s[i + 2] * scale : 0f;
                if (i + 3 < n) d[i + 3] = DropoutKernels.Keeps(r3, p) ? s[i + 3] * scale : 0f;
            }
        });
    }

    /// <summary><see cref="DropoutKernels.Keeps"/> of sixteen words: all ones in the lanes that survive.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    internal static Vector512<float> Keeps(Vector512<uint> words, float p) =>
        Vector512.GreaterThanOrEqual(Philox.Uniform(words), Vector512.Create(p));

    /// <summary>Sixteen elements of dropout: x·scale where the word keeps the element, else exactly 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> Dropped(Vector512<uint> words, Vector512<float> x, float p, float scale) =>
        Vector512.ConditionalSelect(Keeps(words, p), x * scale, Vector512<float>.Zero);

    // ---- AdamW ----

    /// <summary>norm[0] ← √(Σ over the tensors, in order, of Σ g²), written where the update reads it.</summary>
    public static void GlobalNorm(IReadOnlyList<ArrayView<float>> grads, ArrayView<float> norm)
    {
        float sum = 0f;
        foreach (var g in grads) sum += SumSquares(g, g.Length);
        P(norm)[0] = MathF.Sqrt(sum);
    }

    /// <summary>Σ g² of one tensor in the kernel's 32 fixed partials (element i goes to partial i mod 32), summed in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float SumSquares(ArrayView<float> x, long n)
    {
        float* p = P(x);
        var partial = stackalloc float[AdamWKernels.PartialsPerTensor];
        for (int t = 0; t < AdamWKernels.PartialsPerTensor; t++) partial[t] = 0f;
        long i = 0;
        for (; i + AdamWKernels.PartialsPerTensor <= n; i += AdamWKernels.PartialsPerTensor)
            for (int t = 0; t < AdamWKernels.PartialsPerTensor; t++) partial[t] += p[i + t] * p[i + t];
        for (int t = 0; i < n; i++, t++) partial[t] += p[i] * p[i];
        float s = 0f;
        for (int t = 0; t < AdamWKernels.PartialsPerTensor; t++) s += partial[t];
        return s;
    }

    public static void AdamWUpdate(ArrayView<float> param, ArrayView<float> grad, ArrayView<float> m, ArrayView<float> v, ArrayView<float> norm, long n, AdamWArgs a)
    {
        float clip = a.Clip(a.MaxNorm > 0f ? P(norm)[0] : 0f); // read in place: no copy per tensor and step
        nint pp = (nint)P(param), pg = (nint)P(grad), pm = (nint)P(m), pv = (nint)P(v);
        int blocks = (int)Math.Min(n, 1 << 20);
        Blocks(blocks, n * 4, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (b0, b1) =>
        {
            float* ps = (float*)pp, gs = (float*)pg, ms = (float*)pm, vs = (float*)pv;
            long i = n * b0 / blocks, end = n * b1 / blocks;
            if (Vector512.IsHardwareAccelerated)
            {
                // AdamWArgs.Step on 16 lanes, operation for operation (no FMA), so every bit is the scalar's.
                var c = Vector512.Create(clip);
                Vector512<float> beta1 = Vector512.Create(a.Beta1), beta2 = Vector512.Create(a.Beta2);
                Vector512<float> oneMinusBeta1 = Vector512.Create(1f - a.Beta1), oneMinusBeta2 = Vector512.Create(1f - a.Beta2);
                Vector512<float> decay = Vector512.Create(1f - a.Lr * a.WeightDecay), rate = Vector512.Create(a.Lr / a.BiasCorrection1);
                Vector512<float> sqrtCorrection = Vector512.Create(a.SqrtBiasCorrection2), eps = Vector512.Create(a.Eps);
                for (; i + 16 <= end; i += 16)
                {
                    var g = Vector512.Load(gs + i) * c;
                    var mNew = beta1 * Vector512.Load(ms + i) + oneMinusBeta1 * g;
                    var vNew = beta2 * Vector512.Load(vs + i) + oneMinusBeta2 * g * g;
                    var update = rate * mNew / (Vector512.Sqrt(vNew) / sqrtCorrection + eps);
                    (Vector512.Load(ps + i) * decay - update).Store(ps + i);
                    mNew.Store(ms + i);
                    vNew.Store(vs + i);
                }
            }
            for (; i < end; i++)
            {
                ps[i] = a.Step(ps[i], gs[i] * clip, ms[i], vs[i], out float mi, out float vi);
                ms[i] = mi;
                vs[i] = vi;
            }
        });
    }
}
