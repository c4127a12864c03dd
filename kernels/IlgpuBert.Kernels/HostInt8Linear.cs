// The int8 Linear layer on ILGPU's CPU accelerator, in one call: quantize the input, an int8 GEMM on
// AVX-VNNI dot products, and the rescale (+ bias, + GELU) written straight into the float output.
//
// VPDPBUSD multiplies unsigned by signed bytes, four at a time into each int32 lane. The input is
// quantized as the kernels do (q = clamp(⌊x/s + ½⌋, −127, 127)) and stored as u = q + 128 ∈ [1, 255], so
//   Σ_k u·w = Σ_k q·w + 128·Σ_k w,
// and the second term (one int per output column) is subtracted in the epilogue. The int32 lanes
// wrap rather than saturate, and the true Σ q·w fits an int32 (|q·w| ≤ 127², K < 133,000), so the
// difference is exact: the accumulators equal the reference GEMM's bit for bit, and the rescale is
// the same float operation (acc·(s_x·s_w[n]), then + bias) as the device kernels.
//
// Layouts (Goto/BLIS, as HostGemm): the weight [N, K] is packed once per model into 16-column panels
// of 4-byte k-groups (panel p, group g: columns 16p … 16p + 15, four k each, at (p·G + g)·64), so one
// 256-bit load is 8 columns × 4 k; the input is packed per call into 6-row panels (group g of row r
// at (g·6 + r)·4), each 4-byte group broadcast to all lanes. The 6×16 micro-kernel keeps 12 Vector256
// accumulators (AVX-VNNI is VEX-encoded: 16 registers); K is padded to whole groups with zero weights.
//
// AVX-512 VNNI (AMD Zen 4 and 5, Intel Xeons since Cascade Lake) does the same on 16 lanes, but .NET 10
// exposes only the VEX form: that kernel (6 rows × two 16-column panels, 12 ZMM accumulators) is
// machine code, HostInt8Vnni512.cs, on the same packed layout. Where neither runs, the same tiles run
// on AVX-512BW's VPMADDWD: weights and inputs as 16-bit pairs of k (q ∈ [−127, 127], no offset), one
// Vector512 of 16 columns × 2 k per pair, each product pair summed exactly into an int32 lane. Half
// the multiply-adds of VPDPBUSD per instruction, still twice float32's FMA.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace IlgpuBert.Kernels;

/// <summary>The instructions an int8 Linear layer runs on, on the CPU accelerator (fastest first).</summary>
public enum Int8HostKernel
{
    /// <summary>AVX-512 VNNI: VPDPBUSD on 16 int32 lanes (machine code; x86-64 Linux).</summary>
    AvxVnni512,
    /// <summary>AVX-VNNI: VPDPBUSD on 8 lanes.</summary>
    AvxVnni,
    /// <summary>AVX-512BW: VPMADDWD on 16-bit pairs.</summary>
    Avx512BWPairs,
}

/// <summary>An int8 weight [N, K] packed for one of the CPU's int8 kernels, with 128·Σ_k w[n, k] per column (VNNI).</summary>
public sealed class PackedInt8Weight
{
    internal PackedInt8Weight(int n, int k, sbyte[] panels, int[] offsets, Int8HostKernel kernel)
    {
        N = n;
        K = k;
        Panels = panels;
        Offsets = offsets;
        Kernel = kernel;
    }

    public int N { get; }
    public int K { get; }
    /// <summary>The kernel it was packed for (both VNNI kernels read the same layout).</summary>
    public Int8HostKernel Kernel { get; }
    /// <summary>16-bit pairs of k for AVX-512BW (else 4-byte groups for VNNI).</summary>
    internal bool Pairs => Kernel == Int8HostKernel.Avx512BWPairs;
    /// <summary>Units of k per column of a panel, four bytes each: groups of four int8, or pairs of int16.</summary>
    internal int Groups => Pairs ? (K + 1) / 2 : (K + 3) / 4;
    internal sbyte[] Panels { get; }
    internal int[] Offsets { get; }
}

