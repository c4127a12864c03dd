// Fused multi-head self-attention, forward and backward, without an S×S buffer in device memory
// (FlashAttention-2, Dao 2023): softmax(Q·Kᵀ/√HD + mask)·V per head, with dropout on the
// probabilities as HF's BertSelfAttention applies it.
//
// Layouts, chosen so no transposes are needed around the fused QKV projection:
//   qkv     [B, S, 3, NH, HD]   the QKV GEMM's output (q, k, v for each head side by side)
//   mask    [B, S] int          HF's attention_mask per key: 1 attend, 0 masked (optional)
//   context [B, S, NH·HD]       ready for the output projection
//   lse     [B, NH, S]          log-Σ-exp of each query row, saved for backward
//   dQkv    [B, S, 3, NH, HD]   the gradient in the same fused layout
// Masked keys get probability exactly 0. A query row whose keys are all masked gets context 0 and
// lse = +∞ (so every recomputed probability is exp(s − ∞) = 0), never NaN.
// Dropout draws element ((b·NH + h)·S + i)·S + j of Philox (see Dropout.cs): the same bits the
// materialised path's dropout kernel draws for a [B, NH, S, S] buffer, regenerated in backward.
//
// GPU kernels: one group per (query tile, head, sequence); tiles of Q, K, V, the running output
// and a score tile live in static shared memory (≤ 42 KB, sized for HD = 128); the online softmax rescales the
// running output by exp(m_old − m_new) per key tile. Backward is two deterministic kernels (dK, dV
// per key tile looping over queries; dQ per query tile looping over keys) after a row-wise
// D = rowsum(dO ⊙ O): no atomics. On the CPU accelerator the same math runs as host SIMD code
// (HostAttention), row by row, with O(S) memory per core.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

/// <summary>Sizes and dropout of one attention call. Build with <see cref="Create"/>.</summary>
public struct AttentionShape
{
    public const int MaxHeadDim = 128;

    public int Batch, SeqLen, Heads, HeadDim;
    public float DropoutP, Scale;
    public ulong Seed;
    public uint Step, TensorId;
    public int HasMask, WriteProbs;

    public static AttentionShape Create(int batch, int seqLen, int heads, int headDim, float dropoutP = 0f, DropoutKey key = default) => new()
    {
        Batch = batch, SeqLen = seqLen, Heads = heads, HeadDim = headDim, DropoutP = dropoutP,
        Scale = 1f / MathF.Sqrt(headDim), Seed = key.Seed, Step = key.Step, TensorId = key.TensorId,
    };

    public readonly int Hidden => Heads * HeadDim;
    public readonly long QkvLength => (long)Batch * SeqLen * 3 * Heads * HeadDim;
    public readonly long ContextLength => (long)Batch * SeqLen * Heads * HeadDim;
    public readonly long RowCount => (long)Batch * Heads * SeqLen;

