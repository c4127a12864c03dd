// A bfloat16 GEMM for the CPU on AVX512_BF16 (the mixed-precision issue's first kernel): C [M, N] = A [M, K] · Bᵀ
// with B [N, K] (a Linear weight's layout), both rounded to bfloat16 (nearest, ties to even) when packed, the
// products accumulated in FP32. The micro-kernel is machine code (HostBf16Avx512.s beside this file, its bytes
// below from tools/x86/assemble.sh, mapped as HostMachineCode maps it): VDPBF16PS, 32 bf16 products per
// instruction where FP32's FMA does 16. A 6 × 32 tile per call, as the int8 kernel's.
//
// Packing: K in pairs (an odd K padded with a zero), one dword per pair of bf16, the lower half the even k.
// Blocked for the caches: as many column panels of B as fit 512 KB (L2) at a time, every row panel passing
// over them; K beyond 1,024 is cut in blocks whose tiles are added into C, so K's blocks meet in FP32.
// A in panels of 6 rows (pair p of row r at 6·p + r), B in panels of 16 columns (pair p of column j at 16·p + j);
// rows and columns past the matrix are zeros, and only the matrix's part of a tile is stored.
// Where AVX512_BF16 is absent the same packed panels are multiplied in FP32 on the host (the same products,
// summed in another order), so results agree within FP32 accumulation error everywhere.
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace IlgpuBert.Kernels;

/// <summary>A B [N, K] packed once as bfloat16 column panels for <see cref="HostBf16Gemm.Run"/>.</summary>
public sealed class Bf16PackedMatrix
{
    internal Bf16PackedMatrix(uint[] panels, int n, int k) => (Panels, N, K) = (panels, n, k);

    internal uint[] Panels { get; }
    public int N { get; }
    public int K { get; }
}

public static unsafe class HostBf16Gemm
{
    private const int MR = 6, NR = 16;

    /// <summary>Whether the VDPBF16PS kernel runs here (else the host FP32 fallback does).</summary>
    public static bool UsesBf16Instructions => HostBf16Avx512.IsSupported && !ForceFallback;

    /// <summary>Run the FP32 fallback even where VDPBF16PS exists (tests, comparisons).</summary>
    public static bool ForceFallback { get; set; }

    private static uint Pair(float lo, float hi) => BFloat16.Round(lo) | (uint)BFloat16.Round(hi) << 16;

    /// <summary>Packs B [N, K] (row-major) into bfloat16 column panels.</summary>
    public static Bf16PackedMatrix Pack(ReadOnlySpan<float> b, int n, int k)
    {
        if (n < 0 || k < 0 || b.Length < (long)n * k) throw new ArgumentException($"B needs {(long)n * k} values for [{n}, {k}], has {b.Length}");
        int pairs = (k + 1) / 2, panels = (n + NR - 1) / NR;
        var packed = new uint[(long)panels * pairs * NR];
        fixed (float* pb = b)
        fixed (uint* pp = packed)
        {
            float* bPtr = pb;
            uint* out0 = pp;
            HostParallel.For(0, panels, panel =>
            {
                var pairsOfRow = new uint[Math.Max(1, pairs)];
                fixed (uint* row = pairsOfRow)
                    for (int j = 0; j < NR; j++)
                    {
                        int col = panel * NR + j;
                        if (col >= n) break; // the panel's last columns stay zero
                        PackRow(bPtr + (long)col * k, k, row);
                        uint* dst = out0 + (long)panel * pairs * NR + j;
                        for (int p = 0; p < pairs; p++) dst[(long)p * NR] = row[p];
                    }
            });
        }
        return new Bf16PackedMatrix(packed, n, k);
    }

    /// <summary>
    /// Pairs of K per block (K = 1,024): a row panel's share of a block is 12 KB (L1). Each later block's tiles
    /// are added into C, which costs a pass over C, so BERT-base's K = 768 is one block and K = 3,072 three.
    /// </summary>
    private const int PairsPerBlock = 512;

    /// <summary>Bytes of B a column block holds: kept in L2 (1 MB on Zen 4 and 5) while every row panel passes over it.</summary>
    private const int BlockBytes = 512 << 10;