internal static unsafe class HostInt8Linear
{
    public const int MR = 6, NR = 16;
    private const int MC = 16 * MR, NC = 256;

    public static bool Supported => Fastest is not null;

    /// <summary>The fastest kernel this CPU runs, or null.</summary>
    public static Int8HostKernel? Fastest { get; } =
        Enum.GetValues<Int8HostKernel>().Where(Runs).Select(k => (Int8HostKernel?)k).FirstOrDefault();

    public static bool Runs(Int8HostKernel kernel) => kernel switch
    {
        Int8HostKernel.AvxVnni512 => HostInt8Vnni512.IsSupported,
        Int8HostKernel.AvxVnni => AvxVnni.IsSupported,
        Int8HostKernel.Avx512BWPairs => Avx512BW.IsSupported,
        _ => false,
    };

    /// <param name="kernel">The kernel it is packed for: 16-bit pairs for AVX-512BW, 4-byte groups for either VNNI.</param>
    public static PackedInt8Weight Pack(sbyte* w, int n, int k, Int8HostKernel kernel)
    {
        if (kernel == Int8HostKernel.Avx512BWPairs) return PackPairs(w, n, k);
        int groups = (k + 3) / 4, panels = (n + NR - 1) / NR;
        var packed = GC.AllocateArray<sbyte>(panels * groups * NR * 4, pinned: true); // zero: the padding adds nothing
        var offsets = new int[panels * NR];
        fixed (sbyte* dst = packed)
            for (int j = 0; j < n; j++)
            {
                sbyte* row = w + (long)j * k;
                sbyte* panel = dst + (long)(j / NR) * groups * NR * 4 + j % NR * 4;
                int sum = 0;
                for (int t = 0; t < k; t++)
                {
                    panel[t / 4 * NR * 4 + t % 4] = row[t];
                    sum += row[t];
                }
                offsets[j] = 128 * sum;
            }
        return new PackedInt8Weight(n, k, packed, offsets, kernel);
    }

    /// <summary>w as 16-bit pairs: panel p, pair g: columns 16p … 16p + 15, two k each, at (p·G + g)·32 shorts; no offsets (inputs are signed).</summary>
    private static PackedInt8Weight PackPairs(sbyte* w, int n, int k)
    {
        int pairs = (k + 1) / 2, panels = (n + NR - 1) / NR;
        var packed = GC.AllocateArray<sbyte>(panels * pairs * NR * 4, pinned: true); // zero: the padding adds nothing
        fixed (sbyte* bytes = packed)
        {
            short* dst = (short*)bytes;
            for (int j = 0; j < n; j++)
            {
                sbyte* row = w + (long)j * k;
                short* panel = dst + (long)(j / NR) * pairs * NR * 2 + j % NR * 2;
                for (int t = 0; t < k; t++) panel[t / 2 * NR * 2 + t % 2] = row[t];
            }
        }
        return new PackedInt8Weight(n, k, packed, new int[panels * NR], Int8HostKernel.Avx512BWPairs);
    }