    internal readonly void Validate()
    {
        if (Batch < 0 || SeqLen < 0 || Heads < 1 || HeadDim < 1)
            throw new ArgumentException($"invalid attention shape B={Batch}, S={SeqLen}, NH={Heads}, HD={HeadDim}");
        if (HeadDim > MaxHeadDim)
            throw new ArgumentException($"head dim {HeadDim} exceeds the supported maximum {MaxHeadDim}");
        if (!(DropoutP >= 0f && DropoutP < 1f))
            throw new ArgumentOutOfRangeException(nameof(DropoutP), $"attention dropout must be in [0, 1), got {DropoutP}");
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly long Qkv(int b, int s, int part, int h, int d) => (((long)(b * SeqLen + s) * 3 + part) * Heads + h) * HeadDim + d;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly long Ctx(int b, int s, int h, int d) => ((long)(b * SeqLen + s) * Heads + h) * HeadDim + d;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly long Row(int b, int h, int i) => (long)(b * Heads + h) * SeqLen + i;

    /// <summary>Dropout's keep factor for probability (i, j) of head h: 0 or 1/(1 − p).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly float Keep(int b, int h, int i, int j)
    {
        if (DropoutP == 0f) return 1f;
        long index = Row(b, h, i) * SeqLen + j;
        return DropoutKernels.Keeps(Philox.Word(Seed, Step, TensorId, index), DropoutP) ? 1f / (1f - DropoutP) : 0f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly bool Attends(ArrayView<int> mask, int b, int j) => HasMask == 0 || mask[(long)b * SeqLen + j] != 0;
}

public sealed class AttentionKernels
{
    // Tile sizes (rows of queries / keys per shared-memory tile) of the three kernels.
    internal const int FwdQ = 16, FwdK = 16, DkvK = 16, DkvQ = 8, DqQ = 16, DqK = 16;

    // Static shared memory of each kernel, sized for the largest head dim (≤ 42 KB at HD = 128, under
    // the 48 KB a CUDA group gets without opting in). Static, not dynamic: see GroupReduce.cs.
    private const int Hd = AttentionShape.MaxHeadDim;
    internal const int FwdShared = 2 * FwdQ * Hd + 2 * FwdK * Hd + FwdQ * FwdK + 3 * FwdQ;
    internal const int DkvShared = 4 * DkvK * Hd + 2 * DkvQ * Hd + 2 * DkvQ * DkvK + 2 * DkvQ;
    internal const int DqShared = 3 * DqQ * Hd + 2 * DqK * Hd + DqQ * DqK + 2 * DqQ;

    private readonly KernelSet set;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape> forward;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape> rowDot;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape> dKdV;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape> dQ;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<int>, AttentionShape> maskScores;

    internal AttentionKernels(KernelSet set)
    {
        this.set = set;
        var acc = set.Accelerator;
        forward = acc.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(ForwardKernel);
        rowDot = acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(RowDotKernel);
        dKdV = acc.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(DkDvKernel);
        dQ = acc.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(DqKernel);
        maskScores = acc.LoadStreamKernel<ArrayView<float>, ArrayView<int>, AttentionShape>(MaskScoresKernel);
    }

    /// <summary>When true on the CPU accelerator, run the ILGPU kernels instead of host SIMD code (tests).</summary>
    public bool ForceDeviceKernel { get; set; }

    private bool UseHost => set.IsCpu && !ForceDeviceKernel;

    /// <summary>Threads per group of the fused kernels on GPUs (fewer when the row group is smaller).</summary>
    public const int GpuGroup = 128;

    private int GroupSize => Math.Min(GpuGroup, set.RowGroupSize);

    /// <summary>
    /// context = softmax(QKᵀ/√HD + mask)·V per head, with dropout; lse saved for backward. mask may
    /// be default (attend everywhere). probs [B, NH, S, S], when given, receives the probabilities
    /// before dropout (what HF returns in eval mode) — the only S×S memory, and only on request.
    /// </summary>
    public void Forward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        AttentionShape shape, ArrayView<float> probs = default)
    {
        shape = Prepare(shape, qkv, mask, probs);
        Check.Vector("context", context, shape.ContextLength);
        Check.Vector("lse", lse, shape.RowCount);
        if (shape.Batch == 0 || shape.SeqLen == 0) return;
        if (UseHost)
        {
            set.Accelerator.Synchronize();
            HostAttention.Forward(qkv, mask, context, lse, probs, shape);
            return;
        }
        forward(Config((shape.SeqLen + FwdQ - 1) / FwdQ, shape), qkv, shape.HasMask != 0 ? mask : Dummy(), context, lse,
            shape.WriteProbs != 0 ? probs : context, shape);
    }

    /// <summary>
    /// dQkv (overwritten) from dContext, given the forward's inputs, context and lse, and the same
    /// shape (dropout key included).
    /// </summary>
    public void Backward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape shape)
    {
        shape = Prepare(shape, qkv, mask, default);
        Check.Vector("context", context, shape.ContextLength);
        Check.Vector("lse", lse, shape.RowCount);
        Check.Vector("dContext", dContext, shape.ContextLength);
        Check.Vector("dQkv", dQkv, shape.QkvLength);
        if (shape.Batch == 0 || shape.SeqLen == 0) return;
        if (UseHost)
        {
            set.Accelerator.Synchronize();
            HostAttention.Backward(qkv, mask, lse, dContext, dQkv, shape);
            return;
        }
        var m = shape.HasMask != 0 ? mask : Dummy();
        var d = set.FloatScratch(shape.RowCount); // D = rowsum(dO ⊙ O), [B, NH, S]
        rowDot(set.GridStride(shape.RowCount), dContext, context, d, shape);
        dKdV(Config((shape.SeqLen + DkvK - 1) / DkvK, shape), qkv, m, lse, d, dContext, dQkv, shape);
        dQ(Config((shape.SeqLen + DqQ - 1) / DqQ, shape), qkv, m, lse, d, dContext, dQkv, shape);
    }

