// Post-training int8 inference (Q8BERT, Zafrir et al. 2019; BERTology §6.2): symmetric linear
// quantization, q = clamp(⌊x/s + ½⌋, −127, 127), with one scale per output channel for weights and
// one per tensor for activations (calibrated offline). A Linear layer then runs as
//   acc[m, n] = Σ_k qx[m, k]·qw[n, k]          int8 × int8, exact int32 accumulation
//   y[m, n]   = acc[m, n]·(s_x·s_w[n]) (+ bias, activation by the float kernels)
// −128 is never produced, so |q| ≤ 127 and |acc| ≤ 127²·K: exact in int32 for K < 133,000.
// The rounding is written out (⌊v + ½⌋, halves away from −∞) so a host reference reproduces it bit
// for bit; the multiply by 1/s is the same float operation on every backend.
//
// Layouts: qx [M, K] and qw [N, K] row-major (nn.Linear's weight [out, in], so C = A·Bᵀ), acc [M, N].
// GEMM geometry: each thread owns a 4×4 tile of C in registers and walks K once (grid-stride over
// tiles); no shared memory. On the CPU accelerator a whole Linear layer runs as one host call where
// the CPU has VNNI or AVX-512BW (HostInt8Linear.cs: quantize, int8 GEMM, rescale, bias, GELU), else the GEMM
// alone as host dot products (HostInt8Gemm: sbyte → short → int widening), as float GEMM does.
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

/// <summary>Arguments of the int8 kernels (plain struct: kernel parameter).</summary>
public struct Int8Args
{
    public int M, N, K;
    public float InvScale, InputScale;
    public long Count;
}

/// <summary>What a batch does to an input range: start it, update its EMA, or give a scale of its own and leave it.</summary>
public enum RangeMode { Start, Update, Batch }

/// <summary>The range kernel's arguments: partial maxima, EMA decay, <see cref="RangeMode"/>.</summary>
public struct RangeArgs
{
    public int Count, Mode;
    public float Decay;
}

/// <summary>Fake quantization's launch: elements, and how many share one scale (a row).</summary>
public struct FakeQuantArgs
{
    public long Count, Cols;
}

public sealed class QuantizationKernels
{
    public const int Tile = 4;

    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<sbyte>, Int8Args>> quantize;
    private readonly Lazy<Action<KernelConfig, ArrayView<sbyte>, ArrayView<sbyte>, ArrayView<int>, Int8Args>> gemm;
    private readonly Lazy<Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, Int8Args>> dequantize;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, FakeQuantArgs>> fakeQuantize;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, FakeQuantArgs>> fakeQuantizeBackward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int>> rowScales;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, long>> maxAbsPartials;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, RangeArgs>> range;

