// The GEMM path for ILGPU's CPU accelerator: host SIMD code on the accelerator's own buffers.
//
// ILGPU's CPU accelerator keeps its buffers in host memory, so the launcher can hand their
// addresses to plain C# (ILGPU-NOTES.md: ~0.1 GFLOP/s for a thin-thread kernel there, ~46 for
// host SIMD code). This is the classic Goto/BLIS loop nest: C is cut into MC×NC tasks spread over
// the cores; each task packs K-slices of op(A) into 12-row panels and of op(B) into 32-column
// panels (so transposes cost nothing extra), then a 12×32 register-blocked micro-kernel runs over
// the panels: 24 Vector512 fused multiply-add accumulators where the hardware has AVX-512, else
// the same tile as four 6×16 quarters of Vector256 (12 accumulators each, within AVX2's 16 registers).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

internal static unsafe class HostGemm
{
    // MC×KC of A is swept by the micro-kernel for each 32-column panel of the NC columns (KC: the deepest slice, see
    // SliceDepth); the block is shrunk (below) when a product is too small to give every core two tasks. Larger blocks
    // repack less: A is packed once per NC columns and B once per MC rows (perf/RESULTS.md: 96×256 blocks with scalar
    // packing and tile merge left the micro-kernel about half of the GEMM's time). KC = 768 rather than 384, although
    // 384 × 768 floats of A are then more than a Zen 4 core's 1 MiB L2: one merge of C fewer at BERT-base's K = 768
    // measured 2–5% faster at its shapes, and a training step of BERT-small 4% (perf/RESULTS.md, 2026-12-05).
    private const int MR = 12, NR = 32, MC = 384, NC = 768, KC = 768;

    /// <summary>
    /// The depth of K-slices: K in as few slices of at most KC as it takes, evened (a whole multiple of 16 for the
    /// transposes), so K = 768 is one slice and 1536 two, not 512 + 256 and 3 × 512: each slice costs a merge of C.
    /// </summary>
    private static int SliceDepth(int k)
    {
        int slices = Math.Max(1, (k + KC - 1) / KC);
        return Math.Min(KC, ((k + slices - 1) / slices + 15) & ~15);
    }

    // Packing buffers, one pair per thread that runs tasks (HostParallel's workers live as long as the
    // process). A shared ConcurrentBag of them cost 7% of a batch-1 GEMM in lock contention.
    [ThreadStatic] private static float[]? aPackBuffer, bPackBuffer;

    // The rows of A that aPackBuffer holds, all K-slices of them: a thread that runs several column blocks of one row
    // block (batch 1 splits N six ways) packs those rows once. Products are numbered, so a later product on the same
    // buffers never matches.
    [ThreadStatic] private static long keptProduct, keptRows;
    private static long products;
    private const long KeptALimit = 1L << 20; // floats (4 MiB) per thread