    /// <summary>
    /// The materialised path, for comparison and benchmarks: scores = QKᵀ/√HD into probs
    /// [B, NH, S, S] (batched GEMMs), masked keys set to −∞, row softmax, dropout over the whole
    /// buffer, context = probs·V. Same math and dropout bits as <see cref="Forward"/>.
    /// </summary>
    public void NaiveForward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> probs, AttentionShape shape)
    {
        shape = Prepare(shape, qkv, mask, probs);
        Check.Vector("context", context, shape.ContextLength);
        int s = shape.SeqLen, hd = shape.HeadDim, nh = shape.Heads;
        int ldQkv = 3 * nh * hd, ldCtx = nh * hd;
        long ss = (long)s * s;
        for (int b = 0; b < shape.Batch; b++)
        {
            long qkvB = (long)b * s * ldQkv;
            // Batched over heads: head h of Q starts at h·HD, of K at (NH + h)·HD, of V at (2NH + h)·HD.
            set.Gemm.Forward(Transpose.N, Transpose.T, s, s, hd, shape.Scale, qkv.SubView(qkvB, qkv.Length - qkvB), ldQkv,
                qkv.SubView(qkvB + (long)nh * hd, qkv.Length - qkvB - (long)nh * hd), ldQkv, 0f,
                probs.SubView(b * nh * ss, nh * ss), s, default, nh, hd, hd, ss);
        }
        if (shape.HasMask != 0)
            maskScores(set.GridStride(shape.RowCount * s), probs, mask, shape);
        set.Softmax.Forward(probs, probs, (int)shape.RowCount, s);
        if (shape.DropoutP > 0f)
            set.Dropout.Forward(probs, probs, shape.RowCount * s, shape.DropoutP, new DropoutKey(shape.Seed, shape.Step, shape.TensorId));
        for (int b = 0; b < shape.Batch; b++)
        {
            long qkvB = (long)b * s * ldQkv + 2L * nh * hd;
            set.Gemm.Forward(Transpose.N, Transpose.N, s, hd, s, 1f, probs.SubView(b * nh * ss, nh * ss), s,
                qkv.SubView(qkvB, qkv.Length - qkvB), ldQkv, 0f, context.SubView((long)b * s * ldCtx, (long)s * ldCtx), ldCtx,
                default, nh, ss, hd, hd);
        }
    }

    private static AttentionShape Prepare(AttentionShape shape, ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> probs)
    {
        shape.Validate();
        shape.Scale = 1f / MathF.Sqrt(shape.HeadDim);
        Check.Vector("qkv", qkv, shape.QkvLength);
        shape.HasMask = mask.IsValid && mask.Length > 0 ? 1 : 0;
        if (shape.HasMask != 0) Check.Vector("attention_mask", mask, (long)shape.Batch * shape.SeqLen);
        shape.WriteProbs = probs.IsValid && probs.Length > 0 ? 1 : 0;
        if (shape.WriteProbs != 0) Check.Vector("probs", probs, shape.RowCount * shape.SeqLen);
        return shape;
    }

    private KernelConfig Config(int tiles, AttentionShape shape) =>
        new(new Index3D(tiles, shape.Heads, shape.Batch), new Index3D(GroupSize, 1, 1));

    private ArrayView<int> Dummy() => set.IntScratch([0]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(ArrayView<float> x, int xOff, ArrayView<float> y, int yOff, int n)
    {
        float s = 0f;
        for (int d = 0; d < n; d++) s += x[xOff + d] * y[yOff + d];
        return s;
    }

    /// <summary>
    /// The group cooperatively copies rows [row0, row0 + rows) of one part (0 q, 1 k, 2 v) of head h
    /// into a [rows, HD] shared tile; rows past the sequence are zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadTile(ArrayView<float> qkv, ArrayView<float> tile, AttentionShape a, int b, int h, int part, int row0, int rows, int t, int g)
    {
        int hd = a.HeadDim;
        for (int e = t; e < rows * hd; e += g)
        {
            int i = row0 + e / hd;
            tile[e] = i < a.SeqLen ? qkv[a.Qkv(b, i, part, h, e % hd)] : 0f;
        }
    }

    [GpuGroup(AttentionKernels.GpuGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        ArrayView<float> probs, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(FwdShared);
        int hd = a.HeadDim, s = a.SeqLen;
        var q = shared.SubView(0, FwdQ * hd);            // [FwdQ, HD]
        var o = shared.SubView(FwdQ * hd, FwdQ * hd);    // [FwdQ, HD] running, unnormalised output
        var k = shared.SubView(2 * FwdQ * hd, FwdK * hd); // [FwdK, HD]
        var v = shared.SubView(2 * FwdQ * hd + FwdK * hd, FwdK * hd);
        int rest = 2 * FwdQ * hd + 2 * FwdK * hd;
        var sc = shared.SubView(rest, FwdQ * FwdK);      // [FwdQ, FwdK] scores, then probabilities
        var rowM = shared.SubView(rest + FwdQ * FwdK, FwdQ);
        var rowL = shared.SubView(rest + FwdQ * FwdK + FwdQ, FwdQ);
        var rowScale = shared.SubView(rest + FwdQ * FwdK + 2 * FwdQ, FwdQ);
        int t = Group.IdxX, g = Group.DimX;
        int i0 = Grid.IdxX * FwdQ, h = Grid.IdxY, b = Grid.IdxZ;

        LoadTile(qkv, q, a, b, h, 0, i0, FwdQ, t, g);
        for (int e = t; e < FwdQ * hd; e += g) o[e] = 0f;
        for (int r = t; r < FwdQ; r += g)
        {
            rowM[r] = float.NegativeInfinity;
            rowL[r] = 0f;
        }
        Group.Barrier();

        for (int j0 = 0; j0 < s; j0 += FwdK)
        {
            LoadTile(qkv, k, a, b, h, 1, j0, FwdK, t, g);
            LoadTile(qkv, v, a, b, h, 2, j0, FwdK, t, g);
            Group.Barrier();
            for (int e = t; e < FwdQ * FwdK; e += g)
            {
                int r = e / FwdK, c = e % FwdK, i = i0 + r, j = j0 + c;
                sc[e] = i < s && j < s && a.Attends(mask, b, j) ? Dot(q, r * hd, k, c * hd, hd) * a.Scale : float.NegativeInfinity;
            }
            Group.Barrier();
            for (int r = t; r < FwdQ; r += g)
            {
                float mOld = rowM[r], mNew = mOld;
                for (int c = 0; c < FwdK; c++) mNew = MathF.Max(mNew, sc[r * FwdK + c]);
                if (mNew == float.NegativeInfinity)
                {
                    // Nothing attended yet: probabilities 0, running output untouched.
                    rowScale[r] = 1f;
                    for (int c = 0; c < FwdK; c++) sc[r * FwdK + c] = 0f;
                    continue;
                }
                float sum = 0f;
                for (int c = 0; c < FwdK; c++)
                {
                    float p = MathF.Exp(sc[r * FwdK + c] - mNew);
                    sum += p;
                    sc[r * FwdK + c] = p * a.Keep(b, h, i0 + r, j0 + c);
                }
                float f = MathF.Exp(mOld - mNew);
                rowScale[r] = f;
                rowL[r] = rowL[r] * f + sum;
                rowM[r] = mNew;
            }
            Group.Barrier();
            for (int e = t; e < FwdQ * hd; e += g)
            {
                int r = e / hd, d = e % hd;
                float acc = o[e] * rowScale[r];
                for (int c = 0; c < FwdK; c++) acc += sc[r * FwdK + c] * v[c * hd + d];
                o[e] = acc;
            }
            Group.Barrier();
        }

        for (int e = t; e < FwdQ * hd; e += g)
        {
            int r = e / hd, i = i0 + r;
            if (i < s)
            {
                float l = rowL[r];
                context[a.Ctx(b, i, h, e % hd)] = l > 0f ? o[e] / l : 0f;
            }
        }
        for (int r = t; r < FwdQ; r += g)
        {
            int i = i0 + r;
            if (i < s)
                lse[a.Row(b, h, i)] = rowL[r] > 0f ? rowM[r] + MathF.Log(rowL[r]) : float.PositiveInfinity;
        }
        if (a.WriteProbs == 0)
            return;

        // Probabilities on request: recompute each score tile and normalise it with the final lse.
        Group.Barrier();
        for (int r = t; r < FwdQ; r += g)
            rowM[r] = rowL[r] > 0f ? rowM[r] + MathF.Log(rowL[r]) : float.PositiveInfinity;
        for (int j0 = 0; j0 < s; j0 += FwdK)
        {
            Group.Barrier();
            LoadTile(qkv, k, a, b, h, 1, j0, FwdK, t, g);
            Group.Barrier();
            for (int e = t; e < FwdQ * FwdK; e += g)
            {
                int r = e / FwdK, c = e % FwdK, i = i0 + r, j = j0 + c;
                if (i < s && j < s)
                {
                    float score = a.Attends(mask, b, j) ? Dot(q, r * hd, k, c * hd, hd) * a.Scale : float.NegativeInfinity;
                    probs[a.Row(b, h, i) * s + j] = MathF.Exp(score - rowM[r]);
                }
            }
        }
    }

    /// <summary>D[b, h, i] = Σ_d dO ⊙ O over head h of row i (FlashAttention-2's rowsum).</summary>
    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RowDotKernel(ArrayView<float> dContext, ArrayView<float> context, ArrayView<float> d, AttentionShape a)
    {
        long rows = (long)a.Batch * a.Heads * a.SeqLen;
        long step = GridStride.Step;
        for (long row = GridStride.Start; row < rows; row += step)
        {
            int i = (int)(row % a.SeqLen), bh = (int)(row / a.SeqLen);
            int h = bh % a.Heads, b = bh / a.Heads;
            long off = a.Ctx(b, i, h, 0);
            float sum = 0f;
            for (int x = 0; x < a.HeadDim; x++) sum += dContext[off + x] * context[off + x];
            d[row] = sum;
        }
    }

    /// <summary>dK and dV for one tile of keys, looping over every query tile.</summary>
    [GpuGroup(AttentionKernels.GpuGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DkDvKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(DkvShared);
        int hd = a.HeadDim, s = a.SeqLen;
        var k = shared.SubView(0, DkvK * hd);
        var v = shared.SubView(DkvK * hd, DkvK * hd);
        var dk = shared.SubView(2 * DkvK * hd, DkvK * hd);
        var dv = shared.SubView(3 * DkvK * hd, DkvK * hd);
        int rest = 4 * DkvK * hd;
        var q = shared.SubView(rest, DkvQ * hd);
        var dO = shared.SubView(rest + DkvQ * hd, DkvQ * hd);
        rest += 2 * DkvQ * hd;
        var pd = shared.SubView(rest, DkvQ * DkvK);          // dropped probabilities
        var ds = shared.SubView(rest + DkvQ * DkvK, DkvQ * DkvK); // dScores
        var rowLse = shared.SubView(rest + 2 * DkvQ * DkvK, DkvQ);
        var rowD = shared.SubView(rest + 2 * DkvQ * DkvK + DkvQ, DkvQ);
        int t = Group.IdxX, g = Group.DimX;
        int j0 = Grid.IdxX * DkvK, h = Grid.IdxY, b = Grid.IdxZ;

        LoadTile(qkv, k, a, b, h, 1, j0, DkvK, t, g);
        LoadTile(qkv, v, a, b, h, 2, j0, DkvK, t, g);
        for (int e = t; e < DkvK * hd; e += g)
        {
            dk[e] = 0f;
            dv[e] = 0f;
        }
        for (int i0 = 0; i0 < s; i0 += DkvQ)
        {
            Group.Barrier();
            LoadTile(qkv, q, a, b, h, 0, i0, DkvQ, t, g);
            for (int e = t; e < DkvQ * hd; e += g)
            {
                int i = i0 + e / hd;
                dO[e] = i < s ? dContext[a.Ctx(b, i, h, e % hd)] : 0f;
            }
            for (int r = t; r < DkvQ; r += g)
            {
                int i = i0 + r;
                rowLse[r] = i < s ? lse[a.Row(b, h, i)] : float.PositiveInfinity;
                rowD[r] = i < s ? dRow[a.Row(b, h, i)] : 0f;
            }
            Group.Barrier();
            for (int e = t; e < DkvQ * DkvK; e += g)
            {
                int r = e / DkvK, c = e % DkvK, i = i0 + r, j = j0 + c;
                float p = 0f, keep = 0f, dp = 0f;
                if (i < s && j < s && a.Attends(mask, b, j))
                {
                    p = MathF.Exp(Dot(q, r * hd, k, c * hd, hd) * a.Scale - rowLse[r]);
                    keep = a.Keep(b, h, i, j);
                    dp = Dot(dO, r * hd, v, c * hd, hd) * keep;
                }
                pd[e] = p * keep;
                ds[e] = p * (dp - rowD[r]);
            }
            Group.Barrier();
            for (int e = t; e < DkvK * hd; e += g)
            {
                int c = e / hd, d = e % hd;
                float accV = dv[e], accK = dk[e];
                for (int r = 0; r < DkvQ; r++)
                {
                    accV += pd[r * DkvK + c] * dO[r * hd + d];
                    accK += ds[r * DkvK + c] * q[r * hd + d];
                }
                dv[e] = accV;
                dk[e] = accK;
            }
        }
        Group.Barrier();
        for (int e = t; e < DkvK * hd; e += g)
        {
            int j = j0 + e / hd, d = e % hd;
            if (j < s)
            {
                dQkv[a.Qkv(b, j, 1, h, d)] = dk[e] * a.Scale;
                dQkv[a.Qkv(b, j, 2, h, d)] = dv[e];
            }
        }
    }

    /// <summary>dQ for one tile of queries, looping over every key tile.</summary>
    [GpuGroup(AttentionKernels.GpuGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DqKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(DqShared);
        int hd = a.HeadDim, s = a.SeqLen;
        var q = shared.SubView(0, DqQ * hd);
        var dO = shared.SubView(DqQ * hd, DqQ * hd);
        var dq = shared.SubView(2 * DqQ * hd, DqQ * hd);
        int rest = 3 * DqQ * hd;
        var k = shared.SubView(rest, DqK * hd);
        var v = shared.SubView(rest + DqK * hd, DqK * hd);
        rest += 2 * DqK * hd;
        var ds = shared.SubView(rest, DqQ * DqK);
        var rowLse = shared.SubView(rest + DqQ * DqK, DqQ);
        var rowD = shared.SubView(rest + DqQ * DqK + DqQ, DqQ);
        int t = Group.IdxX, g = Group.DimX;
        int i0 = Grid.IdxX * DqQ, h = Grid.IdxY, b = Grid.IdxZ;

        LoadTile(qkv, q, a, b, h, 0, i0, DqQ, t, g);
        for (int e = t; e < DqQ * hd; e += g)
        {
            int i = i0 + e / hd;
            dO[e] = i < s ? dContext[a.Ctx(b, i, h, e % hd)] : 0f;
            dq[e] = 0f;
        }
        for (int r = t; r < DqQ; r += g)
        {
            int i = i0 + r;
            rowLse[r] = i < s ? lse[a.Row(b, h, i)] : float.PositiveInfinity;
            rowD[r] = i < s ? dRow[a.Row(b, h, i)] : 0f;
        }
        for (int j0 = 0; j0 < s; j0 += DqK)
        {
            Group.Barrier();
            LoadTile(qkv, k, a, b, h, 1, j0, DqK, t, g);
            LoadTile(qkv, v, a, b, h, 2, j0, DqK, t, g);
            Group.Barrier();
            for (int e = t; e < DqQ * DqK; e += g)
            {
                int r = e / DqK, c = e % DqK, i = i0 + r, j = j0 + c;
                float dsv = 0f;
                if (i < s && j < s && a.Attends(mask, b, j))
                {
                    float p = MathF.Exp(Dot(q, r * hd, k, c * hd, hd) * a.Scale - rowLse[r]);
                    float dp = Dot(dO, r * hd, v, c * hd, hd) * a.Keep(b, h, i, j);
                    dsv = p * (dp - rowD[r]);
                }
                ds[e] = dsv;
            }
            Group.Barrier();
            for (int e = t; e < DqQ * hd; e += g)
            {
                int r = e / hd, d = e % hd;
                float acc = dq[e];
                for (int c = 0; c < DqK; c++) acc += ds[r * DqK + c] * k[c * hd + d];
                dq[e] = acc;
            }
        }
        Group.Barrier();
        for (int e = t; e < DqQ * hd; e += g)
        {
            int i = i0 + e / hd;
            if (i < s) dQkv[a.Qkv(b, i, 0, h, e % hd)] = dq[e] * a.Scale;
        }
    }

    /// <summary>Scores of masked keys → −∞ (the materialised path's mask, before softmax).</summary>
    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MaskScoresKernel(ArrayView<float> scores, ArrayView<int> mask, AttentionShape a)
    {
        long n = (long)a.Batch * a.Heads * a.SeqLen * a.SeqLen;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < n; e += step)
        {
            int j = (int)(e % a.SeqLen);
            int b = (int)(e / ((long)a.Heads * a.SeqLen * a.SeqLen));
            if (mask[(long)b * a.SeqLen + j] == 0) scores[e] = float.NegativeInfinity;
        }
    }
}
