// GEMM: C = α·op(A)·op(B) + β·C (+ bias[j]), op ∈ {N, T}, strided batches, float32, row-major;
// optionally fused with an activation for Linear layers: C = op(A)·op(B) (the pre-activation that
// backward needs) and Y = act(C + bias) in the same pass.
//
// Shapes: op(A) is [M, K], op(B) is [K, N], C is [M, N]. A is stored [M, K] (N) or [K, M] (T) with
// leading dimension lda; likewise B is [K, N] (N) or [N, K] (T). β = 0 never reads C (BLAS rule), so
// an uninitialised C is fine. The optional bias is the fused epilogue of a Linear layer.
//
// Three paths, one contract:
// - Tile128 (GPUs, large shapes): 128×128 block tiles, 8-deep K slices, 256 threads each holding
//   an 8×8 register tile (rows ty·4+i and 64+ty·4+i, columns tx·4+j and 64+tx·4+j, so every shared
//   read is a 128-bit load the warp mostly broadcasts). The next K slice is fetched into registers
//   while the current one is multiplied (double-buffered shared memory, one barrier per slice);
//   global loads are 128-bit where the operand's start, leading dimension and batch stride allow it
//   (GemmArgs.Vec*), with per-element bounds only at the edges of the matrix.
// - Tile64 (thin shapes, or too few 128-tiles to fill the GPU): 64×64 tiles, 16-deep slices,
//   4×4 per thread, the same loading scheme.
// - On ILGPU's CPU accelerator, host SIMD code on the accelerator's own buffers (HostGemm), since
//   the emulator runs one OS thread per GPU thread and would be ~100× slower.
// The inner loops are unrolled by hand (ILGPU 1.5.3 unrolls nothing) and index with 32-bit
// integers inside one matrix; each batch's operands are sub-views taken once per group.
// Backward of C = op(A)·op(B) is two more GEMMs (see Backward).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using GemmLaunch = System.Action<ILGPU.KernelConfig, ILGPU.ArrayView<float>, ILGPU.ArrayView<float>, ILGPU.ArrayView<float>,
    ILGPU.ArrayView<float>, ILGPU.ArrayView<float>, IlgpuBert.Kernels.GemmArgs>;

namespace IlgpuBert.Kernels;

public enum Transpose { N, T }

/// <summary>Which block tile a GEMM runs with on a GPU (null: chosen by shape).</summary>
public enum GemmTile { Tile64, Tile128, Tf32 }

/// <summary>Everything the tiled kernels need besides the buffers.</summary>
public struct GemmArgs
{
    public int M, N, K, Lda, Ldb, Ldc;
    public int TransA, TransB, HasBias;
    public float Alpha, Beta;
    public long StrideA, StrideB, StrideC;

    /// <summary>1 when 128-bit loads/stores of that operand are aligned: start, ld and stride multiples of 4 floats.</summary>
    public int VecA, VecB, VecC;
}

public sealed class GemmKernels
{
    public const int Threads = 256;
    public const int BigM = 128, BigN = 128, BigK = 8, ThinM = 64, ThinN = 64, ThinK = 16;

    private readonly KernelSet set;
    private readonly Lazy<GemmLaunch> big, thin;
    private readonly Lazy<GemmLaunch>[] bigAct, thinAct;
    private readonly Lazy<GemmLaunch> tf32;