    /// <summary>
    /// C = α·op(A)·op(B) + β·C (+ bias). With <paramref name="gelu"/> (one product, wide tiles, ldc = N): y =
    /// GELU(C + geluBias) as each tile's last K-slice is merged, and C may be y itself (partial sums are kept
    /// there until then) when the caller needs no pre-activation.
    /// </summary>
    public static void Run(GemmArgs p, int batch, ArrayView<float> a, ArrayView<float> b,
        ArrayView<float> c, ArrayView<float> bias, bool wide, ArrayView<float> gelu = default, ArrayView<float> geluBias = default,
        PackedMatrix? packedB = null)
    {
        float* pa = (float*)a.LoadEffectiveAddressAsPtr();
        float* pb = b.IsValid ? (float*)b.LoadEffectiveAddressAsPtr() : null;
        if (packedB is not null && (batch != 1 || !packedB.Matches(p, pb)))
            throw new ArgumentException($"packed B ({packedB}) was not packed from this product's B");
        var packed = new Prepacked(packedB is null ? null : packedB.Pointer, packedB?.PaddedN ?? 0);
        float* pc = (float*)c.LoadEffectiveAddressAsPtr();
        float* pbias = p.HasBias != 0 ? (float*)bias.LoadEffectiveAddressAsPtr() : null;
        var epilogue = new Epilogue(gelu.IsValid ? (float*)gelu.LoadEffectiveAddressAsPtr() : null,
            geluBias.IsValid && geluBias.Length > 0 ? (float*)geluBias.LoadEffectiveAddressAsPtr() : null);
        if (epilogue.Y != null && (batch != 1 || !wide || p.Ldc != p.N)) throw new ArgumentException("a GELU epilogue needs one product, wide tiles and ldc = N");

        long product = Interlocked.Increment(ref products);
        double flops = 2.0 * p.M * p.N * Math.Max(p.K, 1) * batch;
        bool parallel = flops >= 2e6 && Environment.ProcessorCount > 1;
        // Halve the block (the larger side first, in whole micro-tiles) until every core has two tasks.
        int mc = MC, nc = NC, wanted = parallel ? 2 * Environment.ProcessorCount : 1;
        int Tasks() => batch * ((p.M + mc - 1) / mc) * ((p.N + nc - 1) / nc);
        while (Tasks() < wanted && (mc > 4 * MR || nc > 4 * NR))
        {
            if (mc > 4 * MR && (mc >= nc || nc <= 4 * NR)) mc = (mc / 2 + MR - 1) / MR * MR;
            else nc = (nc / 2 + NR - 1) / NR * NR;
        }
        int mBlocks = (p.M + mc - 1) / mc, nBlocks = (p.N + nc - 1) / nc;
        // Even blocks (whole micro-tiles), so no core is left with a thin remainder: 128 rows as 64 + 64, not 96 + 32.
        mc = ((p.M + mBlocks - 1) / mBlocks + MR - 1) / MR * MR;
        nc = ((p.N + nBlocks - 1) / nBlocks + NR - 1) / NR * NR;
        mBlocks = (p.M + mc - 1) / mc;
        nBlocks = (p.N + nc - 1) / nc;
        int tasks = batch * mBlocks * nBlocks;
        var args = p;
        if (tasks == 1 || !parallel)
        {
            for (int t = 0; t < tasks; t++)
                RunTask(args, product, t, mBlocks, nBlocks, mc, nc, pa, pb, pc, pbias, wide, epilogue, packed);
            return;
        }
        // Pointers cannot be captured by a lambda; pass them as integers.
        nint ia = (nint)pa, ib = (nint)pb, ic = (nint)pc, ibias = (nint)pbias;
        float[]? shared = null;
        if (packed.Data == null && batch == 1 && mBlocks > 1 && (long)p.K * p.N <= SharedPackLimit)
        {
            // Every row block would pack the same B again (six times for BERT-base's 2048 rows): pack it once, all cores at it.
            shared = PackShared(p, pb, out packed);
        }
        try
        {
            HostParallel.For(0, tasks, t => RunTask(args, product, t, mBlocks, nBlocks, mc, nc,
                (float*)ia, (float*)ib, (float*)ic, (float*)ibias, wide, epilogue, packed));
        }
        finally
        {
            if (shared is not null) Interlocked.Exchange(ref sharedPack, shared);
        }
        GC.KeepAlive(packedB);
    }

    // The buffer of the last shared packing, reused by the next (a concurrent product that finds it taken allocates its own).
    // Kept for the process, so bounded: BERT-large's largest weight (4096 × 1024) fits; a vocabulary projection packs per task.
    private static float[]? sharedPack;
    private const long SharedPackLimit = 8L << 20; // floats (32 MiB)

    /// <summary>All of op(B) packed into the shared buffer (as <see cref="Pack"/> lays it out).</summary>
    private static float[] PackShared(GemmArgs p, float* b, out Prepacked packed)
    {
        int paddedN = (p.N + NR - 1) / NR * NR;
        long size = (long)Math.Max(p.K, 1) * paddedN;
        var buffer = Interlocked.Exchange(ref sharedPack, null);
        if (buffer is null || buffer.Length < size) buffer = GC.AllocateUninitializedArray<float>(checked((int)size), pinned: true);
        float* dst = (float*)System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(buffer, 0);
        PackWhole(p, b, dst, paddedN);
        packed = new Prepacked(dst, paddedN);
        return buffer;
    }