    /// <summary>
    /// C [M, N] = A [M, K] · Bᵀ in bfloat16 with FP32 accumulation; C is overwritten. A is packed once into row
    /// panels; then for each block of K and of columns, the row panels go to the cores and each 6 × 32 tile is
    /// added into C (the K blocks' partial sums meet in C, in FP32).
    /// </summary>
    public static void Run(ReadOnlySpan<float> a, int m, Bf16PackedMatrix b, Span<float> c)
    {
        int n = b.N, k = b.K;
        if (m < 0 || a.Length < (long)m * k) throw new ArgumentException($"A needs {(long)m * k} values for [{m}, {k}], has {a.Length}");
        if (c.Length < (long)m * n) throw new ArgumentException($"C needs {(long)m * n} values for [{m}, {n}], has {c.Length}");
        if (m == 0 || n == 0) return;
        if (k == 0) { c[..(m * n)].Clear(); return; }
        int pairs = (k + 1) / 2, rowPanels = (m + MR - 1) / MR, colPanels = (n + NR - 1) / NR;
        var aPacked = new uint[(long)rowPanels * pairs * MR];
        fixed (float* pa = a, pc = c)
        fixed (uint* pb = b.Panels, pap = aPacked)
        {
            float* aPtr = pa, cPtr = pc;
            uint* bPtr = pb, apPtr = pap;
            HostParallel.For(0, rowPanels, rp =>
            {
                int r0 = rp * MR, rows = Math.Min(MR, m - r0);
                uint* panel = apPtr + (long)rp * pairs * MR;
                var pairsOfRow = new uint[pairs];
                fixed (uint* row = pairsOfRow)
                    for (int r = 0; r < rows; r++)
                    {
                        PackRow(aPtr + (long)(r0 + r) * k, k, row);
                        for (int p = 0; p < pairs; p++) panel[p * MR + r] = row[p];
                    }
            });
            // An even number of column panels per block (the kernel takes two), as many as fit BlockBytes.
            int panelsPerBlock = Math.Max(2, BlockBytes / (Math.Min(pairs, PairsPerBlock) * NR * 4) & ~1);
            for (int p0 = 0; p0 < pairs; p0 += PairsPerBlock)
            {
                int np = Math.Min(PairsPerBlock, pairs - p0);
                bool first = p0 == 0;
                for (int cb = 0; cb < colPanels; cb += panelsPerBlock)
                {
                    int cbEnd = Math.Min(colPanels, cb + panelsPerBlock);
                    HostParallel.For(0, rowPanels, rp =>
                    {
                        var tile = stackalloc float[2 * MR * NR];
                        int r0 = rp * MR, rows = Math.Min(MR, m - r0);
                        uint* ap = apPtr + ((long)rp * pairs + p0) * MR;
                        for (int cp = cb; cp < cbEnd; cp += 2)
                        {
                            uint* b0 = bPtr + ((long)cp * pairs + p0) * NR;
                            uint* b1 = cp + 1 < cbEnd ? bPtr + ((long)(cp + 1) * pairs + p0) * NR : b0;
                            Micro(np, ap, b0, b1, tile);
                            for (int half = 0; half < 2 && cp + half < cbEnd; half++)
                            {
                                int c0 = (cp + half) * NR, cols = Math.Min(NR, n - c0);
                                for (int r = 0; r < rows; r++)
                                {
                                    float* dst = cPtr + (long)(r0 + r) * n + c0;
                                    float* src = tile + half * MR * NR + r * NR;
                                    // The first block of K stores, later ones add.
                                    if (cols == NR && Vector512.IsHardwareAccelerated)
                                        (first ? Vector512.Load(src) : Vector512.Load(src) + Vector512.Load(dst)).Store(dst);
                                    else if (first) for (int j = 0; j < cols; j++) dst[j] = src[j];
                                    else for (int j = 0; j < cols; j++) dst[j] += src[j];
                                }
                            }
                        }
                    });
                }
            }
        }
    }