    internal QuantizationKernels(KernelSet set)
    {
        this.set = set;
        quantize = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<sbyte>, Int8Args>(QuantizeKernel));
        gemm = new(() => set.LoadStreamKernel<ArrayView<sbyte>, ArrayView<sbyte>, ArrayView<int>, Int8Args>(Int8GemmKernel));
        dequantize = new(() => set.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<float>, Int8Args>(DequantizeKernel));
        fakeQuantize = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, FakeQuantArgs>(FakeQuantizeKernel));
        fakeQuantizeBackward = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, FakeQuantArgs>(FakeQuantizeBackwardKernel));
        bool tree = set.RowReduction == RowReduction.Tree;
        rowScales = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(RowScalesKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(RowScalesKernel<WarpReduce>));
        maxAbsPartials = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long>(MaxAbsPartialsKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long>(MaxAbsPartialsKernel<WarpReduce>));
        range = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, RangeArgs>(RangeKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, RangeArgs>(RangeKernel<WarpReduce>));
    }

    /// <summary>When true on the CPU accelerator, run the ILGPU kernel instead of host SIMD code (tests).</summary>
    public bool ForceDeviceKernel { get; set; }

    /// <summary>The host definition of one quantized value (what the kernel computes, bit for bit).</summary>
    public static sbyte QuantizeValue(float x, float invScale)
    {
        float v = MathF.Floor(x * invScale + 0.5f);
        return (sbyte)(v > 127f ? 127 : v < -127f ? -127 : (int)v);
    }

    /// <summary>q[i] = clamp(⌊x[i]/scale + ½⌋, −127, 127) over n elements; scale &gt; 0.</summary>
    public void Quantize(ArrayView<float> x, ArrayView<sbyte> q, long n, float scale)
    {
        if (!(scale > 0f) || !float.IsFinite(scale)) throw new ArgumentOutOfRangeException(nameof(scale), $"quantization scale must be positive and finite, got {scale}");
        Check.Vector("x", x, n);
        Check.Vector("q", q, n);
        if (n > 0) quantize.Value(set.GridStride(n), x, q, new Int8Args { InvScale = 1f / scale, Count = n });
    }

    /// <summary>
    /// Fake quantization (quantization-aware training, Q8BERT): y[i] = q·s with s = scales[i / cols]
    /// and q = clamp(⌊x[i]/s + ½⌋, −127, 127) exactly as <see cref="QuantizeValue"/> rounds, so y is
    /// what the int8 path computes with. cols = n for one scale over the tensor, the row length for
    /// one per row (output channel). Every scale must be positive and finite (the caller checks).
    /// </summary>
    public void FakeQuantize(ArrayView<float> x, ArrayView<float> scales, ArrayView<float> y, long n, long cols)
    {
        CheckFakeQuant(x, scales, n, cols);
        Check.Vector("y", y, n);
        if (n == 0) return;
        if (HostCodeRuns()) HostFakeQuantize(x, scales, y, default, n, cols);
        else fakeQuantize.Value(set.GridStride(n), x, scales, y, new FakeQuantArgs { Count = n, Cols = cols });
    }

    /// <summary>
    /// The straight-through estimator with clipping: dx[i] = dy[i] where x[i]'s integer code was not
    /// clamped (−127 ≤ ⌊x/s + ½⌋ ≤ 127), 0 where it was.
    /// </summary>
    public void FakeQuantizeBackward(ArrayView<float> x, ArrayView<float> scales, ArrayView<float> dy, ArrayView<float> dx, long n, long cols)
    {
        CheckFakeQuant(x, scales, n, cols);
        Check.Vector("dy", dy, n);
        Check.Vector("dx", dx, n);
        if (n == 0) return;
        if (HostCodeRuns()) HostFakeQuantize(x, scales, dx, dy, n, cols);
        else fakeQuantizeBackward.Value(set.GridStride(n), x, scales, dy, dx, new FakeQuantArgs { Count = n, Cols = cols });
    }

    /// <summary>
    /// The two fake-quantization kernels as host code on the CPU accelerator's buffers, the same
    /// float operations in the same order: forward when <paramref name="dy"/> is invalid (into y),
    /// else the straight-through backward (into y = dx). Blocks of 64K elements go to the cores.
    /// </summary>
    private static unsafe void HostFakeQuantize(ArrayView<float> x, ArrayView<float> scales, ArrayView<float> y, ArrayView<float> dy, long n, long cols)
    {
        float* px = (float*)x.LoadEffectiveAddressAsPtr(), ps = (float*)scales.LoadEffectiveAddressAsPtr(), py = (float*)y.LoadEffectiveAddressAsPtr();
        float* pdy = dy.IsValid ? (float*)dy.LoadEffectiveAddressAsPtr() : null;
        const int block = 1 << 16;
        int blocks = (int)((n + block - 1) / block);
        HostParallel.For(0, blocks, b =>
        {
            long from = (long)b * block, to = Math.Min(n, from + block);
            for (long i = from; i < to; i++)
            {
                float s = ps[i / cols];
                float v = MathF.Floor(px[i] * (1f / s) + 0.5f);
                py[i] = pdy is null ? (v > 127f ? 127f : v < -127f ? -127f : v) * s : v >= -127f && v <= 127f ? pdy[i] : 0f;
            }
        });
    }

    /// <summary>
    /// Whether fake quantization's statistics and rounding run as host code (the CPU accelerator with fat
    /// row groups, not the GPU-shaped run); if so, pending device work is finished first.
    /// </summary>
    private bool HostCodeRuns()
    {
        if (!set.UseHostRows || ForceDeviceKernel) return false;
        set.Accelerator.Synchronize();
        return true;
    }

    /// <summary>Partial maxima per input tensor (the range statistic's first pass).</summary>
    public const int RangePartials = 32;

    /// <summary>scales[r] = max_c |w[r, c]| / 127, or 1 for a row of zeros: the per-output-channel scales of a weight [rows, cols].</summary>
    public void RowScales(ArrayView<float> w, ArrayView<float> scales, int rows, int cols)
    {
        Check.Matrix("w", w, rows, cols);
        Check.Vector("scales", scales, rows);
        if (rows == 0) return;
        if (HostCodeRuns()) HostRowScales(w, scales, rows, cols);
        else rowScales.Value(set.Rows(rows), w, scales, cols);
    }

    /// <summary>
    /// The input range statistic of a tensor x of n elements, on the device: m = max |x|, then by
    /// <paramref name="mode"/> ema ← m (<see cref="RangeMode.Start"/>) or ema ← decay·ema + (1 − decay)·m
    /// (<see cref="RangeMode.Update"/>), and scale ← ema / 127; or, leaving ema alone, scale ← m / 127
    /// (<see cref="RangeMode.Batch"/>). A zero range gives scale 1.
    /// </summary>
    public unsafe void UpdateRange(ArrayView<float> x, long n, ArrayView<float> ema, ArrayView<float> scale, float decay, RangeMode mode)
    {
        Check.Vector("x", x, n);
        Check.Vector("ema", ema, 1);
        Check.Vector("scale", scale, 1);
        if (HostCodeRuns())
        {
            float* pe = (float*)ema.LoadEffectiveAddressAsPtr(), ps = (float*)scale.LoadEffectiveAddressAsPtr();
            float r = NextRange(pe[0], HostMaxAbs(x, n), decay, mode);
            if (mode != RangeMode.Batch) pe[0] = r;
            ps[0] = r > 0f ? r / 127f : 1f;
            return;
        }
        var partials = set.FloatScratch(RangePartials);
        maxAbsPartials.Value(set.Rows(RangePartials), x, partials, n);
        range.Value(set.Rows(1), partials, ema, scale, new RangeArgs { Count = RangePartials, Decay = decay, Mode = (int)mode });
    }

    /// <summary>The range after one batch whose max |x| is m (the host and the kernel share it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float NextRange(float ema, float m, float decay, RangeMode mode) =>
        mode == RangeMode.Update ? decay * ema + (1f - decay) * m : m;

    /// <summary>max |x| over n elements, in blocks of 64K on the cores.</summary>
    private static unsafe float HostMaxAbs(ArrayView<float> x, long n)
    {
        float* px = (float*)x.LoadEffectiveAddressAsPtr();
        const int block = 1 << 16;
        var partial = new float[(int)((n + block - 1) / block)];
        HostParallel.For(0, partial.Length, b =>
        {
            float m = 0f;
            for (long i = (long)b * block, end = Math.Min(n, i + block); i < end; i++) m = MathF.Max(m, MathF.Abs(px[i]));
            partial[b] = m;
        });
        return partial.Length == 0 ? 0f : partial.Max();
    }

    /// <summary>Per row of w [rows, cols]: max |w| / 127, or 1 for a row of zeros (what RowScalesKernel computes).</summary>
    private static unsafe void HostRowScales(ArrayView<float> w, ArrayView<float> scales, int rows, int cols)
    {
        float* pw = (float*)w.LoadEffectiveAddressAsPtr(), ps = (float*)scales.LoadEffectiveAddressAsPtr();
        HostParallel.For(0, rows, r =>
        {
            float m = 0f;
            float* row = pw + (long)r * cols;
            for (int c = 0; c < cols; c++) m = MathF.Max(m, MathF.Abs(row[c]));
            ps[r] = m > 0f ? m / 127f : 1f;
        });
    }

    private static void CheckFakeQuant(ArrayView<float> x, ArrayView<float> scales, long n, long cols)
    {
        if (cols < 1 || n % cols != 0) throw new ArgumentException($"fake quantization: {n} elements are not rows of {cols}");
        Check.Vector("x", x, n);
        Check.Vector("scales", scales, n / cols);
    }

    /// <summary>acc [M, N] = a [M, K] · bᵀ (b [N, K]), int8 inputs, exact int32 accumulation.</summary>
    public void Gemm(ArrayView<sbyte> a, ArrayView<sbyte> b, ArrayView<int> acc, int m, int n, int k)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentException($"invalid int8 GEMM shape {m}×{n}×{k}");
        if (k >= 133_000) throw new ArgumentException($"int8 GEMM: K = {k} could overflow the int32 accumulator (limit 133,000)");
        Check.Vector("a", a, (long)m * k);
        Check.Vector("b", b, (long)n * k);
        Check.Vector("acc", acc, (long)m * n);
        long tiles = (long)((m + Tile - 1) / Tile) * ((n + Tile - 1) / Tile);
        if (tiles > 0 && set.IsCpu && !ForceDeviceKernel)
        {
            set.Accelerator.Synchronize();
            HostInt8Gemm.Run(a, b, acc, m, n, k);
            return;
        }
        if (tiles > 0) gemm.Value(set.GridStride(tiles), a, b, acc, new Int8Args { M = m, N = n, K = k, Count = tiles });
    }

    /// <summary>
    /// Whether an int8 Linear layer runs as one host call (<see cref="LinearOnHost"/>): on the CPU
    /// accelerator of a CPU with AVX-512 VNNI, AVX-VNNI or AVX-512BW. Elsewhere it is <see cref="Quantize"/>, <see cref="Gemm"/>
    /// and <see cref="Dequantize"/>.
    /// </summary>
    public bool UseHostLinear => set.IsCpu && !ForceDeviceKernel && HostInt8Linear.Supported;

    /// <summary>
    /// The host kernel <see cref="PackForHost"/> packs for (and <see cref="LinearOnHost"/> then runs): by default the
    /// fastest this CPU has; tests set the others the CPU can run.
    /// </summary>
    public Int8HostKernel HostKernel
    {
        get => hostKernel ??= HostInt8Linear.Fastest ?? Int8HostKernel.Avx512BWPairs; // looked up (and the VNNI code mapped) on first use
        set => hostKernel = value;
    }

    private Int8HostKernel? hostKernel;

    /// <summary>Whether this CPU (and OS) can run <paramref name="kernel"/>.</summary>
    public static bool HostKernelRuns(Int8HostKernel kernel) => HostInt8Linear.Runs(kernel);

    /// <summary>w [N, K] packed for <see cref="LinearOnHost"/> (once per weight: the packing is not updated if w changes).</summary>
    public unsafe PackedInt8Weight PackForHost(ArrayView<sbyte> w, int n, int k)
    {
        if (!UseHostLinear) throw new InvalidOperationException("int8 weights are packed for the host only on the CPU accelerator with VNNI or AVX-512BW");
        if (!HostInt8Linear.Runs(HostKernel)) throw new InvalidOperationException($"this CPU cannot run the {HostKernel} int8 kernel (HostKernel); the fastest it has is {HostInt8Linear.Fastest}");
        if (n < 0 || k < 0) throw new ArgumentException($"invalid int8 weight shape {n}×{k}");
        if (k >= 133_000) throw new ArgumentException($"int8 GEMM: K = {k} could overflow the int32 accumulator (limit 133,000)");
        Check.Vector("w", w, (long)n * k);
        set.Accelerator.Synchronize();
        return HostInt8Linear.Pack(n * k > 0 ? (sbyte*)w.LoadEffectiveAddressAsPtr() : null, n, k, HostKernel);
    }

    /// <summary>
    /// y [M, N] = act((quantize.Value(x, inputScale)·wᵀ)·(inputScale·wScale[n]) (+ bias[n])): what Quantize,
    /// Gemm, Dequantize and the bias kernel compute (bit for bit), in one pass over the CPU's buffers;
    /// BERT's GELU is applied in the same pass, other activations after it.
    /// </summary>
    public unsafe void LinearOnHost(ArrayView<float> x, PackedInt8Weight w, ArrayView<float> wScale, float inputScale,
        ArrayView<float> bias, ActivationKind? act, ArrayView<float> y, int m)
    {
        if (!UseHostLinear) throw new InvalidOperationException("LinearOnHost needs the CPU accelerator and VNNI or AVX-512BW (see UseHostLinear)");
        if (!(inputScale > 0f) || !float.IsFinite(inputScale)) throw new ArgumentOutOfRangeException(nameof(inputScale), $"quantization scale must be positive and finite, got {inputScale}");
        if (m < 0) throw new ArgumentException($"invalid row count {m}");
        Check.Vector("x", x, (long)m * w.K);
        Check.Vector("weight scales", wScale, w.N);
        Check.Vector("y", y, (long)m * w.N);
        bool hasBias = bias.IsValid && bias.Length > 0;
        if (hasBias) Check.Vector("bias", bias, w.N);
        if (m == 0 || w.N == 0) return;
        set.Accelerator.Synchronize();
        bool fuseGelu = act == ActivationKind.GeluErf && Vector512.IsHardwareAccelerated;
        HostInt8Linear.Run(w.K > 0 ? (float*)x.LoadEffectiveAddressAsPtr() : null, m, inputScale, w, (float*)wScale.LoadEffectiveAddressAsPtr(),
            hasBias ? (float*)bias.LoadEffectiveAddressAsPtr() : null, fuseGelu, (float*)y.LoadEffectiveAddressAsPtr());
        if (act is { } kind && !fuseGelu)
            set.Activation.Forward(kind, y, default, y, m, w.N);
    }

    /// <summary>y [M, N] = acc·(inputScale·wScale[n]).</summary>
    public void Dequantize(ArrayView<int> acc, ArrayView<float> wScale, ArrayView<float> y, int m, int n, float inputScale)
    {
        Check.Vector("acc", acc, (long)m * n);
        Check.Vector("weight scales", wScale, n);
        Check.Vector("y", y, (long)m * n);
        long count = (long)m * n;
        if (count > 0) dequantize.Value(set.GridStride(count), acc, wScale, y, new Int8Args { M = m, N = n, InputScale = inputScale, Count = count });
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void QuantizeKernel(ArrayView<float> x, ArrayView<sbyte> q, Int8Args a)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < a.Count; i += step)
        {
            float v = MathF.Floor(x[i] * a.InvScale + 0.5f);
            q[i] = (sbyte)(v > 127f ? 127 : v < -127f ? -127 : (int)v);
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FakeQuantizeKernel(ArrayView<float> x, ArrayView<float> scales, ArrayView<float> y, FakeQuantArgs a)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < a.Count; i += step)
        {
            float s = scales[i / a.Cols];
            float v = MathF.Floor(x[i] * (1f / s) + 0.5f);
            y[i] = (v > 127f ? 127f : v < -127f ? -127f : v) * s;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FakeQuantizeBackwardKernel(ArrayView<float> x, ArrayView<float> scales, ArrayView<float> dy, ArrayView<float> dx, FakeQuantArgs a)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < a.Count; i += step)
        {
            float v = MathF.Floor(x[i] * (1f / scales[i / a.Cols]) + 0.5f);
            dx[i] = v >= -127f && v <= 127f ? dy[i] : 0f;
        }
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RowScalesKernel<TReduce>(ArrayView<float> w, ArrayView<float> scales, int cols)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        long off = (long)Grid.IdxX * cols;
        float m = 0f;
        for (int c = Group.IdxX; c < cols; c += Group.DimX)
            m = MathF.Max(m, MathF.Abs(w[off + c]));
        m = default(TReduce).Max(shared, m);
        if (Group.IdxX == 0)
            scales[Grid.IdxX] = m > 0f ? m / 127f : 1f;
    }

    /// <summary>Group g's max |x| over the elements its grid-stride threads visit.</summary>
    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MaxAbsPartialsKernel<TReduce>(ArrayView<float> x, ArrayView<float> partial, long n)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        float m = 0f;
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
            m = MathF.Max(m, MathF.Abs(x[i]));
        m = default(TReduce).Max(shared, m);
        if (Group.IdxX == 0)
            partial[Grid.IdxX] = m;
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RangeKernel<TReduce>(ArrayView<float> partial, ArrayView<float> ema, ArrayView<float> scale, RangeArgs a)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        float m = 0f;
        for (int i = Group.IdxX; i < a.Count; i += Group.DimX)
            m = MathF.Max(m, partial[i]);
        m = default(TReduce).Max(shared, m);
        if (Group.IdxX == 0)
        {
            var mode = (RangeMode)a.Mode;
            float r = NextRange(ema[0], m, a.Decay, mode);
            if (mode != RangeMode.Batch) ema[0] = r;
            scale[0] = r > 0f ? r / 127f : 1f;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Int8GemmKernel(ArrayView<sbyte> a, ArrayView<sbyte> b, ArrayView<int> c, Int8Args g)
    {
        long step = GridStride.Step;
        int tilesN = (g.N + Tile - 1) / Tile;
        for (long t = GridStride.Start; t < g.Count; t += step)
        {
            int i0 = (int)(t / tilesN) * Tile, j0 = (int)(t % tilesN) * Tile;
            // Rows and columns past the edge read the last valid one (no branch in the loop) and are not written.
            int a0 = i0 * g.K, a1 = Math.Min(i0 + 1, g.M - 1) * g.K, a2 = Math.Min(i0 + 2, g.M - 1) * g.K, a3 = Math.Min(i0 + 3, g.M - 1) * g.K;
            int b0 = j0 * g.K, b1 = Math.Min(j0 + 1, g.N - 1) * g.K, b2 = Math.Min(j0 + 2, g.N - 1) * g.K, b3 = Math.Min(j0 + 3, g.N - 1) * g.K;
            var acc = new IntTile();
            for (int k = 0; k < g.K; k++)
                acc.Fma(a[a0 + k], a[a1 + k], a[a2 + k], a[a3 + k], b[b0 + k], b[b1 + k], b[b2 + k], b[b3 + k]);
            acc.Store(c, i0, j0, g.M, g.N);
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DequantizeKernel(ArrayView<int> acc, ArrayView<float> wScale, ArrayView<float> y, Int8Args a)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < a.Count; i += step)
            y[i] = acc[i] * (a.InputScale * wScale[(int)(i % a.N)]);
    }

    /// <summary>A 4×4 block of int32 accumulators (no loop unrolling in ILGPU 1.5.3: written out).</summary>
    private struct IntTile
    {
        public int C00, C01, C02, C03, C10, C11, C12, C13, C20, C21, C22, C23, C30, C31, C32, C33;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Fma(int a0, int a1, int a2, int a3, int b0, int b1, int b2, int b3)
        {
            C00 += a0 * b0; C01 += a0 * b1; C02 += a0 * b2; C03 += a0 * b3;
            C10 += a1 * b0; C11 += a1 * b1; C12 += a1 * b2; C13 += a1 * b3;
            C20 += a2 * b0; C21 += a2 * b1; C22 += a2 * b2; C23 += a2 * b3;
            C30 += a3 * b0; C31 += a3 * b1; C32 += a3 * b2; C33 += a3 * b3;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly void Store(ArrayView<int> c, int i0, int j0, int m, int n)
        {
            StoreRow(c, i0, j0, m, n, C00, C01, C02, C03);
            StoreRow(c, i0 + 1, j0, m, n, C10, C11, C12, C13);
            StoreRow(c, i0 + 2, j0, m, n, C20, C21, C22, C23);
            StoreRow(c, i0 + 3, j0, m, n, C30, C31, C32, C33);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void StoreRow(ArrayView<int> c, int i, int j0, int m, int n, int v0, int v1, int v2, int v3)
        {
            if (i >= m) return;
            int o = i * n + j0;
            c[o] = v0;
            if (j0 + 1 < n) c[o + 1] = v1;
            if (j0 + 2 < n) c[o + 2] = v2;
            if (j0 + 3 < n) c[o + 3] = v3;
        }
    }
}

/// <summary>acc = a·bᵀ for int8 a [M, K], b [N, K] on the CPU accelerator's buffers: exact int32 dot products, rows in parallel.</summary>
internal static unsafe class HostInt8Gemm
{
    public static void Run(ArrayView<sbyte> a, ArrayView<sbyte> b, ArrayView<int> c, int m, int n, int k)
    {
        nint pa = a.LoadEffectiveAddressAsPtr(), pb = b.LoadEffectiveAddressAsPtr(), pc = c.LoadEffectiveAddressAsPtr();
        HostParallel.For(0, m, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (i) =>
        {
            sbyte* row = (sbyte*)pa + (long)i * k;
            int* output = (int*)pc + (long)i * n;
            for (int j = 0; j < n; j++) output[j] = Dot(row, (sbyte*)pb + (long)j * k, k);
        });
    }

    private static int Dot(sbyte* x, sbyte* y, int k)
    {
        int width = Vector<sbyte>.Count, t = 0;
        var sum = Vector<int>.Zero;
        for (; t + width <= k; t += width)
        {
            Vector.Widen(Unsafe.ReadUnaligned<Vector<sbyte>>(x + t), out Vector<short> x0, out Vector<short> x1);
            Vector.Widen(Unsafe.ReadUnaligned<Vector<sbyte>>(y + t), out Vector<short> y0, out Vector<short> y1);
            // |x·y| ≤ 127² = 16129 fits a short; widen before adding.
            Vector.Widen(x0 * y0, out Vector<int> p0, out Vector<int> p1);
            Vector.Widen(x1 * y1, out Vector<int> p2, out Vector<int> p3);
            sum += p0 + p1 + p2 + p3;
        }
        int result = Vector.Sum(sum);
        for (; t < k; t++) result += x[t] * y[t];
        return result;
    }
}