    /// <summary>All of op(B) into dst: K-slices × column blocks of NC spread over the cores, each slice at k0·paddedN.</summary>
    private static void PackWhole(GemmArgs p, float* b, float* dst, int paddedN)
    {
        int depth = SliceDepth(p.K), slices = (p.K + depth - 1) / depth, columnBlocks = (p.N + NC - 1) / NC;
        nint ib = (nint)b, id = (nint)dst;
        HostParallel.For(0, slices * columnBlocks, t =>
        {
            int k0 = t / columnBlocks * depth, j0 = t % columnBlocks * NC;
            int kc = Math.Min(depth, p.K - k0);
            PackB(p, (float*)ib, j0, Math.Min(NC, p.N - j0), k0, kc, (float*)id + (long)k0 * paddedN + (long)j0 * kc);
        });
    }

    /// <summary>
    /// op(B) packed once, whole: the K-slice starting at k0 holds the panels of every column at k0·paddedN, the
    /// panel of columns j… at + j·kc (what PackB writes for one block, for all N at once).
    /// </summary>
    private readonly struct Prepacked(float* data, int paddedN)
    {
        public readonly float* Data = data;
        public readonly int PaddedN = paddedN;
    }

    /// <summary>op(B) (K × N, <paramref name="p"/>'s TransB and Ldb) packed into the micro-kernel's panels.</summary>
    public static PackedMatrix Pack(GemmArgs p, ArrayView<float> b)
    {
        float* pb = (float*)b.LoadEffectiveAddressAsPtr();
        int paddedN = (p.N + NR - 1) / NR * NR;
        var data = GC.AllocateUninitializedArray<float>(checked(Math.Max(p.K, 1) * paddedN), pinned: true);
        fixed (float* dst = data)
            PackWhole(p, pb, dst, paddedN);
        return new PackedMatrix(data, (nint)pb, p, paddedN);
    }