    /// <summary>
    /// One row of K floats as ⌈K/2⌉ bf16 pairs (lower half the even element), rounded to nearest even: 32 floats at a time on AVX-512 (NaN inputs take the scalar path, which keeps them NaN), the tail as <see cref="Pair"/>.
    /// </summary>
    private static void PackRow(float* row, int k, uint* pairs)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i + 32 <= k; i += 32)
            {
                var x0 = Vector512.Load(row + i);
                var x1 = Vector512.Load(row + i + 16);
                if (!Vector512.EqualsAll(x0, x0) || !Vector512.EqualsAll(x1, x1)) break; // a NaN: the rest goes the scalar way
                Vector512.Narrow(PairLanes(x0), PairLanes(x1)).Store(pairs + i / 2);
            }
        }
        for (int p = i / 2; p < (k + 1) / 2; p++) pairs[p] = Pair(row[2 * p], 2 * p + 1 < k ? row[2 * p + 1] : 0f);
    }

    /// <summary>16 floats as 8 bf16 pairs, one per 64-bit lane: the even element's bf16 low, the odd one's above it.</summary>
    private static Vector512<ulong> PairLanes(Vector512<float> x)
    {
        var rounded = BFloat16.RoundUpperHalves(x).AsUInt64();
        return ((rounded >> 16) & Vector512.Create(0xFFFFul)) | ((rounded >> 32) & Vector512.Create(0xFFFF0000ul));
    }

    /// <summary>C = A · Bᵀ from unpacked B [N, K]: packs, then runs.</summary>
    public static void Run(ReadOnlySpan<float> a, int m, ReadOnlySpan<float> b, int n, int k, Span<float> c) => Run(a, m, Pack(b, n, k), c);

    private static void Micro(int pairs, uint* a, uint* b0, uint* b1, float* tile)
    {
        if (UsesBf16Instructions)
        {
            HostBf16Avx512.Micro6x32(pairs, a, b0, b1, tile);
            return;
        }
        // The same packed products in FP32 (exact: bf16 × bf16 fits FP32's mantissa), summed pair by pair.
        for (int half = 0; half < 2; half++)
        {
            uint* b = half == 0 ? b0 : b1;
            for (int r = 0; r < MR; r++)
                for (int j = 0; j < NR; j++)
                {
                    float s = 0f;
                    for (int p = 0; p < pairs; p++)
                    {
                        uint x = a[p * MR + r], y = b[p * NR + j];
                        s += BFloat16.ToFloat((ushort)(x >> 16)) * BFloat16.ToFloat((ushort)(y >> 16));
                        s += BFloat16.ToFloat((ushort)x) * BFloat16.ToFloat((ushort)y);
                    }
                    tile[half * MR * NR + r * NR + j] = s;
                }
        }
    }
}

internal static unsafe class HostBf16Avx512
{
    /// <summary>
    /// tile[16·r + j] and tile[96 + 16·r + j] (r &lt; 6, j &lt; 16) = Σ over <paramref name="pairs"/> of the bf16 pairs of a
    /// 6-row panel (pair p of row r at a + 6·p + r) times those of two 16-column panels (pair p of column j at b + 16·p + j).
    /// </summary>
    public static void Micro6x32(long pairs, uint* a, uint* b0, uint* b1, float* tile) => Kernel(pairs, a, b0, b1, tile);

    /// <summary>Whether <see cref="Micro6x32"/> can run here: AVX-512BW (ZMM state saved) and CPUID.(7, 1):EAX bit 5, AVX512_BF16.</summary>
    public static bool IsSupported => Kernel != null;

    private static readonly delegate* unmanaged[SuppressGCTransition]<long, uint*, uint*, uint*, float*, void> Kernel =
        (delegate* unmanaged[SuppressGCTransition]<long, uint*, uint*, uint*, float*, void>)Load();