    internal GemmKernels(KernelSet set)
    {
        this.set = set;
        big = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile128Kernel<PlainOutput>));
        tf32 = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tf32Kernel));
        UseTensorCores = set.Accelerator is ILGPU.Runtime.Cuda.CudaAccelerator { Architecture.Major: >= 8 };
        thin = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile64Kernel<PlainOutput>));
        bigAct =
        [
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile128Kernel<ActivatedOutput<GeluErf>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile128Kernel<ActivatedOutput<GeluTanh>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile128Kernel<ActivatedOutput<Relu>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile128Kernel<ActivatedOutput<TanhActivation>>)),
        ];
        thinAct =
        [
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile64Kernel<ActivatedOutput<GeluErf>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile64Kernel<ActivatedOutput<GeluTanh>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile64Kernel<ActivatedOutput<Relu>>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(Tile64Kernel<ActivatedOutput<TanhActivation>>)),
        ];
    }

    /// <summary>When true on the CPU accelerator, run the ILGPU kernels instead of host SIMD code (tests).</summary>
    public bool ForceDeviceKernel { get; set; }

    /// <summary>Forces one block tile (tests, benchmarks); null lets the shape decide.</summary>
    public GemmTile? ForceTile { get; set; }

    /// <summary>
    /// Whether large GEMMs without a fused activation run on TF32 tensor cores (operands rounded to a
    /// 10-bit mantissa, FP32 accumulation; PyTorch's allow_tf32). True on CUDA devices of compute
    /// capability 8.0 and later; set false for FP32 products everywhere.
    /// </summary>
    public bool UseTensorCores { get; set; }

    /// <summary>
    /// The CPU host path's micro-kernel: 12×32 of Vector512 when true (the default where AVX-512
    /// is accelerated), else four 6×16 quarters of Vector256. Tests set false to run the other.
    /// </summary>
    public bool HostVector512 { get; set; } = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;

    private bool UseHost => set.IsCpu && !ForceDeviceKernel;

    /// <summary>
    /// C = α·op(A)·op(B) + β·C (+ bias), for <paramref name="batch"/> matrices whose starts are
    /// strideA/strideB/strideC floats apart. bias (length N) is optional: pass default.
    /// </summary>
    public void Forward(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, float beta,
        ArrayView<float> c, int ldc, ArrayView<float> bias = default,
        int batch = 1, long strideA = 0, long strideB = 0, long strideC = 0, PackedMatrix? packedB = null)
    {
        var args = Args(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, batch, strideA, strideB, strideC, packedB);
        if (m == 0 || n == 0 || batch == 0)
            return;
        if (UseHost)
        {
            set.Accelerator.Synchronize(); // kernels queued before us must have written A, B and C
            HostGemm.Run(args, batch, a, b, c, bias, HostVector512, packedB: packedB);
            return;
        }
        Launch(args, batch, a, b, c, bias, c, null);
    }

    /// <summary>
    /// A Linear layer with its activation in one pass: pre = op(A)·op(B) ([M, N], what the
    /// activation's backward needs) and y = act(pre + bias) (bias optional). Where
    /// <see cref="FusesWithoutPre"/> holds, pre may be left out (default) when no backward follows.
    /// </summary>
    public void ForwardActivation(Transpose ta, Transpose tb, int m, int n, int k, ArrayView<float> a, int lda,
        ArrayView<float> b, int ldb, ArrayView<float> pre, int ldc, ArrayView<float> bias, ActivationKind act, ArrayView<float> y,
        PackedMatrix? packedB = null)
    {
        bool keepPre = pre.IsValid && pre.Length > 0;
        if (!keepPre && !FusesWithoutPre(act)) throw new ArgumentException($"pre is needed for {act} on {set.Accelerator.AcceleratorType}");
        var args = Args(ta, tb, m, n, k, 1f, a, lda, b, ldb, 0f, keepPre ? pre : y, ldc, bias, 1, 0, 0, 0, packedB);
        Check.Vector("y", y, (long)(m - 1) * ldc + n);
        if (m == 0 || n == 0)
            return;
        if (UseHost)
        {
            set.Accelerator.Synchronize();
            args.HasBias = 0;
            if (ldc != n) throw new ArgumentException("a fused activation on the CPU needs ldc = N");
            if (act == ActivationKind.GeluErf && HostVector512)
            {
                // GELU as each tile is finished (the tile is still in cache), not as a second pass over [M, N].
                HostGemm.Run(args, 1, a, b, keepPre ? pre : y, default, true, y, bias, packedB);
                return;
            }
            HostGemm.Run(args, 1, a, b, pre, default, HostVector512, packedB: packedB);
            set.Activation.Forward(act, pre, bias, y, m, n);
            return;
        }
        Launch(args, 1, a, b, pre, bias, y, act);
    }

    /// <summary>
    /// op(B) (K × N) packed once for later <see cref="Forward"/> and <see cref="ForwardActivation"/> calls with this
    /// same B (pass it as packedB): a Linear layer's weight in inference, which the CPU path otherwise repacks on
    /// every call. A snapshot — B must not change while the packed copy is used. Null where B is read as it is
    /// (the GPU kernels, and the CPU when forced onto them); the calls then take null.
    /// </summary>
    public PackedMatrix? PackB(Transpose tb, int n, int k, ArrayView<float> b, int ldb)
    {
        var args = new GemmArgs { M = 1, N = n, K = k, Lda = Math.Max(k, 1), Ldb = ldb, Ldc = Math.Max(n, 1), TransB = tb == Transpose.T ? 1 : 0 };
        if (n < 1) throw new ArgumentException($"GEMM B needs at least one column, got N={n}");
        Validate(args, 1, k, b.IsValid ? b.Length : 0, n, 0);
        if (!UseHost) return null;
        set.Accelerator.Synchronize();
        return HostGemm.Pack(args, b);
    }

    /// <summary>Whether <see cref="ForwardActivation"/> can skip the pre-activation (inference): BERT's GELU on the CPU path with AVX-512.</summary>
    public bool FusesWithoutPre(ActivationKind act) => UseHost && HostVector512 && act == ActivationKind.GeluErf;

    private GemmArgs Args(Transpose ta, Transpose tb, int m, int n, int k, float alpha, ArrayView<float> a, int lda,
        ArrayView<float> b, int ldb, float beta, ArrayView<float> c, int ldc, ArrayView<float> bias,
        int batch, long strideA, long strideB, long strideC, PackedMatrix? packedB = null)
    {
        var args = new GemmArgs
        {
            M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc,
            TransA = ta == Transpose.T ? 1 : 0, TransB = tb == Transpose.T ? 1 : 0,
            HasBias = bias.IsValid && bias.Length > 0 ? 1 : 0,
            Alpha = alpha, Beta = beta, StrideA = strideA, StrideB = strideB, StrideC = strideC,
        };
        // B may be absent when its packed copy is given: the copy is then all there is of it (PackedMatrix.Matches checks the shape).
        Validate(args, batch, a.Length, !b.IsValid && packedB is not null ? long.MaxValue : b.Length, c.Length, bias.IsValid ? bias.Length : 0);
        args.VecA = Vectorizable(a, lda, strideA);
        args.VecB = Vectorizable(b, ldb, strideB);
        args.VecC = Vectorizable(c, ldc, strideC);
        return args;
    }

    /// <summary>1 when every 4-aligned chunk of a row of the operand starts on a 16-byte boundary.</summary>
    private static int Vectorizable(ArrayView<float> view, int ld, long stride) =>
        view.IsValid && ((IContiguousArrayView)view).Index % 4 == 0 && ld % 4 == 0 && stride % 4 == 0 ? 1 : 0;

    private void Launch(GemmArgs args, int batch, ArrayView<float> a, ArrayView<float> b, ArrayView<float> c,
        ArrayView<float> bias, ArrayView<float> y, ActivationKind? act)
    {
        if (ForceTile == GemmTile.Tf32 && act is not null)
            throw new ArgumentException("the TF32 tile has no fused activation: force Tile64 or Tile128 for ForwardActivation");
        var tile = ForceTile ?? ChooseTile(args.M, args.N, batch, act is not null);
        var bias0 = args.HasBias != 0 ? bias : c;
        if (tile == GemmTile.Tf32)
            tf32.Value(new KernelConfig(new Index3D((args.N + BigN - 1) / BigN, (args.M + BigM - 1) / BigM, batch), new Index3D(Threads, 1, 1)),
                a, b, c, bias0, y, args);
        else if (tile == GemmTile.Tile128)
        {
            var kernel = act is { } k128 ? bigAct[(int)k128].Value : big.Value;
            kernel(new KernelConfig(new Index3D((args.N + BigN - 1) / BigN, (args.M + BigM - 1) / BigM, batch), new Index3D(Threads, 1, 1)),
                a, b, c, bias0, y, args);
        }
        else
        {
            var kernel = act is { } k64 ? thinAct[(int)k64].Value : thin.Value;
            kernel(new KernelConfig(new Index3D((args.N + ThinN - 1) / ThinN, (args.M + ThinM - 1) / ThinM, batch), new Index3D(Threads, 1, 1)),
                a, b, c, bias0, y, args);
        }
    }

    /// <summary>
    /// 128-tiles when both dimensions fill them and there are enough to occupy every multiprocessor: on
    /// TF32 tensor cores where they are used, unless an activation is fused (the TF32 tile has none).
    /// </summary>
    private GemmTile ChooseTile(int m, int n, int batch, bool activated)
    {
        if (m <= ThinM || n <= ThinN) return GemmTile.Tile64;
        long tiles = (long)((m + BigM - 1) / BigM) * ((n + BigN - 1) / BigN) * batch;
        if (tiles < set.Accelerator.NumMultiprocessors) return GemmTile.Tile64;
        return UseTensorCores && !activated ? GemmTile.Tf32 : GemmTile.Tile128;
    }

    /// <summary>
    /// Gradients of C = op(A)·op(B) (no α, β): dA += dC·op(B)ᵀ and dB += op(A)ᵀ·dC, each laid out
    /// like its operand. Either may be skipped with default. Accumulates (β = 1) when
    /// <paramref name="accumulate"/>, else overwrites.
    /// </summary>
    public void Backward(Transpose ta, Transpose tb, int m, int n, int k,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, ArrayView<float> dC, int ldc,
        ArrayView<float> dA, ArrayView<float> dB, bool accumulate,
        int batch = 1, long strideA = 0, long strideB = 0, long strideC = 0)
    {
        float beta = accumulate ? 1f : 0f;
        if (dA.IsValid && dA.Length > 0)
        {
            // op(A) = dC·op(B)ᵀ: for A stored [M,K] that is dC[M,N]·B'ᵀ; for A stored [K,M], dAᵀ = op(B)·dCᵀ.
            if (ta == Transpose.N)
                Forward(Transpose.N, tb == Transpose.N ? Transpose.T : Transpose.N, m, k, n, 1f,
                    dC, ldc, b, ldb, beta, dA, lda, default, batch, strideC, strideB, strideA);
            else
                Forward(tb, Transpose.T, k, m, n, 1f,
                    b, ldb, dC, ldc, beta, dA, lda, default, batch, strideB, strideC, strideA);
        }
        if (dB.IsValid && dB.Length > 0)
        {
            // op(B) = op(A)ᵀ·dC: for B stored [K,N] that is op(A)ᵀ·dC; for B stored [N,K], dBᵀ = dCᵀ·op(A).
            if (tb == Transpose.N)
                Forward(ta == Transpose.N ? Transpose.T : Transpose.N, Transpose.N, k, n, m, 1f,
                    a, lda, dC, ldc, beta, dB, ldb, default, batch, strideA, strideC, strideB);
            else
                Forward(Transpose.T, ta, n, k, m, 1f,
                    dC, ldc, a, lda, beta, dB, ldb, default, batch, strideC, strideA, strideB);
        }
    }

    private static void Validate(GemmArgs p, int batch, long aLen, long bLen, long cLen, long biasLen)
    {
        if (p.M < 0 || p.N < 0 || p.K < 0 || batch < 0)
            throw new ArgumentException($"GEMM dimensions must be non-negative (M={p.M}, N={p.N}, K={p.K}, batch={batch})");
        int aCols = p.TransA == 0 ? p.K : p.M, aRows = p.TransA == 0 ? p.M : p.K;
        int bCols = p.TransB == 0 ? p.N : p.K, bRows = p.TransB == 0 ? p.K : p.N;
        if (p.Lda < Math.Max(1, aCols) || p.Ldb < Math.Max(1, bCols) || p.Ldc < Math.Max(1, p.N))
            throw new ArgumentException($"GEMM leading dimensions too small (lda={p.Lda}, ldb={p.Ldb}, ldc={p.Ldc})");
        if (batch == 0 || p.M == 0 || p.N == 0)
            return;
        Need("A", aLen, p.StrideA * (batch - 1) + (aRows == 0 ? 0 : (long)(aRows - 1) * p.Lda + aCols));
        Need("B", bLen, p.StrideB * (batch - 1) + (bRows == 0 ? 0 : (long)(bRows - 1) * p.Ldb + bCols));
        Need("C", cLen, p.StrideC * (batch - 1) + (long)(p.M - 1) * p.Ldc + p.N);
        if (p.HasBias != 0)
            Need("bias", biasLen, p.N);
    }

    private static void Need(string name, long have, long need)
    {
        if (have < need)
            throw new ArgumentException($"GEMM operand {name} has {have} elements, needs {need}");
    }

    /// <summary>
    /// Four consecutive elements [r, c..c+3] of a row-major operand with leading dimension ld and
    /// bounds rows × cols; zero outside. One 128-bit load when vectorizable and wholly inside.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 LoadChunk(ArrayView<float> v, ArrayView<Float4> v4, int vec, int r, int rows, int c, int cols, int ld)
    {
        if (r >= rows)
            return default;
        int off = r * ld + c;
        if (vec != 0 && c + 3 < cols)
            return v4[off >> 2];
        return new Float4(c < cols ? v[off] : 0f, c + 1 < cols ? v[off + 1] : 0f,
            c + 2 < cols ? v[off + 2] : 0f, c + 3 < cols ? v[off + 3] : 0f);
    }

    /// <summary>
    /// The operand of this batch as float4s, offset in float4 units so the 16-byte alignment ILGPU
    /// assumes of kernel arguments carries over (an offset in floats would split every load into
    /// four). Only used when <paramref name="vec"/> says starts, leading dimension and stride allow it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ArrayView<Float4> Batch4(ArrayView<float> v, long batch, long stride, int vec)
    {
        var v4 = v.Cast<Float4>();
        long off = vec != 0 ? batch * (stride >> 2) : 0;
        return v4.SubView(off, v4.Length - off);
    }

    /// <summary>Stores a chunk as column j of four consecutive rows r..r+3 of a [rows][ld] shared tile.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTransposed(ArrayView<float> tile, int r, int j, int ld, Float4 f)
    {
        tile[r * ld + j] = f.X;
        tile[(r + 1) * ld + j] = f.Y;
        tile[(r + 2) * ld + j] = f.Z;
        tile[(r + 3) * ld + j] = f.W;
    }

    [GpuGroup(Threads)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Tile128Kernel<TOut>(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> bias,
        ArrayView<float> y, GemmArgs p)
        where TOut : struct, IGemmOutput
    {
        // Two K slices of each operand, k-major: aS[buf][k][m] and bS[buf][k][n], as float4s.
        var aTile = SharedMemory.Allocate<float>(2 * BigK * BigM);
        var bTile = SharedMemory.Allocate<float>(2 * BigK * BigN);
        var aS = aTile.Cast<Float4>();
        var bS = bTile.Cast<Float4>();
        int tid = Group.IdxX, tx = tid & 15, ty = tid >> 4;
        int n0 = Grid.IdxX * BigN, m0 = Grid.IdxY * BigM;
        long batch = Grid.IdxZ;
        var a4 = Batch4(a, batch, p.StrideA, p.VecA);
        var b4 = Batch4(b, batch, p.StrideB, p.VecB);
        a = a.SubView(batch * p.StrideA, a.Length - batch * p.StrideA);
        b = b.SubView(batch * p.StrideB, b.Length - batch * p.StrideB);

        var chunks = new SliceChunks128(p, tid, m0, n0);

        var acc = new Acc8x8();
        int slices = (p.K + BigK - 1) / BigK;
        Float4 ra = default, rb = default;
        // Iteration s stores slice s (fetched by the previous iteration), fetches slice s + 1 into
        // registers, then multiplies slice s; iteration −1 only fetches. One barrier per slice: the
        // buffer being written was last read two slices ago, before the previous barrier.
        for (int s = -1; s < slices; s++)
        {
            int buf = s & 1;
            if (s >= 0)
            {
                StoreSlice(aTile, aS, chunks.AK, buf * BigK, BigM, tid, ra);
                StoreSlice(bTile, bS, chunks.BK, buf * BigK, BigN, tid, rb);
                Group.Barrier();
            }
            if (s + 1 < slices)
            {
                int k1 = (s + 1) * BigK;
                ra = chunks.FetchA(a, a4, p, k1);
                rb = chunks.FetchB(b, b4, p, k1);
            }
            if (s < 0)
                continue;
            // This slice's columns of the thread, so every unrolled step below reads at a constant offset.
            var at = aS.SubView(buf * BigK * (BigM / 4) + ty, BigK * (BigM / 4) - 15);
            var bt = bS.SubView(buf * BigK * (BigN / 4) + tx, BigK * (BigN / 4) - 15);
            acc.Fma(at[0], at[16], bt[0], bt[16]);
            acc.Fma(at[32], at[48], bt[32], bt[48]);
            acc.Fma(at[64], at[80], bt[64], bt[80]);
            acc.Fma(at[96], at[112], bt[96], bt[112]);
            acc.Fma(at[128], at[144], bt[128], bt[144]);
            acc.Fma(at[160], at[176], bt[160], bt[176]);
            acc.Fma(at[192], at[208], bt[192], bt[208]);
            acc.Fma(at[224], at[240], bt[224], bt[240]);
        }

        int colLo = n0 + tx * 4, colHi = n0 + 64 + tx * 4;
        Float4 biasLo = default, biasHi = default;
        if (p.HasBias != 0)
        {
            biasLo = LoadChunk(bias, default, 0, 0, 1, colLo, p.N, 0);
            biasHi = LoadChunk(bias, default, 0, 0, 1, colHi, p.N, 0);
        }
        var c4 = Batch4(c, batch, p.StrideC, p.VecC);
        c = c.SubView(batch * p.StrideC, c.Length - batch * p.StrideC);
        var output = default(TOut);
        for (int i = 0; i < 8; i++)
        {
            // One copy of the store code for all eight rows; the switch picks the row's registers.
            acc.Row(i, out var lo, out var hi);
            output.Row(c, c4, y, p, m0 + (i >> 2) * 64 + ty * 4 + (i & 3), colLo, colHi, biasLo, biasHi, lo, hi);
        }
        if (output.HasFinish)
            for (int i = 0; i < 8; i++)
                output.Finish(c, c4, y, p, m0 + (i >> 2) * 64 + ty * 4 + (i & 3), colLo, colHi, biasLo, biasHi);
    }

    /// <summary>
    /// Which chunk of each operand's 8-deep, 128-wide K slice a thread of a 256-thread group fetches
    /// (Tile128Kernel, Tf32Kernel). A slice holds 256 chunks of four consecutive elements of each
    /// operand, one per thread. Of a k-contiguous operand (A not transposed, B transposed) that is row
    /// tid/2 at k-quad tid%2, stored transposed; of an m- (n-) contiguous one, k-row tid/32 at quad
    /// tid%32, stored as is.
    /// </summary>
    private readonly struct SliceChunks128
    {
        public readonly bool AK, BK;
        private readonly int aR, aC, bR, bC, aRows, aCols, bRows, bCols;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public SliceChunks128(GemmArgs p, int tid, int m0, int n0)
        {
            AK = p.TransA == 0;
            BK = p.TransB != 0;
            aR = AK ? m0 + (tid >> 1) : tid >> 5;
            aC = AK ? (tid & 1) * 4 : m0 + (tid & 31) * 4;
            bR = BK ? n0 + (tid >> 1) : tid >> 5;
            bC = BK ? (tid & 1) * 4 : n0 + (tid & 31) * 4;
            aRows = AK ? p.M : p.K;
            aCols = AK ? p.K : p.M;
            bRows = BK ? p.N : p.K;
            bCols = BK ? p.K : p.N;
        }

        /// <summary>This thread's chunk of A's slice from k1.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Float4 FetchA(ArrayView<float> a, ArrayView<Float4> a4, GemmArgs p, int k1) =>
            LoadChunk(a, a4, p.VecA, AK ? aR : aR + k1, aRows, AK ? aC + k1 : aC, aCols, p.Lda);

        /// <summary>This thread's chunk of B's slice from k1.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Float4 FetchB(ArrayView<float> b, ArrayView<Float4> b4, GemmArgs p, int k1) =>
            LoadChunk(b, b4, p.VecB, BK ? bR : bR + k1, bRows, BK ? bC + k1 : bC, bCols, p.Ldb);
    }

    /// <summary>
    /// Puts this thread's chunk of a 128-wide slice into shared memory (k-major [k][m], rows ld floats
    /// apart, a multiple of 4): transposed
    /// from a k-contiguous operand (row tid/2, k-quad tid%2), directly otherwise (k-row tid/32,
    /// quad tid%32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreSlice(ArrayView<float> tile, ArrayView<Float4> tile4, bool kContiguous, int k0, int ld, int tid, Float4 chunk)
    {
        if (kContiguous)
            StoreTransposed(tile, k0 + (tid & 1) * 4, tid >> 1, ld, chunk);
        else
            tile4[(k0 + (tid >> 5)) * (ld / 4) + (tid & 31)] = chunk;
    }

    /// <summary>Row length of the TF32 kernel's shared tiles: 128 plus 8, so the fragment reads of a warp hit 32 different banks.</summary>
    public const int Tf32Ld = BigM + 8;

    /// <summary>
    /// C = α·op(A)·op(B) + β·C (+ bias) on TF32 tensor cores (TensorCores.cs): the 128×128 block tiles,
    /// 8-deep K slices and double-buffered loads of Tile128Kernel, each slice rounded to TF32 once as it
    /// is stored. Eight warps as 2×4, each computing 64×32 of the tile as 4×4 mma tiles of 16×8 (64
    /// accumulators per thread); per slice a warp loads four A fragments and four B fragments from
    /// shared memory and issues 16 mma.m16n8k8.
    /// </summary>
    [GpuGroup(Threads)]
    [NeedsPtxPostPass]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Tf32Kernel(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> bias,
        ArrayView<float> y, GemmArgs p)
    {
        // Two K slices of each operand, k-major with padded rows: aS[buf][k][m] and bS[buf][k][n].
        var aTile = SharedMemory.Allocate<float>(2 * BigK * Tf32Ld);
        var bTile = SharedMemory.Allocate<float>(2 * BigK * Tf32Ld);
        var scratch = SharedMemory.Allocate<float>(Threads / 32 * TensorCores.ScratchPerWarp); // the emulation's only
        var aS = aTile.Cast<Float4>();
        var bS = bTile.Cast<Float4>();
        int tid = Group.IdxX, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
        int rowBase = (warp >> 2) * 64 + g, colBase = (warp & 3) * 32 + g;
        int n0 = Grid.IdxX * BigN, m0 = Grid.IdxY * BigM;
        long batch = Grid.IdxZ;
        var a4 = Batch4(a, batch, p.StrideA, p.VecA);
        var b4 = Batch4(b, batch, p.StrideB, p.VecB);
        a = a.SubView(batch * p.StrideA, a.Length - batch * p.StrideA);
        b = b.SubView(batch * p.StrideB, b.Length - batch * p.StrideB);

        var chunks = new SliceChunks128(p, tid, m0, n0); // the same chunks per thread as Tile128Kernel

        Frag4 c00 = default, c01 = default, c02 = default, c03 = default, c10 = default, c11 = default, c12 = default, c13 = default;
        Frag4 c20 = default, c21 = default, c22 = default, c23 = default, c30 = default, c31 = default, c32 = default, c33 = default;
        int slices = (p.K + BigK - 1) / BigK;
        Float4 ra = default, rb = default;
        for (int s = -1; s < slices; s++)
        {
            int buf = s & 1;
            if (s >= 0)
            {
                StoreSlice(aTile, aS, chunks.AK, buf * BigK, Tf32Ld, tid, Tf32(ra));
                StoreSlice(bTile, bS, chunks.BK, buf * BigK, Tf32Ld, tid, Tf32(rb));
                Group.Barrier();
            }
            if (s + 1 < slices)
            {
                int k1 = (s + 1) * BigK;
                ra = chunks.FetchA(a, a4, p, k1);
                rb = chunks.FetchB(b, b4, p, k1);
            }
            if (s < 0)
                continue;
            var at = aTile.SubView(buf * BigK * Tf32Ld + t * Tf32Ld + rowBase, 4 * Tf32Ld + 57);
            var bt = bTile.SubView(buf * BigK * Tf32Ld + t * Tf32Ld + colBase, 4 * Tf32Ld + 25);
            Frag4 f0 = AFragment(at, 0), f1 = AFragment(at, 16), f2 = AFragment(at, 32), f3 = AFragment(at, 48);
            Frag2 e0 = BFragment(bt, 0), e1 = BFragment(bt, 8), e2 = BFragment(bt, 16), e3 = BFragment(bt, 24);
            TensorCores.Mma(ref c00, f0, e0, scratch);
            TensorCores.Mma(ref c01, f0, e1, scratch);
            TensorCores.Mma(ref c02, f0, e2, scratch);
            TensorCores.Mma(ref c03, f0, e3, scratch);
            TensorCores.Mma(ref c10, f1, e0, scratch);
            TensorCores.Mma(ref c11, f1, e1, scratch);
            TensorCores.Mma(ref c12, f1, e2, scratch);
            TensorCores.Mma(ref c13, f1, e3, scratch);
            TensorCores.Mma(ref c20, f2, e0, scratch);
            TensorCores.Mma(ref c21, f2, e1, scratch);
            TensorCores.Mma(ref c22, f2, e2, scratch);
            TensorCores.Mma(ref c23, f2, e3, scratch);
            TensorCores.Mma(ref c30, f3, e0, scratch);
            TensorCores.Mma(ref c31, f3, e1, scratch);
            TensorCores.Mma(ref c32, f3, e2, scratch);
            TensorCores.Mma(ref c33, f3, e3, scratch);
        }

        c = c.SubView(batch * p.StrideC, c.Length - batch * p.StrideC);
        // Tile (i, j) of the warp: rows m0 + rowBase + 16i (+8), columns n0 + colBase - g + 8j + 2t (+1).
        int r = m0 + rowBase, col = n0 + colBase - g + 2 * t;
        StoreTf32Tile(c, bias, p, r, col, c00); StoreTf32Tile(c, bias, p, r, col + 8, c01); StoreTf32Tile(c, bias, p, r, col + 16, c02); StoreTf32Tile(c, bias, p, r, col + 24, c03);
        StoreTf32Tile(c, bias, p, r + 16, col, c10); StoreTf32Tile(c, bias, p, r + 16, col + 8, c11); StoreTf32Tile(c, bias, p, r + 16, col + 16, c12); StoreTf32Tile(c, bias, p, r + 16, col + 24, c13);
        StoreTf32Tile(c, bias, p, r + 32, col, c20); StoreTf32Tile(c, bias, p, r + 32, col + 8, c21); StoreTf32Tile(c, bias, p, r + 32, col + 16, c22); StoreTf32Tile(c, bias, p, r + 32, col + 24, c23);
        StoreTf32Tile(c, bias, p, r + 48, col, c30); StoreTf32Tile(c, bias, p, r + 48, col + 8, c31); StoreTf32Tile(c, bias, p, r + 48, col + 16, c32); StoreTf32Tile(c, bias, p, r + 48, col + 24, c33);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Tf32(Float4 f) =>
        new(TensorCores.RoundTf32(f.X), TensorCores.RoundTf32(f.Y), TensorCores.RoundTf32(f.Z), TensorCores.RoundTf32(f.W));

    /// <summary>A fragment of rows +row, +row+8 at k = t, t+4, from the view at [k = t][m = rowBase].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Frag4 AFragment(ArrayView<float> at, int row) =>
        new() { X = at[row], Y = at[row + 8], Z = at[4 * Tf32Ld + row], W = at[4 * Tf32Ld + row + 8] };

    /// <summary>B fragment of column +col at k = t, t+4, from the view at [k = t][n = colBase].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Frag2 BFragment(ArrayView<float> bt, int col) => new() { X = bt[col], Y = bt[4 * Tf32Ld + col] };

    /// <summary>One mma tile's four outputs: C[r][col..col+1] and C[r+8][col..col+1] = α·acc + β·C + bias.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTf32Tile(ArrayView<float> c, ArrayView<float> bias, GemmArgs p, int r, int col, Frag4 acc)
    {
        StoreTf32Element(c, bias, p, r, col, acc.X);
        StoreTf32Element(c, bias, p, r, col + 1, acc.Y);
        StoreTf32Element(c, bias, p, r + 8, col, acc.Z);
        StoreTf32Element(c, bias, p, r + 8, col + 1, acc.W);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTf32Element(ArrayView<float> c, ArrayView<float> bias, GemmArgs p, int r, int col, float acc)
    {
        if (r >= p.M || col >= p.N) return;
        int off = r * p.Ldc + col;
        float v = p.Alpha * acc;
        if (p.Beta != 0f) v += p.Beta * c[off];
        c[off] = p.HasBias != 0 ? v + bias[col] : v;
    }

    [GpuGroup(Threads)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Tile64Kernel<TOut>(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> bias,
        ArrayView<float> y, GemmArgs p)
        where TOut : struct, IGemmOutput
    {
        // Two K slices of each operand, k-major: aS[buf][k][m] and bS[buf][k][n], as float4s.
        var aTile = SharedMemory.Allocate<float>(2 * ThinK * ThinM);
        var bTile = SharedMemory.Allocate<float>(2 * ThinK * ThinN);
        var aS = aTile.Cast<Float4>();
        var bS = bTile.Cast<Float4>();
        int tid = Group.IdxX, tx = tid & 15, ty = tid >> 4;
        int n0 = Grid.IdxX * ThinN, m0 = Grid.IdxY * ThinM;
        long batch = Grid.IdxZ;
        var a4 = Batch4(a, batch, p.StrideA, p.VecA);
        var b4 = Batch4(b, batch, p.StrideB, p.VecB);
        a = a.SubView(batch * p.StrideA, a.Length - batch * p.StrideA);
        b = b.SubView(batch * p.StrideB, b.Length - batch * p.StrideB);

        // One chunk of each operand per thread and slice: of a k-contiguous operand row tid/4 at
        // k-quad tid%4 (stored transposed), of an m- (n-) contiguous one k-row tid/16 at quad tid%16.
        bool aK = p.TransA == 0, bK = p.TransB != 0;
        int aR = aK ? m0 + (tid >> 2) : tid >> 4, aC = aK ? (tid & 3) * 4 : m0 + (tid & 15) * 4;
        int bR = bK ? n0 + (tid >> 2) : tid >> 4, bC = bK ? (tid & 3) * 4 : n0 + (tid & 15) * 4;
        int aRows = aK ? p.M : p.K, aCols = aK ? p.K : p.M;
        int bRows = bK ? p.N : p.K, bCols = bK ? p.K : p.N;

        var acc = new Acc4x4();
        int slices = (p.K + ThinK - 1) / ThinK;
        Float4 ra = default, rb = default;
        // The same schedule as Tile128Kernel: store slice s, fetch s + 1, multiply s.
        for (int s = -1; s < slices; s++)
        {
            int buf = s & 1;
            if (s >= 0)
            {
                if (aK) StoreTransposed(aTile, buf * ThinK + (tid & 3) * 4, tid >> 2, ThinM, ra);
                else aS[(buf * ThinK + (tid >> 4)) * (ThinM / 4) + (tid & 15)] = ra;
                if (bK) StoreTransposed(bTile, buf * ThinK + (tid & 3) * 4, tid >> 2, ThinN, rb);
                else bS[(buf * ThinK + (tid >> 4)) * (ThinN / 4) + (tid & 15)] = rb;
                Group.Barrier();
            }
            if (s + 1 < slices)
            {
                int k1 = (s + 1) * ThinK;
                ra = LoadChunk(a, a4, p.VecA, aK ? aR : aR + k1, aRows, aK ? aC + k1 : aC, aCols, p.Lda);
                rb = LoadChunk(b, b4, p.VecB, bK ? bR : bR + k1, bRows, bK ? bC + k1 : bC, bCols, p.Ldb);
            }
            if (s < 0)
                continue;
            var at = aS.SubView(buf * ThinK * (ThinM / 4) + ty, ThinK * (ThinM / 4) - 15);
            var bt = bS.SubView(buf * ThinK * (ThinN / 4) + tx, ThinK * (ThinN / 4) - 15);
            acc.Fma(at[0], bt[0]);
            acc.Fma(at[16], bt[16]);
            acc.Fma(at[32], bt[32]);
            acc.Fma(at[48], bt[48]);
            acc.Fma(at[64], bt[64]);
            acc.Fma(at[80], bt[80]);
            acc.Fma(at[96], bt[96]);
            acc.Fma(at[112], bt[112]);
            acc.Fma(at[128], bt[128]);
            acc.Fma(at[144], bt[144]);
            acc.Fma(at[160], bt[160]);
            acc.Fma(at[176], bt[176]);
            acc.Fma(at[192], bt[192]);
            acc.Fma(at[208], bt[208]);
            acc.Fma(at[224], bt[224]);
            acc.Fma(at[240], bt[240]);
        }

        int col = n0 + tx * 4;
        Float4 biasLo = default;
        if (p.HasBias != 0)
            biasLo = LoadChunk(bias, default, 0, 0, 1, col, p.N, 0);
        var c4 = Batch4(c, batch, p.StrideC, p.VecC);
        c = c.SubView(batch * p.StrideC, c.Length - batch * p.StrideC);
        var output = default(TOut);
        for (int i = 0; i < 4; i++)
            output.Row(c, c4, y, p, m0 + ty * 4 + i, col, -1, biasLo, default, acc.Row(i), default);
        if (output.HasFinish)
            for (int i = 0; i < 4; i++)
                output.Finish(c, c4, y, p, m0 + ty * 4 + i, col, -1, biasLo, default);
    }
}

/// <summary>How a GEMM writes a row of its register tile: plain (α·acc + β·C + bias) or through an activation.</summary>
public interface IGemmOutput
{
    /// <summary>Row r of the thread's tile: columns colLo..colLo+3 and colHi..colHi+3 (colHi &lt; 0: none).</summary>
    void Row(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi, Float4 accLo, Float4 accHi);

    /// <summary>
    /// A second pass over the same rows after every accumulator is stored, so work that needs
    /// registers of its own (an activation) does not run while all of them are still live.
    /// </summary>
    void Finish(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi);

    /// <summary>Whether <see cref="Finish"/> does anything.</summary>
    bool HasFinish { get; }
}

/// <summary>Four consecutive elements of a row of C: one 128-bit access when aligned and inside, else per element.</summary>
internal static class Chunk
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Whole(GemmArgs p, int col) => p.VecC != 0 && col + 3 < p.N;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Float4 Load(ArrayView<float> c, ArrayView<Float4> c4, GemmArgs p, int off, int col)
    {
        if (Whole(p, col)) return c4[off >> 2];
        return new Float4(c[off], col + 1 < p.N ? c[off + 1] : 0f, col + 2 < p.N ? c[off + 2] : 0f, col + 3 < p.N ? c[off + 3] : 0f);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(ArrayView<float> c, ArrayView<Float4> c4, GemmArgs p, int off, int col, Float4 v)
    {
        if (Whole(p, col))
        {
            c4[off >> 2] = v;
            return;
        }
        c[off] = v.X;
        if (col + 1 < p.N) c[off + 1] = v.Y;
        if (col + 2 < p.N) c[off + 2] = v.Z;
        if (col + 3 < p.N) c[off + 3] = v.W;
    }

    /// <summary>α·acc + β·old (β = 0 never reads C).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Float4 Scale(ArrayView<float> c, ArrayView<Float4> c4, GemmArgs p, int off, int col, Float4 acc)
    {
        var v = new Float4(p.Alpha * acc.X, p.Alpha * acc.Y, p.Alpha * acc.Z, p.Alpha * acc.W);
        if (p.Beta != 0f)
        {
            var old = Load(c, c4, p, off, col);
            v = new Float4(v.X + p.Beta * old.X, v.Y + p.Beta * old.Y, v.Z + p.Beta * old.Z, v.W + p.Beta * old.W);
        }
        return v;
    }
}

/// <summary>C = α·acc + β·C + bias.</summary>
public readonly struct PlainOutput : IGemmOutput
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Row(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi, Float4 accLo, Float4 accHi)
    {
        if (r >= p.M) return;
        int row = r * p.Ldc;
        if (colLo < p.N) Store(c, c4, p, row + colLo, colLo, biasLo, accLo);
        if (colHi >= 0 && colHi < p.N) Store(c, c4, p, row + colHi, colHi, biasHi, accHi);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> c, ArrayView<Float4> c4, GemmArgs p, int off, int col, Float4 bias, Float4 acc)
    {
        var v = Chunk.Scale(c, c4, p, off, col, acc);
        Chunk.Store(c, c4, p, off, col, new Float4(v.X + bias.X, v.Y + bias.Y, v.Z + bias.Z, v.W + bias.W));
    }

    public void Finish(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi)
    {
    }

    public bool HasFinish => false;
}

/// <summary>
/// C = α·acc + β·C (the pre-activation), then, in the second pass, Y = act(C + bias) from the
/// values this thread just stored (Y laid out like C; the launcher checks it).
/// </summary>
public readonly struct ActivatedOutput<TAct> : IGemmOutput
    where TAct : struct, IActivation
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Row(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi, Float4 accLo, Float4 accHi)
    {
        if (r >= p.M) return;
        int row = r * p.Ldc;
        if (colLo < p.N) Chunk.Store(c, c4, p, row + colLo, colLo, Chunk.Scale(c, c4, p, row + colLo, colLo, accLo));
        if (colHi >= 0 && colHi < p.N) Chunk.Store(c, c4, p, row + colHi, colHi, Chunk.Scale(c, c4, p, row + colHi, colHi, accHi));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Finish(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, GemmArgs p, int r,
        int colLo, int colHi, Float4 biasLo, Float4 biasHi)
    {
        if (r >= p.M) return;
        int row = r * p.Ldc;
        var y4 = y.Cast<Float4>();
        if (colLo < p.N) Activate(c, c4, y, y4, p, row + colLo, colLo, biasLo);
        if (colHi >= 0 && colHi < p.N) Activate(c, c4, y, y4, p, row + colHi, colHi, biasHi);
    }

    public bool HasFinish => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Activate(ArrayView<float> c, ArrayView<Float4> c4, ArrayView<float> y, ArrayView<Float4> y4, GemmArgs p, int off, int col, Float4 bias)
    {
        var pre = Chunk.Load(c, c4, p, off, col);
        var act = default(TAct);
        Chunk.Store(y, y4, p, off, col, new Float4(act.Apply(pre.X + bias.X, out _), act.Apply(pre.Y + bias.Y, out _),
            act.Apply(pre.Z + bias.Z, out _), act.Apply(pre.W + bias.W, out _)));
    }
}