    /// <summary>Where a GELU epilogue writes (null: none) and the bias it adds first.</summary>
    private readonly struct Epilogue(float* y, float* bias)
    {
        public readonly float* Y = y, Bias = bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunTask(GemmArgs p, long product, int task, int mBlocks, int nBlocks, int blockM, int blockN,
        float* a, float* b, float* c, float* bias, bool wide, Epilogue epilogue, Prepacked packed)
    {
        int perBatch = mBlocks * nBlocks;
        int batchIdx = task / perBatch, rest = task % perBatch;
        int i0 = rest / nBlocks * blockM, j0 = rest % nBlocks * blockN;
        int mc = Math.Min(blockM, p.M - i0), nc = Math.Min(blockN, p.N - j0);
        a += batchIdx * p.StrideA;
        b += batchIdx * p.StrideB;
        c += batchIdx * p.StrideC;

        int depth = SliceDepth(p.K), slices = (Math.Max(p.K, 1) + depth - 1) / depth;
        long sliceSize = (long)(mc + MR - 1) / MR * MR * depth, rows = (long)batchIdx * p.M + i0;
        bool keep = slices * sliceSize <= KeptALimit;
        long size = Math.Max(MC * KC, keep ? slices * sliceSize : 0) + 16; // +16: a transposed column store's run-over
        if (aPackBuffer is null || aPackBuffer.Length < size)
        {
            aPackBuffer = GC.AllocateUninitializedArray<float>((int)size, pinned: true);
            keptProduct = 0;
        }
        bool kept = keep && keptProduct == product && keptRows == rows;
        if (!kept) keptProduct = 0; // the buffer is about to be rewritten
        var bPack = bPackBuffer ??= GC.AllocateUninitializedArray<float>(NC * KC, pinned: true);
        fixed (float* ap = aPackBuffer, bp = bPack)
            Block(p, a, b, c, bias, i0, mc, j0, nc, ap, keep ? sliceSize : 0, kept, bp, wide, epilogue, packed);
        if (keep) (keptProduct, keptRows) = (product, rows);
    }

    /// <summary>
    /// C[i0.., j0..] (mc × nc) over all K slices, packing into ap and bp (B only when it is not prepacked). With a
    /// <paramref name="sliceSize"/>, ap keeps every K-slice (slice s at s·sliceSize), and <paramref name="kept"/> says
    /// they hold these rows already; without, each slice is packed at ap.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    [SkipLocalsInit] // the tile is written whole by the micro-kernel before it is read
    private static void Block(GemmArgs p, float* a, float* b, float* c, float* bias, int i0, int mc, int j0, int nc, float* aPack, long sliceSize,
        bool kept, float* bp, bool wide, Epilogue epilogue, Prepacked packed)
    {
        float* tile = stackalloc float[MR * NR];
        int kTotal = Math.Max(p.K, 1);
        int depth = SliceDepth(p.K);
        for (int k0 = 0; k0 < kTotal; k0 += depth)
        {
            int kc = Math.Clamp(p.K - k0, 0, depth);
            bool first = k0 == 0, last = k0 + depth >= kTotal;
            float* ap = aPack + k0 / depth * sliceSize;
            if (!kept) PackA(p, a, i0, mc, k0, kc, ap);
            if (packed.Data != null)
                bp = packed.Data + (long)k0 * packed.PaddedN + (long)j0 * kc;
            else
                PackB(p, b, j0, nc, k0, kc, bp);
            for (int jr = 0; jr < nc; jr += NR)
            {
                for (int ir = 0; ir < mc; ir += MR)
                {
                    float* aPanel = ap + ir * kc, bPanel = bp + jr * kc;
                    int rows = Math.Min(MR, mc - ir);
                    if (wide && rows <= 4)
                        Micro4x32(kc, aPanel, bPanel, tile); // a short last panel (batch 1: M = S rows) computes no padding rows
                    else if (wide && rows <= 8)
                        Micro8x32(kc, aPanel, bPanel, tile);
                    else if (wide)
                        Micro12x32(kc, aPanel, bPanel, tile);
                    else
                        for (int half = 0; half < 4; half++) // rows 0–5 / 6–11 × columns 0–15 / 16–31
                            Micro6x16(kc, aPanel + half / 2 * 6, bPanel + half % 2 * 16, tile + half / 2 * 6 * NR + half % 2 * 16);
                    if (last && epilogue.Y != null)
                        MergeGelu(p, c, epilogue, tile, i0 + ir, Math.Min(MR, mc - ir), j0 + jr, Math.Min(NR, nc - jr), first);
                    else
                        Merge(p, c, bias, tile, i0 + ir, Math.Min(MR, mc - ir), j0 + jr, Math.Min(NR, nc - jr), first);
                }
            }
        }
    }

    /// <summary>op(A)[i0.., k0..] into 12-row panels: panel r holds element (i, k) at k·12 + i.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackA(GemmArgs p, float* a, int i0, int mc, int k0, int kc, float* dst)
    {
        for (int ir = 0; ir < mc; ir += MR)
        {
            float* panel = dst + ir * kc;
            int rows = Math.Min(MR, mc - ir);
            if (p.TransA == 0 && rows == MR && Avx512F.IsSupported)
            {
                // Twelve rows of A, sixteen k at a time, transposed in registers; each 16-float column store
                // runs 4 floats into the next column's slot (rewritten next) or past the panel (the buffer's slack).
                float* src = a + (i0 + ir) * (long)p.Lda + k0;
                int kv = kc & ~15;
                for (int k = 0; k < kv; k += 16)
                    Transpose16x16(src + k, p.Lda, MR, panel + k * MR, MR);
                for (int r = 0; r < MR; r++)
                    for (int k = kv; k < kc; k++) panel[k * MR + r] = src[(long)r * p.Lda + k];
                continue;
            }
            if (p.TransA != 0 && rows == MR)
            {
                // Aᵀ stored: the twelve rows of a panel are twelve consecutive floats of each k's row.
                float* src = a + (long)k0 * p.Lda + i0 + ir;
                for (int k = 0; k < kc; k++)
                {
                    float* from = src + (long)k * p.Lda;
                    Vector256.Store(Vector256.Load(from), panel + k * MR);
                    Vector128.Store(Vector128.Load(from + 8), panel + k * MR + 8);
                }
                continue;
            }
            for (int r = 0; r < MR; r++)
            {
                if (r >= rows)
                {
                    for (int k = 0; k < kc; k++) panel[k * MR + r] = 0f;
                    continue;
                }
                long row = i0 + ir + r;
                if (p.TransA == 0)
                {
                    float* src = a + row * p.Lda + k0;
                    for (int k = 0; k < kc; k++) panel[k * MR + r] = src[k];
                }
                else
                {
                    float* src = a + (long)k0 * p.Lda + row;
                    for (int k = 0; k < kc; k++) panel[k * MR + r] = src[(long)k * p.Lda];
                }
            }
        }
    }

    /// <summary>op(B)[k0.., j0..] into 32-column panels: panel holds element (k, j) at k·32 + j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackB(GemmArgs p, float* b, int j0, int nc, int k0, int kc, float* dst)
    {
        for (int jr = 0; jr < nc; jr += NR)
        {
            float* panel = dst + jr * kc;
            int cols = Math.Min(NR, nc - jr);
            if (p.TransB == 0)
            {
                for (int k = 0; k < kc; k++)
                {
                    float* src = b + (long)(k0 + k) * p.Ldb + j0 + jr;
                    float* d = panel + k * NR;
                    if (cols == NR)
                        for (int j = 0; j < NR; j += 8) Vector256.Store(Vector256.Load(src + j), d + j);
                    else
                    {
                        for (int j = 0; j < NR; j++) d[j] = j < cols ? src[j] : 0f;
                    }
                }
            }
            else if (cols == NR && Avx512F.IsSupported)
            {
                // Thirty-two rows of Bᵀ (K-contiguous), transposed sixteen by sixteen in registers.
                float* src = b + (long)(j0 + jr) * p.Ldb + k0;
                int kv = kc & ~15;
                for (int k = 0; k < kv; k += 16)
                {
                    Transpose16x16(src + k, p.Ldb, 16, panel + k * NR, NR);
                    Transpose16x16(src + 16L * p.Ldb + k, p.Ldb, 16, panel + k * NR + 16, NR);
                }
                for (int j = 0; j < NR; j++)
                    for (int k = kv; k < kc; k++) panel[k * NR + j] = src[(long)j * p.Ldb + k];
            }
            else
            {
                for (int j = 0; j < NR; j++)
                {
                    if (j >= cols)
                    {
                        for (int k = 0; k < kc; k++) panel[k * NR + j] = 0f;
                        continue;
                    }
                    float* src = b + (long)(j0 + jr + j) * p.Ldb + k0;
                    for (int k = 0; k < kc; k++) panel[k * NR + j] = src[k];
                }
            }
        }
    }

    /// <summary>
    /// dst[t·dstStride + r] = src[r·ld + t] for 16 columns t and the first <paramref name="rows"/> (≤ 16) rows
    /// (missing rows repeat the last; each column is stored as 16 floats): 32-bit and 64-bit unpacks
    /// within 128-bit lanes, then two rounds of 128-bit lane shuffles.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose16x16(float* src, long ld, int rows, float* dst, int dstStride)
    {
        Vector512<float> Row(int r) => Vector512.Load(src + Math.Min(r, rows - 1) * ld);
        Vector512<float> r0 = Row(0), r1 = Row(1), r2 = Row(2), r3 = Row(3), r4 = Row(4), r5 = Row(5), r6 = Row(6), r7 = Row(7);
        Vector512<float> r8 = Row(8), r9 = Row(9), r10 = Row(10), r11 = Row(11), r12 = Row(12), r13 = Row(13), r14 = Row(14), r15 = Row(15);
        // Within each 128-bit lane L: t(2i) = [a0 b0 a1 b1], t(2i+1) = [a2 b2 a3 b3] of rows 2i, 2i+1.
        var t0 = Avx512F.UnpackLow(r0, r1); var t1 = Avx512F.UnpackHigh(r0, r1); var t2 = Avx512F.UnpackLow(r2, r3); var t3 = Avx512F.UnpackHigh(r2, r3);
        var t4 = Avx512F.UnpackLow(r4, r5); var t5 = Avx512F.UnpackHigh(r4, r5); var t6 = Avx512F.UnpackLow(r6, r7); var t7 = Avx512F.UnpackHigh(r6, r7);
        var t8 = Avx512F.UnpackLow(r8, r9); var t9 = Avx512F.UnpackHigh(r8, r9); var t10 = Avx512F.UnpackLow(r10, r11); var t11 = Avx512F.UnpackHigh(r10, r11);
        var t12 = Avx512F.UnpackLow(r12, r13); var t13 = Avx512F.UnpackHigh(r12, r13); var t14 = Avx512F.UnpackLow(r14, r15); var t15 = Avx512F.UnpackHigh(r14, r15);
        // u(4g + e): element 4L + e of rows 4g … 4g + 3, in lane L.
        static Vector512<float> Lo(Vector512<float> x, Vector512<float> y) => Avx512F.UnpackLow(x.AsDouble(), y.AsDouble()).AsSingle();
        static Vector512<float> Hi(Vector512<float> x, Vector512<float> y) => Avx512F.UnpackHigh(x.AsDouble(), y.AsDouble()).AsSingle();
        var u0 = Lo(t0, t2); var u1 = Hi(t0, t2); var u2 = Lo(t1, t3); var u3 = Hi(t1, t3);
        var u4 = Lo(t4, t6); var u5 = Hi(t4, t6); var u6 = Lo(t5, t7); var u7 = Hi(t5, t7);
        var u8 = Lo(t8, t10); var u9 = Hi(t8, t10); var u10 = Lo(t9, t11); var u11 = Hi(t9, t11);
        var u12 = Lo(t12, t14); var u13 = Hi(t12, t14); var u14 = Lo(t13, t15); var u15 = Hi(t13, t15);
        // Lanes (0, 2) and (1, 3) of rows 0–7 (v, w) and of rows 8–15 (x, y); column 4L + e is then rows 0–15 of lane L.
        static Vector512<float> Even(Vector512<float> a, Vector512<float> b) => Avx512F.Shuffle4x128(a, b, 0x88);
        static Vector512<float> Odd(Vector512<float> a, Vector512<float> b) => Avx512F.Shuffle4x128(a, b, 0xDD);
        var v0 = Even(u0, u4); var w0 = Odd(u0, u4); var x0 = Even(u8, u12); var y0 = Odd(u8, u12);
        var v1 = Even(u1, u5); var w1 = Odd(u1, u5); var x1 = Even(u9, u13); var y1 = Odd(u9, u13);
        var v2 = Even(u2, u6); var w2 = Odd(u2, u6); var x2 = Even(u10, u14); var y2 = Odd(u10, u14);
        var v3 = Even(u3, u7); var w3 = Odd(u3, u7); var x3 = Even(u11, u15); var y3 = Odd(u11, u15);
        // In column order: with a stride under 16 each store runs into the next column, which is stored after it.
        Even(v0, x0).Store(dst); Even(v1, x1).Store(dst + dstStride); Even(v2, x2).Store(dst + 2 * dstStride); Even(v3, x3).Store(dst + 3 * dstStride);
        Even(w0, y0).Store(dst + 4 * dstStride); Even(w1, y1).Store(dst + 5 * dstStride); Even(w2, y2).Store(dst + 6 * dstStride); Even(w3, y3).Store(dst + 7 * dstStride);
        Odd(v0, x0).Store(dst + 8 * dstStride); Odd(v1, x1).Store(dst + 9 * dstStride); Odd(v2, x2).Store(dst + 10 * dstStride); Odd(v3, x3).Store(dst + 11 * dstStride);
        Odd(w0, y0).Store(dst + 12 * dstStride); Odd(w1, y1).Store(dst + 13 * dstStride); Odd(w2, y2).Store(dst + 14 * dstStride); Odd(w3, y3).Store(dst + 15 * dstStride);
    }

    /// <summary>tile (12 × 32, row stride 32) = Σ_k a[k·12 + i]·b[k·32 + j]: 24 Vector512 accumulators of AVX-512's 32 registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro12x32(int kc, float* a, float* b, float* tile)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default, c80 = default, c81 = default, c90 = default, c91 = default, c100 = default, c101 = default, c110 = default, c111 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60); c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70); c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            x = Vector512.Create(a[8]);
            c80 = Vector512.FusedMultiplyAdd(x, b0, c80); c81 = Vector512.FusedMultiplyAdd(x, b1, c81);
            x = Vector512.Create(a[9]);
            c90 = Vector512.FusedMultiplyAdd(x, b0, c90); c91 = Vector512.FusedMultiplyAdd(x, b1, c91);
            x = Vector512.Create(a[10]);
            c100 = Vector512.FusedMultiplyAdd(x, b0, c100); c101 = Vector512.FusedMultiplyAdd(x, b1, c101);
            x = Vector512.Create(a[11]);
            c110 = Vector512.FusedMultiplyAdd(x, b0, c110); c111 = Vector512.FusedMultiplyAdd(x, b1, c111);
            a += MR;
            b += NR;
        }
        c00.Store(tile + 0); c01.Store(tile + 16);
        c10.Store(tile + 32); c11.Store(tile + 48);
        c20.Store(tile + 64); c21.Store(tile + 80);
        c30.Store(tile + 96); c31.Store(tile + 112);
        c40.Store(tile + 128); c41.Store(tile + 144);
        c50.Store(tile + 160); c51.Store(tile + 176);
        c60.Store(tile + 192); c61.Store(tile + 208);
        c70.Store(tile + 224); c71.Store(tile + 240);
        c80.Store(tile + 256); c81.Store(tile + 272);
        c90.Store(tile + 288); c91.Store(tile + 304);
        c100.Store(tile + 320); c101.Store(tile + 336);
        c110.Store(tile + 352); c111.Store(tile + 368);
    }

    /// <summary>The first 8 rows of <see cref="Micro12x32"/>'s tile (a still 12-row panel): 16 accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro8x32(int kc, float* a, float* b, float* tile)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a[6]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60); c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a[7]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70); c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            a += MR;
            b += NR;
        }
        c00.Store(tile + 0); c01.Store(tile + 16);
        c10.Store(tile + 32); c11.Store(tile + 48);
        c20.Store(tile + 64); c21.Store(tile + 80);
        c30.Store(tile + 96); c31.Store(tile + 112);
        c40.Store(tile + 128); c41.Store(tile + 144);
        c50.Store(tile + 160); c51.Store(tile + 176);
        c60.Store(tile + 192); c61.Store(tile + 208);
        c70.Store(tile + 224); c71.Store(tile + 240);
    }

    /// <summary>The first 4 rows of <see cref="Micro12x32"/>'s tile: 8 accumulators, as many as two FMA pipes of latency 4 keep busy.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro4x32(int kc, float* a, float* b, float* tile)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            a += MR;
            b += NR;
        }
        c00.Store(tile + 0); c01.Store(tile + 16);
        c10.Store(tile + 32); c11.Store(tile + 48);
        c20.Store(tile + 64); c21.Store(tile + 80);
        c30.Store(tile + 96); c31.Store(tile + 112);
    }

    /// <summary>A 6 × 16 quarter of a 12 × 32 tile on Vector256: six rows of a (row stride 12), sixteen columns of b (row stride 32), into tile (row stride 32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Micro6x16(int kc, float* a, float* b, float* tile)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int k = 0; k < kc; k++)
        {
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            var x = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00); c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(a[1]);
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10); c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(a[2]);
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20); c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(a[3]);
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30); c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(a[4]);
            c40 = Vector256.FusedMultiplyAdd(x, b0, c40); c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(a[5]);
            c50 = Vector256.FusedMultiplyAdd(x, b0, c50); c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
            a += MR;
            b += NR;
        }
        c00.Store(tile); c01.Store(tile + 8); c10.Store(tile + NR); c11.Store(tile + NR + 8);
        c20.Store(tile + 2 * NR); c21.Store(tile + 2 * NR + 8); c30.Store(tile + 3 * NR); c31.Store(tile + 3 * NR + 8);
        c40.Store(tile + 4 * NR); c41.Store(tile + 4 * NR + 8); c50.Store(tile + 5 * NR); c51.Store(tile + 5 * NR + 8);
    }

    /// <summary>C = α·tile + β·C + bias on the first K-slice; C += α·tile on later ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Merge(GemmArgs p, float* c, float* bias, float* tile, int row0, int rows, int col0, int cols, bool first)
    {
        if (cols == NR && Vector512.IsHardwareAccelerated)
        {
            // A whole tile row is two 16-lane vectors; the branches are decided once per tile, not per element.
            var alpha = Vector512.Create(p.Alpha);
            var beta = Vector512.Create(p.Beta);
            var bias0 = bias != null ? Vector512.Load(bias + col0) : Vector512<float>.Zero;
            var bias1 = bias != null ? Vector512.Load(bias + col0 + 16) : Vector512<float>.Zero;
            bool accumulate = !first, scaleOld = first && p.Beta != 0f;
            for (int r = 0; r < rows; r++)
            {
                float* dst = c + (long)(row0 + r) * p.Ldc + col0;
                float* src = tile + r * NR;
                var v0 = alpha * Vector512.Load(src);
                var v1 = alpha * Vector512.Load(src + 16);
                if (accumulate)
                {
                    v0 += Vector512.Load(dst);
                    v1 += Vector512.Load(dst + 16);
                }
                else
                {
                    if (scaleOld)
                    {
                        v0 += beta * Vector512.Load(dst);
                        v1 += beta * Vector512.Load(dst + 16);
                    }
                    v0 += bias0;
                    v1 += bias1;
                }
                v0.Store(dst);
                v1.Store(dst + 16);
            }
            return;
        }
        for (int r = 0; r < rows; r++)
        {
            float* dst = c + (long)(row0 + r) * p.Ldc + col0;
            float* src = tile + r * NR;
            for (int j = 0; j < cols; j++)
            {
                float v = p.Alpha * src[j];
                if (!first)
                    v += dst[j];
                else
                {
                    if (p.Beta != 0f) v += p.Beta * dst[j];
                    if (bias != null) v += bias[col0 + j];
                }
                dst[j] = v;
            }
        }
    }

    /// <summary>
    /// A tile's last K-slice with the GELU epilogue: v = α·tile + (C from earlier slices, or β·C); C = v unless C is
    /// y (no pre-activation wanted); y = GELU(v + bias). Same per-element operations as Merge, then ActivationRows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MergeGelu(GemmArgs p, float* c, Epilogue e, float* tile, int row0, int rows, int col0, int cols, bool first)
    {
        bool keepPre = c != e.Y, scaleOld = first && p.Beta != 0f;
        for (int r = 0; r < rows; r++)
        {
            long at = (long)(row0 + r) * p.Ldc + col0;
            float* src = tile + r * NR;
            int j = 0;
            for (; j + 16 <= cols; j += 16)
            {
                var v = p.Alpha * Vector512.Load(src + j);
                if (!first) v += Vector512.Load(c + at + j);
                else if (scaleOld) v += p.Beta * Vector512.Load(c + at + j);
                if (keepPre) v.Store(c + at + j);
                if (e.Bias != null) v += Vector512.Load(e.Bias + col0 + j);
                HostRows.GeluErf512(v).Store(e.Y + at + j);
            }
            for (; j < cols; j++)
            {
                float v = p.Alpha * src[j];
                if (!first) v += c[at + j];
                else if (scaleOld) v += p.Beta * c[at + j];
                if (keepPre) c[at + j] = v;
                if (e.Bias != null) v += e.Bias[col0 + j];
                e.Y[at + j] = default(GeluErf).Apply(v, out _);
            }
        }
    }
}