    /// <summary>The machine code of HostBf16Avx512.s (tools/x86/assemble.sh).</summary>
    internal static ReadOnlySpan<byte> Code =>
    [
        0x62, 0xA1, 0x7D, 0x40, 0xEF, 0xC0, // 0: vpxord zmm16,zmm16,zmm16
        0x62, 0xA1, 0x75, 0x40, 0xEF, 0xC9, // 6: vpxord zmm17,zmm17,zmm17
        0x62, 0xA1, 0x6D, 0x40, 0xEF, 0xD2, // c: vpxord zmm18,zmm18,zmm18
        0x62, 0xA1, 0x65, 0x40, 0xEF, 0xDB, // 12: vpxord zmm19,zmm19,zmm19
        0x62, 0xA1, 0x5D, 0x40, 0xEF, 0xE4, // 18: vpxord zmm20,zmm20,zmm20
        0x62, 0xA1, 0x55, 0x40, 0xEF, 0xED, // 1e: vpxord zmm21,zmm21,zmm21
        0x62, 0xA1, 0x4D, 0x40, 0xEF, 0xF6, // 24: vpxord zmm22,zmm22,zmm22
        0x62, 0xA1, 0x45, 0x40, 0xEF, 0xFF, // 2a: vpxord zmm23,zmm23,zmm23
        0x62, 0x01, 0x3D, 0x40, 0xEF, 0xC0, // 30: vpxord zmm24,zmm24,zmm24
        0x62, 0x01, 0x35, 0x40, 0xEF, 0xC9, // 36: vpxord zmm25,zmm25,zmm25
        0x62, 0x01, 0x2D, 0x40, 0xEF, 0xD2, // 3c: vpxord zmm26,zmm26,zmm26
        0x62, 0x01, 0x25, 0x40, 0xEF, 0xDB, // 42: vpxord zmm27,zmm27,zmm27
        0x48, 0x85, 0xFF, // 48: test rdi,rdi
        0x0F, 0x8E, 0x92, 0x00, 0x00, 0x00, // 4b: jle e3
        0x62, 0x61, 0x7C, 0x48, 0x10, 0x22, // 51: vmovups zmm28,ZMMWORD PTR [rdx]
        0x62, 0x61, 0x7C, 0x48, 0x10, 0x29, // 57: vmovups zmm29,ZMMWORD PTR [rcx]
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x36, // 5d: vpbroadcastd zmm30,DWORD PTR [rsi]
        0x62, 0x82, 0x0E, 0x40, 0x52, 0xC4, // 63: vdpbf16ps zmm16,zmm30,zmm28
        0x62, 0x82, 0x0E, 0x40, 0x52, 0xCD, // 69: vdpbf16ps zmm17,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x01, // 6f: vpbroadcastd zmm31,DWORD PTR [rsi+0x4]
        0x62, 0x82, 0x06, 0x40, 0x52, 0xD4, // 76: vdpbf16ps zmm18,zmm31,zmm28
        0x62, 0x82, 0x06, 0x40, 0x52, 0xDD, // 7c: vdpbf16ps zmm19,zmm31,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x76, 0x02, // 82: vpbroadcastd zmm30,DWORD PTR [rsi+0x8]
        0x62, 0x82, 0x0E, 0x40, 0x52, 0xE4, // 89: vdpbf16ps zmm20,zmm30,zmm28
        0x62, 0x82, 0x0E, 0x40, 0x52, 0xED, // 8f: vdpbf16ps zmm21,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x03, // 95: vpbroadcastd zmm31,DWORD PTR [rsi+0xc]
        0x62, 0x82, 0x06, 0x40, 0x52, 0xF4, // 9c: vdpbf16ps zmm22,zmm31,zmm28
        0x62, 0x82, 0x06, 0x40, 0x52, 0xFD, // a2: vdpbf16ps zmm23,zmm31,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x76, 0x04, // a8: vpbroadcastd zmm30,DWORD PTR [rsi+0x10]
        0x62, 0x02, 0x0E, 0x40, 0x52, 0xC4, // af: vdpbf16ps zmm24,zmm30,zmm28
        0x62, 0x02, 0x0E, 0x40, 0x52, 0xCD, // b5: vdpbf16ps zmm25,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x05, // bb: vpbroadcastd zmm31,DWORD PTR [rsi+0x14]
        0x62, 0x02, 0x06, 0x40, 0x52, 0xD4, // c2: vdpbf16ps zmm26,zmm31,zmm28
        0x62, 0x02, 0x06, 0x40, 0x52, 0xDD, // c8: vdpbf16ps zmm27,zmm31,zmm29
        0x48, 0x83, 0xC6, 0x18, // ce: add rsi,0x18
        0x48, 0x83, 0xC2, 0x40, // d2: add rdx,0x40
        0x48, 0x83, 0xC1, 0x40, // d6: add rcx,0x40
        0x48, 0xFF, 0xCF, // da: dec rdi
        0x0F, 0x85, 0x6E, 0xFF, 0xFF, 0xFF, // dd: jne 51
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x00, // e3: vmovups ZMMWORD PTR [r8],zmm16
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x48, 0x06, // e9: vmovups ZMMWORD PTR [r8+0x180],zmm17
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x50, 0x01, // f0: vmovups ZMMWORD PTR [r8+0x40],zmm18
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x58, 0x07, // f7: vmovups ZMMWORD PTR [r8+0x1c0],zmm19
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x60, 0x02, // fe: vmovups ZMMWORD PTR [r8+0x80],zmm20
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x68, 0x08, // 105: vmovups ZMMWORD PTR [r8+0x200],zmm21
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x70, 0x03, // 10c: vmovups ZMMWORD PTR [r8+0xc0],zmm22
        0x62, 0xC1, 0x7C, 0x48, 0x11, 0x78, 0x09, // 113: vmovups ZMMWORD PTR [r8+0x240],zmm23
        0x62, 0x41, 0x7C, 0x48, 0x11, 0x40, 0x04, // 11a: vmovups ZMMWORD PTR [r8+0x100],zmm24
        0x62, 0x41, 0x7C, 0x48, 0x11, 0x48, 0x0A, // 121: vmovups ZMMWORD PTR [r8+0x280],zmm25
        0x62, 0x41, 0x7C, 0x48, 0x11, 0x50, 0x05, // 128: vmovups ZMMWORD PTR [r8+0x140],zmm26
        0x62, 0x41, 0x7C, 0x48, 0x11, 0x58, 0x0B, // 12f: vmovups ZMMWORD PTR [r8+0x2c0],zmm27
        0xC3, // 136: ret
    ];

    private static nint Load() =>
        Avx512BW.IsSupported && X86Base.CpuId(7, 1).Eax is var eax && (eax & (1 << 5)) != 0 ? HostMachineCode.Map(Code) : 0;
}
