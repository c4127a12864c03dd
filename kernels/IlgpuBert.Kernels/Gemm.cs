// GEMM: C = α·op(A)·op(B) + β·C (+ bias[j]), op ∈ {N, T}, strided batches, float32, row-major.
//
// Shapes: op(A) is [M, K], op(B) is [K, N], C is [M, N]. A is stored [M, K] (N) or [K, M] (T) with
// leading dimension lda; likewise B is [K, N] (N) or [N, K] (T). β = 0 never reads C (BLAS rule), so
// an uninitialised C is fine. The optional bias is the fused epilogue of a Linear layer.
//
// Two paths, one contract:
// - the ILGPU kernel (CUDA, OpenCL, and tested on the CPU accelerator): 64×64 block tiles, 16-deep
//   K slices staged in shared memory (8 KB), 16×16 threads each holding a 4×4 register tile whose
//   rows and columns are strided by 16 so shared-memory reads are conflict-free and C stores coalesce;
// - on ILGPU's CPU accelerator, host SIMD code on the accelerator's own buffers (HostGemm), since the
//   emulator runs one OS thread per GPU thread and would be ~100× slower.
// Backward of C = op(A)·op(B) is two more GEMMs (see Backward).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public enum Transpose { N, T }

/// <summary>Everything the tiled kernel needs besides the buffers.</summary>
public struct GemmArgs
{
    public int M, N, K, Lda, Ldb, Ldc;
    public int TransA, TransB, HasBias;
    public float Alpha, Beta;
    public long StrideA, StrideB, StrideC;
}

public sealed class GemmKernels
{
    public const int BM = 64, BN = 64, BK = 16, Threads = 16;

    private readonly KernelSet set;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs> tiled;

    internal GemmKernels(KernelSet set)
    {
        this.set = set;
        tiled = set.Accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmArgs>(TiledKernel);
    }

    /// <summary>When true on the CPU accelerator, run the ILGPU kernel instead of host SIMD code (tests).</summary>
    public bool ForceDeviceKernel { get; set; }