    /// <summary>y [M, N] = (quantize(x)·wᵀ)·(inputScale·wScale[n]) + bias[n] (bias may be null), then GELU when asked.</summary>
    public static void Run(float* x, int m, float inputScale, PackedInt8Weight w, float* wScale, float* bias, bool gelu, float* y)
    {
        int k = w.K, n = w.N, groups = w.Groups, rowPanels = (m + MR - 1) / MR;
        long packBytes = (long)rowPanels * groups * MR * 4;
        var aPack = ArrayPool<byte>.Shared.Rent((int)Math.Max(packBytes, 1));
        var scale = ArrayPool<float>.Shared.Rent(Math.Max(n, 1));
        try
        {
            for (int j = 0; j < n; j++) scale[j] = inputScale * wScale[j];
            float inv = 1f / inputScale;
            fixed (byte* pa = aPack)
            fixed (float* ps = scale)
            fixed (sbyte* pw = w.Panels)
            fixed (int* po = w.Offsets)
            {
                nint ia = (nint)pa, ix = (nint)x;
                HostRows.Blocks(rowPanels, (long)m * k, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (p0, p1) =>
                {
                    for (int p = p0; p < p1; p++)
                        if (w.Pairs) PackRowPairs((float*)ix, m, k, groups, p * MR, inv, (short*)((byte*)ia + (long)p * groups * MR * 4));
                        else PackRows((float*)ix, m, k, groups, p * MR, inv, (byte*)ia + (long)p * groups * MR * 4);
                });
                // Blocks of up to MC × NC, halved until every core has two.
                int mc = MC, nc = NC, wanted = (double)m * n * k >= 1e6 ? 2 * Environment.ProcessorCount : 1;
                int Tasks() => ((m + mc - 1) / mc) * ((n + nc - 1) / nc);
                while (Tasks() < wanted && (mc > MR || nc > NR))
                {
                    if (mc > MR && (mc >= nc || nc <= NR)) mc = (mc / 2 + MR - 1) / MR * MR;
                    else nc = (nc / 2 + NR - 1) / NR * NR;
                }
                int nBlocks = (n + nc - 1) / nc, tasks = Tasks();
                nint iw = (nint)pw, io = (nint)po, isc = (nint)ps, ib = (nint)bias, iy = (nint)y;
                void Task(int t)
                {
                    int i0 = t / nBlocks * mc, j0 = t % nBlocks * nc;
                    Block((byte*)ia, (sbyte*)iw, (int*)io, (float*)isc, (float*)ib, gelu, (float*)iy, m, n, groups, i0, Math.Min(mc, m - i0), j0, Math.Min(nc, n - j0),
                        w.Kernel);
                }
                if (tasks == 1) Task(0);
                else HostParallel.For(0, tasks, Task);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(aPack);
            ArrayPool<float>.Shared.Return(scale);
        }
    }

    /// <summary>Rows r0 … r0 + 5 of x quantized (+128) into one 6-row panel; missing rows and the K padding are 128 (q = 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackRows(float* x, int m, int k, int groups, int r0, float inv, byte* panel)
    {
        var invV = Vector512.Create(inv);
        for (int r = 0; r < MR; r++)
        {
            uint* dst = (uint*)panel + r; // group g at dst[g·MR]
            if (r0 + r >= m)
            {
                for (int g = 0; g < groups; g++) dst[g * MR] = 0x80808080u;
                continue;
            }
            float* row = x + (long)(r0 + r) * k;
            int t = 0;
            if (Avx512F.IsSupported)
                for (; t + 16 <= k; t += 16)
                {
                    var u = Avx512F.ConvertToVector128Byte(Quantize16(Vector512.Load(row + t), invV) + Vector512.Create(128));
                    var units = u.AsUInt32();
                    dst[t / 4 * MR] = units.GetElement(0);
                    dst[(t / 4 + 1) * MR] = units.GetElement(1);
                    dst[(t / 4 + 2) * MR] = units.GetElement(2);
                    dst[(t / 4 + 3) * MR] = units.GetElement(3);
                }
            for (; t < groups * 4; t++)
            {
                byte u = t < k ? (byte)(QuantizationKernels.QuantizeValue(row[t], inv) + 128) : (byte)128;
                ((byte*)dst)[t / 4 * MR * 4 + t % 4] = u;
            }
        }
    }

    /// <summary>Rows r0 … r0 + 5 of x quantized into one 6-row panel of 16-bit pairs (pair g of row r at (g·6 + r)·2); missing rows and the K padding are 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackRowPairs(float* x, int m, int k, int pairs, int r0, float inv, short* panel)
    {
        var invV = Vector512.Create(inv);
        for (int r = 0; r < MR; r++)
        {
            uint* dst = (uint*)panel + r; // pair g at dst[g·MR]
            if (r0 + r >= m)
            {
                for (int g = 0; g < pairs; g++) dst[g * MR] = 0;
                continue;
            }
            float* row = x + (long)(r0 + r) * k;
            int t = 0;
            for (; t + 16 <= k; t += 16)
            {
                var units = Avx512F.ConvertToVector256Int16(Quantize16(Vector512.Load(row + t), invV)).AsUInt32();
                for (int i = 0; i < 8; i++) dst[(t / 2 + i) * MR] = units.GetElement(i);
            }
            for (; t < pairs * 2; t++)
                ((short*)dst)[t / 2 * MR * 2 + t % 2] = t < k ? (short)QuantizationKernels.QuantizeValue(row[t], inv) : (short)0;
        }
    }

    /// <summary><see cref="QuantizationKernels.QuantizeValue"/> on 16 lanes (the same float operations; NaN gives 0, as the scalar cast does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<int> Quantize16(Vector512<float> x, Vector512<float> inv)
    {
        var v = Vector512.Floor(x * inv + Vector512.Create(0.5f));
        v = Vector512.ConditionalSelect(Vector512.GreaterThan(v, Vector512.Create(127f)), Vector512.Create(127f), v);
        v = Vector512.ConditionalSelect(Vector512.LessThan(v, Vector512.Create(-127f)), Vector512.Create(-127f), v);
        v = Vector512.ConditionalSelect(Vector512.Equals(v, v), v, Vector512<float>.Zero);
        return Vector512.ConvertToInt32(v);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block(byte* a, sbyte* w, int* offsets, float* scale, float* bias, bool gelu, float* y, int m, int n, int groups,
        int i0, int mc, int j0, int nc, Int8HostKernel kernel)
    {
        int* tile = stackalloc int[2 * MR * NR];
        // AVX-512 VNNI's kernel takes two column panels at once (a lone last panel is passed twice, its copy not written).
        int step = kernel == Int8HostKernel.AvxVnni512 ? 2 * NR : NR;
        for (int jr = j0; jr < j0 + nc; jr += step)
        {
            sbyte* bPanel = w + (long)(jr / NR) * groups * NR * 4;
            bool second = step == 2 * NR && jr + NR < j0 + nc;
            for (int ir = i0; ir < i0 + mc; ir += MR)
            {
                byte* aPanel = a + (long)(ir / MR) * groups * MR * 4;
                int rows = Math.Min(MR, m - ir);
                switch (kernel)
                {
                    case Int8HostKernel.AvxVnni512:
                        HostInt8Vnni512.Micro6x32(groups, aPanel, bPanel, second ? bPanel + groups * NR * 4 : bPanel, tile);
                        break;
                    case Int8HostKernel.AvxVnni:
                        Micro6x16(groups, aPanel, bPanel, tile);
                        break;
                    default:
                        Micro6x16Pairs(groups, (short*)aPanel, (short*)bPanel, tile);
                        break;
                }
                Epilogue(tile, offsets, scale, bias, gelu, y, n, ir, rows, jr, Math.Min(NR, n - jr));
                if (second) Epilogue(tile + MR * NR, offsets, scale, bias, gelu, y, n, ir, rows, jr + NR, Math.Min(NR, n - jr - NR));
            }
        }
    }

    /// <summary>tile (6 × 16) = Σ_g Σ_{4 k} a·b over the groups of one row panel and one column panel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro6x16(int groups, byte* a, sbyte* b, int* tile)
    {
        Vector256<int> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<int> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int g = 0; g < groups; g++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 32);
            var x = Vector256.Create(*(int*)a).AsByte();
            c00 = AvxVnni.MultiplyWideningAndAdd(c00, x, b0); c01 = AvxVnni.MultiplyWideningAndAdd(c01, x, b1);
            x = Vector256.Create(*(int*)(a + 4)).AsByte();
            c10 = AvxVnni.MultiplyWideningAndAdd(c10, x, b0); c11 = AvxVnni.MultiplyWideningAndAdd(c11, x, b1);
            x = Vector256.Create(*(int*)(a + 8)).AsByte();
            c20 = AvxVnni.MultiplyWideningAndAdd(c20, x, b0); c21 = AvxVnni.MultiplyWideningAndAdd(c21, x, b1);
            x = Vector256.Create(*(int*)(a + 12)).AsByte();
            c30 = AvxVnni.MultiplyWideningAndAdd(c30, x, b0); c31 = AvxVnni.MultiplyWideningAndAdd(c31, x, b1);
            x = Vector256.Create(*(int*)(a + 16)).AsByte();
            c40 = AvxVnni.MultiplyWideningAndAdd(c40, x, b0); c41 = AvxVnni.MultiplyWideningAndAdd(c41, x, b1);
            x = Vector256.Create(*(int*)(a + 20)).AsByte();
            c50 = AvxVnni.MultiplyWideningAndAdd(c50, x, b0); c51 = AvxVnni.MultiplyWideningAndAdd(c51, x, b1);
            a += MR * 4;
            b += NR * 4;
        }
        // Lane l of c(r)0 is column l, of c(r)1 column 8 + l.
        c00.Store(tile); c01.Store(tile + 8); c10.Store(tile + 16); c11.Store(tile + 24);
        c20.Store(tile + 32); c21.Store(tile + 40); c30.Store(tile + 48); c31.Store(tile + 56);
        c40.Store(tile + 64); c41.Store(tile + 72); c50.Store(tile + 80); c51.Store(tile + 88);
    }