/// <summary>
/// op(B) of a product packed once into the CPU GEMM's panels (<see cref="GemmKernels.PackB"/>), as ONNX Runtime
/// prepacks a MatMul's constant weight: every later product with it skips packing. A snapshot of B when packed.
/// </summary>
public sealed unsafe class PackedMatrix
{
    private readonly float[] data; // pinned
    private readonly nint source;
    private readonly GemmArgs shape;

    internal PackedMatrix(float[] data, nint source, GemmArgs shape, int paddedN)
    {
        this.data = data;
        this.source = source;
        this.shape = shape;
        PaddedN = paddedN;
    }

    internal int PaddedN { get; }
    internal float* Pointer => (float*)System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(data, 0);

    /// <summary>
    /// Same matrix (its first element's address), shape, leading dimension and transposition; with no B given
    /// (null: the packed copy is all there is of it, PackedLinears with released weights) the shape alone.
    /// </summary>
    internal bool Matches(GemmArgs p, float* b) =>
        (b == null || (nint)b == source) && p.N == shape.N && p.K == shape.K && p.Ldb == shape.Ldb && p.TransB == shape.TransB;

    public override string ToString() => $"{shape.K}×{shape.N}, {(shape.TransB != 0 ? "T" : "N")}, ldb {shape.Ldb}";
}