    /// <summary>
    /// C = α·op(A)·op(B) + β·C (+ bias), for <paramref name="batch"/> matrices whose starts are
    /// strideA/strideB/strideC floats apart. bias (length N) is optional: pass default.
    /// </summary>
    public void Forward(Transpose ta, Transpose tb, int m, int n, int k, float alpha,
        ArrayView<float> a, int lda, ArrayView<float> b, int ldb, float beta,
        ArrayView<float> c, int ldc, ArrayView<float> bias = default,
        int batch = 1, long strideA = 0, long strideB = 0, long strideC = 0)
    {
        var args = new GemmArgs
        {
            M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc,
            TransA = ta == Transpose.T ? 1 : 0, TransB = tb == Transpose.T ? 1 : 0,
            HasBias = bias.IsValid && bias.Length > 0 ? 1 : 0,
            Alpha = alpha, Beta = beta, StrideA = strideA, StrideB = strideB, StrideC = strideC,
        };
        Validate(args, batch, a.Length, b.Length, c.Length, bias.IsValid ? bias.Length : 0);
        if (m == 0 || n == 0 || batch == 0)
            return;
        if (set.IsCpu && !ForceDeviceKernel)
        {
            set.Accelerator.Synchronize(); // kernels queued before us must have written A, B and C
            HostGemm.Run(args, batch, a, b, c, bias);
            return;
        }
        var grid = new Index3D((n + BN - 1) / BN, (m + BM - 1) / BM, batch);
        tiled(new KernelConfig(grid, new Index3D(Threads, Threads, 1)), a, b, c,
            args.HasBias != 0 ? bias : c, args);
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

    /// <summary>Accumulators of one thread: rows ty+16·i, columns tx+16·j, i, j ∈ 0..3.</summary>
    private struct Tile4x4
    {
        public float C00, C01, C02, C03, C10, C11, C12, C13, C20, C21, C22, C23, C30, C31, C32, C33;

        public void Fma(float a0, float a1, float a2, float a3, float b0, float b1, float b2, float b3)
        {
            C00 += a0 * b0; C01 += a0 * b1; C02 += a0 * b2; C03 += a0 * b3;
            C10 += a1 * b0; C11 += a1 * b1; C12 += a1 * b2; C13 += a1 * b3;
            C20 += a2 * b0; C21 += a2 * b1; C22 += a2 * b2; C23 += a2 * b3;
            C30 += a3 * b0; C31 += a3 * b1; C32 += a3 * b2; C33 += a3 * b3;
        }
    }

    private static float LoadA(ArrayView<float> a, long offset, GemmArgs p, int row, int kk) =>
        row < p.M && kk < p.K
            ? a[offset + (p.TransA == 0 ? (long)row * p.Lda + kk : (long)kk * p.Lda + row)]
            : 0f;

    private static float LoadB(ArrayView<float> b, long offset, GemmArgs p, int kk, int col) =>
        kk < p.K && col < p.N
            ? b[offset + (p.TransB == 0 ? (long)kk * p.Ldb + col : (long)col * p.Ldb + kk)]
            : 0f;

    private static void Store(ArrayView<float> c, ArrayView<float> bias, long offset, GemmArgs p, int row, int col, float acc)
    {
        if (row >= p.M || col >= p.N)
            return;
        long idx = offset + (long)row * p.Ldc + col;
        float v = p.Alpha * acc;
        if (p.Beta != 0f)
            v += p.Beta * c[idx];
        if (p.HasBias != 0)
            v += bias[col];
        c[idx] = v;
    }

    [GpuGroup(GemmKernels.Threads * GemmKernels.Threads)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void TiledKernel(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> bias, GemmArgs p)
    {
        var aTile = SharedMemory.Allocate<float>(BK * BM); // [BK, BM]
        var bTile = SharedMemory.Allocate<float>(BK * BN); // [BK, BN]
        int tx = Group.IdxX, ty = Group.IdxY, tid = ty * Threads + tx;
        int n0 = Grid.IdxX * BN, m0 = Grid.IdxY * BM;
        long aOff = Grid.IdxZ * p.StrideA, bOff = Grid.IdxZ * p.StrideB, cOff = Grid.IdxZ * p.StrideC;
        var acc = new Tile4x4();

        for (int k0 = 0; k0 < p.K; k0 += BK)
        {
            // Each of the 256 threads stages 4 elements of each tile, walking the operand's
            // contiguous dimension with consecutive threads so global loads coalesce.
            for (int r = 0; r < 4; r++)
            {
                int e = tid + r * Threads * Threads;
                int am = p.TransA == 0 ? e / BK : e % BM, ak = p.TransA == 0 ? e % BK : e / BM;
                aTile[ak * BM + am] = LoadA(a, aOff, p, m0 + am, k0 + ak);
                int bn = p.TransB == 0 ? e % BN : e / BK, bk = p.TransB == 0 ? e / BN : e % BK;
                bTile[bk * BN + bn] = LoadB(b, bOff, p, k0 + bk, n0 + bn);
            }
            Group.Barrier();
            for (int kk = 0; kk < BK; kk++)
            {
                int ar = kk * BM + ty, br = kk * BN + tx;
                acc.Fma(aTile[ar], aTile[ar + 16], aTile[ar + 32], aTile[ar + 48],
                    bTile[br], bTile[br + 16], bTile[br + 32], bTile[br + 48]);
            }
            Group.Barrier();
        }

        int r0 = m0 + ty, c0 = n0 + tx;
        Store(c, bias, cOff, p, r0, c0, acc.C00); Store(c, bias, cOff, p, r0, c0 + 16, acc.C01);
        Store(c, bias, cOff, p, r0, c0 + 32, acc.C02); Store(c, bias, cOff, p, r0, c0 + 48, acc.C03);
        Store(c, bias, cOff, p, r0 + 16, c0, acc.C10); Store(c, bias, cOff, p, r0 + 16, c0 + 16, acc.C11);
        Store(c, bias, cOff, p, r0 + 16, c0 + 32, acc.C12); Store(c, bias, cOff, p, r0 + 16, c0 + 48, acc.C13);
        Store(c, bias, cOff, p, r0 + 32, c0, acc.C20); Store(c, bias, cOff, p, r0 + 32, c0 + 16, acc.C21);
        Store(c, bias, cOff, p, r0 + 32, c0 + 32, acc.C22); Store(c, bias, cOff, p, r0 + 32, c0 + 48, acc.C23);
        Store(c, bias, cOff, p, r0 + 48, c0, acc.C30); Store(c, bias, cOff, p, r0 + 48, c0 + 16, acc.C31);
        Store(c, bias, cOff, p, r0 + 48, c0 + 32, acc.C32); Store(c, bias, cOff, p, r0 + 48, c0 + 48, acc.C33);
    }

}