    /// <summary>tile (6 × 16) = Σ_g Σ_{2 k} a·b on AVX-512BW: one VPMADDWD per row and pair (16 columns, exact int32 sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro6x16Pairs(int pairs, short* a, short* b, int* tile)
    {
        Vector512<int> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        for (int g = 0; g < pairs; g++)
        {
            var w = Vector512.Load(b);
            c0 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)a).AsInt16(), w);
            c1 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)(a + 2)).AsInt16(), w);
            c2 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)(a + 4)).AsInt16(), w);
            c3 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)(a + 6)).AsInt16(), w);
            c4 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)(a + 8)).AsInt16(), w);
            c5 += Avx512BW.MultiplyAddAdjacent(Vector512.Create(*(int*)(a + 10)).AsInt16(), w);
            a += MR * 2;
            b += NR * 2;
        }
        c0.Store(tile); c1.Store(tile + 16); c2.Store(tile + 32); c3.Store(tile + 48); c4.Store(tile + 64); c5.Store(tile + 80);
    }

    /// <summary>y[row0 + r, col0 + j] = (tile − 128·Σw)·scale (+ bias) (then GELU) for the tile's valid rows and columns.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Epilogue(int* tile, int* offsets, float* scale, float* bias, bool gelu, float* y, int n, int row0, int rows, int col0, int cols)
    {
        if (cols == NR && Vector512.IsHardwareAccelerated)
        {
            var offset = Vector512.Load(offsets + col0);
            var s = Vector512.Load(scale + col0);
            var add = bias != null ? Vector512.Load(bias + col0) : Vector512<float>.Zero;
            for (int r = 0; r < rows; r++)
            {
                var v = Vector512.ConvertToSingle(Vector512.Load(tile + r * NR) - offset) * s;
                if (bias != null) v += add;
                if (gelu) v = HostRows.GeluErf512(v);
                v.Store(y + (long)(row0 + r) * n + col0);
            }
            return;
        }
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++)
            {
                float v = (tile[r * NR + j] - offsets[col0 + j]) * scale[col0 + j];
                if (bias != null) v += bias[col0 + j];
                y[(long)(row0 + r) * n + col0 + j] = gelu ? default(GeluErf).Apply(v, out _) : v;
            }
    }
}
