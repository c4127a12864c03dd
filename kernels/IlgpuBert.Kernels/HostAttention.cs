// Fused attention on ILGPU's CPU accelerator as host SIMD code over the accelerator's own buffers
// (the emulator runs one OS thread per GPU thread, far too slow for the tiled kernels).
//
// Same contract and math as AttentionKernels (see Attention.cs), organised for a CPU: each core
// takes whole (sequence, head) pairs. Forward (with AVX-512) copies the head's Kᵀ and V out once
// and handles four query rows at a time: their scores as 16-key vectors, the exact softmax, and the
// output as a sum of V rows (O(S·HD) memory per core, never S×S); without AVX-512 it goes one query
// row at a time. Backward walks the query rows of a head in order, so dK and dV accumulate
// deterministically without atomics.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

internal static unsafe class HostAttention
{
    [ThreadStatic] private static float[]? rowBuffer;

    public static void Forward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        ArrayView<float> probs, AttentionShape a)
    {
        nint pq = qkv.LoadEffectiveAddressAsPtr(), pc = context.LoadEffectiveAddressAsPtr(), pl = lse.LoadEffectiveAddressAsPtr();
        nint pm = a.HasMask != 0 ? mask.LoadEffectiveAddressAsPtr() : 0;
        nint pp = a.WriteProbs != 0 ? probs.LoadEffectiveAddressAsPtr() : 0;
        if (Vector512.IsHardwareAccelerated)
            HostParallel.For(0, a.Batch * a.Heads, bh => ForwardHead(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pc, (float*)pl, (float*)pp, a));
        else
            HostParallel.For(0, a.Batch * a.Heads, bh => ForwardHeadRows(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pc, (float*)pl, (float*)pp, a));
    }

    public static void Backward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dContext,
        ArrayView<float> dQkv, AttentionShape a)
    {
        nint pq = qkv.LoadEffectiveAddressAsPtr(), pl = lse.LoadEffectiveAddressAsPtr();
        nint pdo = dContext.LoadEffectiveAddressAsPtr(), pdq = dQkv.LoadEffectiveAddressAsPtr();
        nint pm = a.HasMask != 0 ? mask.LoadEffectiveAddressAsPtr() : 0;
        if (Vector512.IsHardwareAccelerated)
            HostParallel.For(0, a.Batch * a.Heads, bh => BackwardHead(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pl,
                (float*)pdo, (float*)pdq, a));
        else
            HostParallel.For(0, a.Batch * a.Heads, bh => BackwardHeadRows(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pl,
                (float*)pdo, (float*)pdq, a));
    }

    private static float* Row(int s)
    {
        if (rowBuffer is null || rowBuffer.Length < 2 * s)
            rowBuffer = GC.AllocateUninitializedArray<float>(Math.Max(2 * s, 256), pinned: true);
        return (float*)Unsafe.AsPointer(ref rowBuffer[0]);
    }

    [ThreadStatic] private static float[]? headBuffer;

    /// <summary>Rows of queries handled together: their score and context accumulators run as independent FMA chains.</summary>
    private const int QueryBlock = 4;

    /// <summary>
    /// One (sequence, head): Kᵀ and V copied out of the interleaved QKV rows into contiguous blocks
    /// (keys padded to whole 16-lane vectors), then for four query rows at a time the scores as
    /// 16-key vectors (q_r[d] broadcast against row d of Kᵀ), the exact softmax on 16 lanes, and the
    /// context as Σ_j p_rj·V_j. O(S·HD) memory per core, never S×S.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ForwardHead(int b, int h, float* qkv, int* mask, float* context, float* lse, float* probs, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim, sp = (s + 15) & ~15;
        int need = hd * sp + QueryBlock * sp + 2 * sp + QueryBlock * hd;
        if (headBuffer is null || headBuffer.Length < need) headBuffer = GC.AllocateUninitializedArray<float>(need, pinned: true);
        float* kt = (float*)Unsafe.AsPointer(ref headBuffer[0]), scores = kt + hd * sp, keyRank = scores + QueryBlock * sp, keep = keyRank + sp, tail = keep + sp;
        KeysOfHead(b, h, qkv, mask, a, sp, kt, keyRank);
        float* v = qkv + a.Qkv(b, 0, 2, h, 0); // V's rows in place: row j at j·ldv
        int ldv = (int)(a.Qkv(b, 1, 2, h, 0) - a.Qkv(b, 0, 2, h, 0));
        float* max = stackalloc float[QueryBlock], sum = stackalloc float[QueryBlock], queryRank = stackalloc float[QueryBlock];

        for (int i0 = 0; i0 < s; i0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, s - i0);
            float* q0 = qkv + a.Qkv(b, i0, 0, h, 0), q1 = qkv + a.Qkv(b, i0 + Math.Min(1, rows - 1), 0, h, 0);
            float* q2 = qkv + a.Qkv(b, i0 + Math.Min(2, rows - 1), 0, h, 0), q3 = qkv + a.Qkv(b, i0 + Math.Min(3, rows - 1), 0, h, 0);
            FourRowsTimes(q0, q1, q2, q3, kt, hd, sp, sp, scores, sp);
            QueryRanks(mask, a, b, i0, queryRank);
            SoftmaxFourRows(scores, keyRank, queryRank, a.Scale, sp, max, sum);
            for (int r = 0; r < rows; r++)
            {
                float* row = scores + r * sp;
                int i = i0 + r;
                long at = a.Row(b, h, i);
                // Every key masked: probabilities and context 0, lse +∞ (recomputed probabilities are then 0).
                lse[at] = max[r] == float.NegativeInfinity ? float.PositiveInfinity : max[r] + MathF.Log(sum[r]);
                if (probs != null) new Span<float>(row, s).CopyTo(new Span<float>(probs + at * s, s));
                if (a.DropoutP != 0f)
                {
                    KeepRow(a, b, h, i, keep);
                    for (int j = 0; j < s; j++) row[j] *= keep[j];
                }
            }
            // Context: o_r = Σ_j p_rj·V_j, four rows at a time (rows past the sequence's end go to a scratch block).
            int dv = hd & ~15;
            if (dv > 0)
            {
                float* p0 = scores, p1 = scores + sp, p2 = scores + 2 * sp, p3 = scores + 3 * sp;
                int ldc = (int)(a.Ctx(b, 1, h, 0) - a.Ctx(b, 0, h, 0));
                if (rows == QueryBlock)
                    FourRowsTimes(p0, p1, p2, p3, v, s, ldv, dv, context + a.Ctx(b, i0, h, 0), ldc);
                else
                {
                    FourRowsTimes(p0, p1, p2, p3, v, s, ldv, dv, tail, hd);
                    for (int r = 0; r < rows; r++) new Span<float>(tail + r * hd, dv).CopyTo(new Span<float>(context + a.Ctx(b, i0 + r, h, 0), dv));
                }
            }
            for (int r = 0; r < rows; r++)
                for (int d = dv; d < hd; d++)
                {
                    float o = 0f;
                    for (int j = 0; j < s; j++) o += scores[r * sp + j] * v[(long)j * ldv + d];
                    context[a.Ctx(b, i0 + r, h, d)] = o;
                }
        }
    }

    /// <summary>The same one query row at a time on Vector256 dot products, for machines without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ForwardHeadRows(int b, int h, float* qkv, int* mask, float* context, float* lse, float* probs, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        float* scores = Row(s);
        for (int i = 0; i < s; i++)
        {
            float* q = qkv + a.Qkv(b, i, 0, h, 0);
            float max = Scores(q, i, qkv, mask, b, h, scores, a);
            float* o = context + a.Ctx(b, i, h, 0);
            long row = a.Row(b, h, i);
            if (max == float.NegativeInfinity)
            {
                // Every key masked: context 0, lse +∞ (recomputed probabilities are then 0).
                new Span<float>(o, hd).Clear();
                lse[row] = float.PositiveInfinity;
                if (probs != null) new Span<float>(probs + row * s, s).Clear();
                continue;
            }
            float sum = 0f;
            for (int j = 0; j < s; j++)
            {
                float p = MathF.Exp(scores[j] - max);
                scores[j] = p;
                sum += p;
            }
            float inv = 1f / sum;
            lse[row] = max + MathF.Log(sum);
            new Span<float>(o, hd).Clear();
            for (int j = 0; j < s; j++)
            {
                float p = scores[j] * inv;
                if (probs != null) probs[row * s + j] = p;
                p *= a.Keep(b, h, i, j);
                if (p != 0f) Axpy(p, qkv + a.Qkv(b, j, 2, h, 0), o, hd);
            }
        }
    }

    /// <summary>The backward one query row at a time on Vector256, for machines without AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardHeadRows(int b, int h, float* qkv, int* mask, float* lse, float* dContext, float* dQkv, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        float* buffer = Row(s);
        float* scores = buffer, dScores = buffer + s;
        for (int j = 0; j < s; j++)
        {
            new Span<float>(dQkv + a.Qkv(b, j, 1, h, 0), hd).Clear();
            new Span<float>(dQkv + a.Qkv(b, j, 2, h, 0), hd).Clear();
        }
        for (int i = 0; i < s; i++)
        {
            float* q = qkv + a.Qkv(b, i, 0, h, 0);
            float* dO = dContext + a.Ctx(b, i, h, 0);
            float* dq = dQkv + a.Qkv(b, i, 0, h, 0);
            new Span<float>(dq, hd).Clear();
            float rowLse = lse[a.Row(b, h, i)];
            if (rowLse == float.PositiveInfinity) continue; // fully masked row: no gradient flows
            Scores(q, i, qkv, mask, b, h, scores, a);
            // P, the dropped P and dP; D = Σ P ⊙ dP (equal to rowsum(dO ⊙ O)).
            float dSum = 0f;
            for (int j = 0; j < s; j++)
            {
                float p = MathF.Exp(scores[j] - rowLse);
                float keep = p != 0f ? a.Keep(b, h, i, j) : 0f;
                float dp = keep != 0f ? Dot(dO, qkv + a.Qkv(b, j, 2, h, 0), hd) * keep : 0f;
                if (keep != 0f) Axpy(p * keep, dO, dQkv + a.Qkv(b, j, 2, h, 0), hd); // dV_j += P̃_ij dO_i
                scores[j] = p;
                dScores[j] = dp;
                dSum += p * dp;
            }
            for (int j = 0; j < s; j++)
            {
                float ds = scores[j] * (dScores[j] - dSum) * a.Scale;
                if (ds == 0f) continue;
                Axpy(ds, qkv + a.Qkv(b, j, 1, h, 0), dq, hd);             // dQ_i += dS_ij K_j
                Axpy(ds, q, dQkv + a.Qkv(b, j, 1, h, 0), hd);            // dK_j += dS_ij Q_i
            }
        }
    }

    [ThreadStatic] private static float[]? backwardBuffer;

    /// <summary>
    /// One (sequence, head) backward in the forward's blocked form: the head's Kᵀ, Vᵀ (keys padded to
    /// 16 lanes) and its Q, K and dO rows (dimensions padded to 16) copied out once; then per four query
    /// rows P = exp(s − lse) and dP = dO·Vᵀ as 16-key vectors, dS = P ⊙ (dP − D)/√HD with D = Σ P ⊙ dP,
    /// dQ = dS·K, and dK += dSᵀ·Q, dV += P̃ᵀ·dO into per-head accumulators (rows in order, so the sums
    /// do not depend on the core count), written out at the end.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardHead(int b, int h, float* qkv, int* mask, float* lse, float* dContext, float* dQkv, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim, sp = (s + 15) & ~15, hp = (hd + 15) & ~15;
        long need = 2L * hd * sp + 5L * sp * hp + 2 * QueryBlock * sp + QueryBlock * hp + 2 * sp;
        if (backwardBuffer is null || backwardBuffer.Length < need) backwardBuffer = GC.AllocateUninitializedArray<float>((int)need, pinned: true);
        float* kt = (float*)Unsafe.AsPointer(ref backwardBuffer[0]), vt = kt + hd * sp;
        float* qRows = vt + hd * sp, kRows = qRows + sp * hp, dORows = kRows + sp * hp, dK = dORows + sp * hp, dV = dK + sp * hp;
        float* p = dV + sp * hp, dp = p + QueryBlock * sp, dq = dp + QueryBlock * sp, keyRank = dq + QueryBlock * hp, keep = keyRank + sp;
        float* queryRank = stackalloc float[QueryBlock];
        KeysOfHead(b, h, qkv, mask, a, sp, kt, keyRank);
        for (int j = 0; j < sp; j++)
        {
            float* k = qkv + a.Qkv(b, Math.Min(j, s - 1), 1, h, 0), v = qkv + a.Qkv(b, Math.Min(j, s - 1), 2, h, 0);
            float* q = qkv + a.Qkv(b, Math.Min(j, s - 1), 0, h, 0), dO = dContext + a.Ctx(b, Math.Min(j, s - 1), h, 0);
            for (int d = 0; d < hd; d++) vt[d * sp + j] = j < s ? v[d] : 0f;
            for (int d = 0; d < hp; d++)
            {
                bool real = j < s && d < hd;
                qRows[j * hp + d] = real ? q[d] : 0f;
                kRows[j * hp + d] = real ? k[d] : 0f;
                dORows[j * hp + d] = real ? dO[d] : 0f;
            }
        }
        new Span<float>(dK, 2 * sp * hp).Clear(); // dK and dV
        new Span<float>(keep, sp).Clear();        // padding keys: KeepRow writes the first s
        var scale = Vector512.Create(a.Scale);

        for (int i0 = 0; i0 < s; i0 += QueryBlock)
        {
            int rows = Math.Min(QueryBlock, s - i0);
            float* q0 = qRows + i0 * hp, q1 = q0 + hp, q2 = q1 + hp, q3 = q2 + hp;     // rows past s are zero
            float* o0 = dORows + i0 * hp, o1 = o0 + hp, o2 = o1 + hp, o3 = o2 + hp;
            FourRowsTimes(q0, q1, q2, q3, kt, hd, sp, sp, p, sp);
            QueryRanks(mask, a, b, i0, queryRank);
            MaskScores(p, keyRank, queryRank, a.Scale, sp);
            FourRowsTimes(o0, o1, o2, o3, vt, hd, sp, sp, dp, sp);
            // Per row: P = exp(s − lse) (0 where masked), dropout's keep on dP, D = Σ P ⊙ dP; then dS = P ⊙ (dP − D)/√HD
            // replaces P and P̃ = P ⊙ keep replaces dP.
            for (int r = 0; r < QueryBlock; r++)
            {
                float* pr = p + r * sp, dpr = dp + r * sp;
                float rowLse = r < rows ? lse[a.Row(b, h, i0 + r)] : float.PositiveInfinity;
                if (rowLse == float.PositiveInfinity)
                {
                    // A fully masked row (or one past the sequence): no gradient flows.
                    new Span<float>(pr, sp).Clear();
                    new Span<float>(dpr, sp).Clear();
                    continue;
                }
                var vl = Vector512.Create(rowLse);
                for (int j = 0; j < sp; j += 16) HostMath.Exp(Vector512.Load(pr + j) - vl).Store(pr + j);
                bool dropout = a.DropoutP != 0f;
                if (dropout)
                {
                    KeepRow(a, b, h, i0 + r, keep);
                    for (int j = 0; j < s; j++) dpr[j] *= keep[j];
                }
                var vD = Vector512<float>.Zero;
                for (int j = 0; j < sp; j += 16) vD = Vector512.FusedMultiplyAdd(Vector512.Load(pr + j), Vector512.Load(dpr + j), vD);
                var dSum = Vector512.Create(Vector512.Sum(vD));
                for (int j = 0; j < sp; j += 16)
                {
                    var pj = Vector512.Load(pr + j);
                    var dsj = pj * (Vector512.Load(dpr + j) - dSum) * scale;
                    (dropout ? pj * Vector512.Load(keep + j) : pj).Store(dpr + j);
                    dsj.Store(pr + j);
                }
            }
            // dQ_r = Σ_j dS_rj K_j; dK_j += Σ_r dS_rj Q_r and dV_j += Σ_r P̃_rj dO_r, 16 dimensions at a time.
            float* s0 = p, s1 = p + sp, s2 = p + 2 * sp, s3 = p + 3 * sp, t0 = dp, t1 = dp + sp, t2 = dp + 2 * sp, t3 = dp + 3 * sp;
            for (int d = 0; d < hp; d += 16)
            {
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                var vq0 = Vector512.Load(q0 + d); var vq1 = Vector512.Load(q1 + d); var vq2 = Vector512.Load(q2 + d); var vq3 = Vector512.Load(q3 + d);
                var vo0 = Vector512.Load(o0 + d); var vo1 = Vector512.Load(o1 + d); var vo2 = Vector512.Load(o2 + d); var vo3 = Vector512.Load(o3 + d);
                for (int j = 0; j < s; j++)
                {
                    var kj = Vector512.Load(kRows + j * hp + d);
                    Vector512<float> w0 = Vector512.Create(s0[j]), w1 = Vector512.Create(s1[j]), w2 = Vector512.Create(s2[j]), w3 = Vector512.Create(s3[j]);
                    a0 = Vector512.FusedMultiplyAdd(w0, kj, a0);
                    a1 = Vector512.FusedMultiplyAdd(w1, kj, a1);
                    a2 = Vector512.FusedMultiplyAdd(w2, kj, a2);
                    a3 = Vector512.FusedMultiplyAdd(w3, kj, a3);
                    float* dkj = dK + j * hp + d, dvj = dV + j * hp + d;
                    var gk = Vector512.FusedMultiplyAdd(w0, vq0, Vector512.Load(dkj));
                    gk = Vector512.FusedMultiplyAdd(w1, vq1, gk);
                    gk = Vector512.FusedMultiplyAdd(w2, vq2, gk);
                    Vector512.FusedMultiplyAdd(w3, vq3, gk).Store(dkj);
                    var gv = Vector512.FusedMultiplyAdd(Vector512.Create(t0[j]), vo0, Vector512.Load(dvj));
                    gv = Vector512.FusedMultiplyAdd(Vector512.Create(t1[j]), vo1, gv);
                    gv = Vector512.FusedMultiplyAdd(Vector512.Create(t2[j]), vo2, gv);
                    Vector512.FusedMultiplyAdd(Vector512.Create(t3[j]), vo3, gv).Store(dvj);
                }
                a0.Store(dq + d); a1.Store(dq + hp + d); a2.Store(dq + 2 * hp + d); a3.Store(dq + 3 * hp + d);
            }
            for (int r = 0; r < rows; r++)
                new Span<float>(dq + r * hp, hd).CopyTo(new Span<float>(dQkv + a.Qkv(b, i0 + r, 0, h, 0), hd));
        }
        for (int j = 0; j < s; j++)
        {
            new Span<float>(dK + j * hp, hd).CopyTo(new Span<float>(dQkv + a.Qkv(b, j, 1, h, 0), hd));
            new Span<float>(dV + j * hp, hd).CopyTo(new Span<float>(dQkv + a.Qkv(b, j, 2, h, 0), hd));
        }
    }

    /// <summary>
    /// Kᵀ of head h of sequence b into kt [HD × sp] (padding keys 0) and each key's rank (see
    /// AttentionShape.KeyRank; +∞ for padding keys), once per head, not per query row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KeysOfHead(int b, int h, float* qkv, int* mask, AttentionShape a, int sp, float* kt, float* keyRank)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        long ldk = a.Qkv(b, 1, 1, h, 0) - a.Qkv(b, 0, 1, h, 0);
        // Whole 16 × 16 blocks of K transposed in registers, the ragged edges (and zero padding keys) one by one.
        int jv = s & ~15, dv = hd & ~15;
        for (int j = 0; j < jv; j += 16)
            for (int d = 0; d < dv; d += 16)
                HostGemm.Transpose16x16(qkv + a.Qkv(b, j, 1, h, d), ldk, 16, kt + d * sp + j, sp);
        for (int j = 0; j < sp; j++)
        {
            keyRank[j] = KeyRank(mask, a, b, j);
            float* k = qkv + a.Qkv(b, Math.Min(j, s - 1), 1, h, 0);
            for (int d = j < jv ? dv : 0; d < hd; d++) kt[d * sp + j] = j < s ? k[d] : 0f;
        }
    }

    /// <summary>Key j's rank, as AttentionShape.KeyRank gives it to the kernels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static float KeyRank(int* mask, AttentionShape a, int b, int j) =>
        j >= a.SeqLen ? float.PositiveInfinity : mask == null ? 0f : AttentionShape.RankOfKey(mask[(long)b * a.SeqLen + j], a.Ranks);

    /// <summary>Query i's rank, as AttentionShape.QueryRank gives it to the kernels (−∞ past the sequence: it sees nothing).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static float QueryRank(int* mask, AttentionShape a, int b, int i) =>
        i >= a.SeqLen ? float.NegativeInfinity : mask != null && a.Ranks != 0 ? mask[((long)a.Batch + b) * a.SeqLen + i] : 0f;

    /// <summary>The ranks of queries i0 … i0 + 3 into rank[0..3].</summary>
    private static void QueryRanks(int* mask, AttentionShape a, int b, int i0, float* rank)
    {
        for (int r = 0; r < QueryBlock; r++) rank[r] = QueryRank(mask, a, b, i0 + r);
    }

    /// <summary>
    /// output[r·ldo + j] = Σ_d x_r[d]·m[d·ldm + j] for four rows x_r and <paramref name="cols"/> (a multiple of 16) columns:
    /// the scores (x = queries, m = Kᵀ) and the context (x = probabilities, m = V), sums over d in order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static void FourRowsTimes(float* x0, float* x1, float* x2, float* x3, float* m, int depth, int ldm, int cols, float* output, int ldo)
    {
        int j = 0;
        // 64 columns at a time: sixteen FMAs per four broadcasts and four loads (loads, not FMAs, bound the narrower
        // steps); then 32 (eight independent chains); the same sums in the same order.
        for (; j + 64 <= cols; j += 64)
        {
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
            Vector512<float> f0 = default, f1 = default, f2 = default, f3 = default, g0 = default, g1 = default, g2 = default, g3 = default;
            for (int d = 0; d < depth; d++)
            {
                float* md = m + d * ldm + j;
                var m0 = Vector512.Load(md);
                var m1 = Vector512.Load(md + 16);
                var m2 = Vector512.Load(md + 32);
                var m3 = Vector512.Load(md + 48);
                var y = Vector512.Create(x0[d]);
                c0 = Vector512.FusedMultiplyAdd(y, m0, c0); e0 = Vector512.FusedMultiplyAdd(y, m1, e0);
                f0 = Vector512.FusedMultiplyAdd(y, m2, f0); g0 = Vector512.FusedMultiplyAdd(y, m3, g0);
                y = Vector512.Create(x1[d]);
                c1 = Vector512.FusedMultiplyAdd(y, m0, c1); e1 = Vector512.FusedMultiplyAdd(y, m1, e1);
                f1 = Vector512.FusedMultiplyAdd(y, m2, f1); g1 = Vector512.FusedMultiplyAdd(y, m3, g1);
                y = Vector512.Create(x2[d]);
                c2 = Vector512.FusedMultiplyAdd(y, m0, c2); e2 = Vector512.FusedMultiplyAdd(y, m1, e2);
                f2 = Vector512.FusedMultiplyAdd(y, m2, f2); g2 = Vector512.FusedMultiplyAdd(y, m3, g2);
                y = Vector512.Create(x3[d]);
                c3 = Vector512.FusedMultiplyAdd(y, m0, c3); e3 = Vector512.FusedMultiplyAdd(y, m1, e3);
                f3 = Vector512.FusedMultiplyAdd(y, m2, f3); g3 = Vector512.FusedMultiplyAdd(y, m3, g3);
            }
            c0.Store(output + j); e0.Store(output + j + 16); f0.Store(output + j + 32); g0.Store(output + j + 48);
            c1.Store(output + ldo + j); e1.Store(output + ldo + j + 16); f1.Store(output + ldo + j + 32); g1.Store(output + ldo + j + 48);
            c2.Store(output + 2 * ldo + j); e2.Store(output + 2 * ldo + j + 16); f2.Store(output + 2 * ldo + j + 32); g2.Store(output + 2 * ldo + j + 48);
            c3.Store(output + 3 * ldo + j); e3.Store(output + 3 * ldo + j + 16); f3.Store(output + 3 * ldo + j + 32); g3.Store(output + 3 * ldo + j + 48);
        }
        for (; j + 32 <= cols; j += 32)
        {
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
            for (int d = 0; d < depth; d++)
            {
                var mv = Vector512.Load(m + d * ldm + j);
                var mw = Vector512.Load(m + d * ldm + j + 16);
                var y = Vector512.Create(x0[d]);
                c0 = Vector512.FusedMultiplyAdd(y, mv, c0); e0 = Vector512.FusedMultiplyAdd(y, mw, e0);
                y = Vector512.Create(x1[d]);
                c1 = Vector512.FusedMultiplyAdd(y, mv, c1); e1 = Vector512.FusedMultiplyAdd(y, mw, e1);
                y = Vector512.Create(x2[d]);
                c2 = Vector512.FusedMultiplyAdd(y, mv, c2); e2 = Vector512.FusedMultiplyAdd(y, mw, e2);
                y = Vector512.Create(x3[d]);
                c3 = Vector512.FusedMultiplyAdd(y, mv, c3); e3 = Vector512.FusedMultiplyAdd(y, mw, e3);
            }
            c0.Store(output + j); c1.Store(output + ldo + j); c2.Store(output + 2 * ldo + j); c3.Store(output + 3 * ldo + j);
            e0.Store(output + j + 16); e1.Store(output + ldo + j + 16); e2.Store(output + 2 * ldo + j + 16); e3.Store(output + 3 * ldo + j + 16);
        }
        for (; j < cols; j += 16)
        {
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
            for (int d = 0; d < depth; d++)
            {
                var mv = Vector512.Load(m + d * ldm + j);
                c0 = Vector512.FusedMultiplyAdd(Vector512.Create(x0[d]), mv, c0);
                c1 = Vector512.FusedMultiplyAdd(Vector512.Create(x1[d]), mv, c1);
                c2 = Vector512.FusedMultiplyAdd(Vector512.Create(x2[d]), mv, c2);
                c3 = Vector512.FusedMultiplyAdd(Vector512.Create(x3[d]), mv, c3);
            }
            c0.Store(output + j); c1.Store(output + ldo + j); c2.Store(output + 2 * ldo + j); c3.Store(output + 3 * ldo + j);
        }
    }

    /// <summary>
    /// The softmax of four score rows (queries of ranks queryRank[0..3]) in place, as <see cref="MaskScores"/> and then, per row,
    /// m = max, e = exp(s − m) summed, p = e·(1/Σe) would compute it (the same operations in the same order), but the
    /// rows interleaved (four independent chains) and the masking folded into the pass that finds the maxima.
    /// A row with every key masked gets p = 0 (its max is −∞ and sum 0). Returns each row's max and Σe.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static void SoftmaxFourRows(float* scores, float* keyRank, float* queryRank, float scale, int sp, float* max, float* sum)
    {
        var vs = Vector512.Create(scale);
        float* r0 = scores, r1 = scores + sp, r2 = scores + 2 * sp, r3 = scores + 3 * sp;
        Vector512<float> m0 = Vector512.Create(float.NegativeInfinity), m1 = m0, m2 = m0, m3 = m0;
        for (int j = 0; j < sp; j += 16)
        {
            var ranks = Vector512.Load(keyRank + j);
            var x0 = Masked(Vector512.Load(r0 + j), vs, ranks, queryRank[0]);
            var x1 = Masked(Vector512.Load(r1 + j), vs, ranks, queryRank[1]);
            var x2 = Masked(Vector512.Load(r2 + j), vs, ranks, queryRank[2]);
            var x3 = Masked(Vector512.Load(r3 + j), vs, ranks, queryRank[3]);
            x0.Store(r0 + j); x1.Store(r1 + j); x2.Store(r2 + j); x3.Store(r3 + j);
            m0 = Vector512.Max(m0, x0); m1 = Vector512.Max(m1, x1); m2 = Vector512.Max(m2, x2); m3 = Vector512.Max(m3, x3);
        }
        max[0] = HostMath.MaxLanes(m0); max[1] = HostMath.MaxLanes(m1); max[2] = HostMath.MaxLanes(m2); max[3] = HostMath.MaxLanes(m3);
        // A fully masked row subtracts 0: every e is exp(−∞) = 0.
        static Vector512<float> Shift(float m) => Vector512.Create(m == float.NegativeInfinity ? 0f : m);
        Vector512<float> v0 = Shift(max[0]), v1 = Shift(max[1]), v2 = Shift(max[2]), v3 = Shift(max[3]);
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int j = 0; j < sp; j += 16)
        {
            // exp(−∞) = 0 for masked and padding keys; exp(0) exactly 1 at the maximum (a one-key row must
            // reproduce V exactly, as MathF.Exp does).
            var e0 = HostMath.Exp(Vector512.Load(r0 + j) - v0); e0.Store(r0 + j); s0 += e0;
            var e1 = HostMath.Exp(Vector512.Load(r1 + j) - v1); e1.Store(r1 + j); s1 += e1;
            var e2 = HostMath.Exp(Vector512.Load(r2 + j) - v2); e2.Store(r2 + j); s2 += e2;
            var e3 = HostMath.Exp(Vector512.Load(r3 + j) - v3); e3.Store(r3 + j); s3 += e3;
        }
        sum[0] = Vector512.Sum(s0); sum[1] = Vector512.Sum(s1); sum[2] = Vector512.Sum(s2); sum[3] = Vector512.Sum(s3);
        static Vector512<float> Inverse(float sum) => Vector512.Create(sum > 0f ? 1f / sum : 0f);
        Vector512<float> n0 = Inverse(sum[0]), n1 = Inverse(sum[1]), n2 = Inverse(sum[2]), n3 = Inverse(sum[3]);
        for (int j = 0; j < sp; j += 16)
        {
            (Vector512.Load(r0 + j) * n0).Store(r0 + j);
            (Vector512.Load(r1 + j) * n1).Store(r1 + j);
            (Vector512.Load(r2 + j) * n2).Store(r2 + j);
            (Vector512.Load(r3 + j) * n3).Store(r3 + j);
        }
    }

    /// <summary>
    /// Four score rows (queries of ranks queryRank[0..3]) scaled by 1/√HD where the query sees the key and set to
    /// −∞ where not (selected, not added: −∞ even where a score overflowed).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static void MaskScores(float* scores, float* keyRank, float* queryRank, float scale, int sp)
    {
        var vs = Vector512.Create(scale);
        for (int j = 0; j < sp; j += 16)
        {
            var ranks = Vector512.Load(keyRank + j);
            for (int r = 0; r < QueryBlock; r++)
                Masked(Vector512.Load(scores + r * sp + j), vs, ranks, queryRank[r]).Store(scores + r * sp + j);
        }
    }

    /// <summary>16 scores of a query scaled where it sees the key (key rank ≤ query rank), −∞ where not.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> Masked(Vector512<float> score, Vector512<float> scale, Vector512<float> keyRank, float queryRank) =>
        Vector512.ConditionalSelect(Vector512.LessThanOrEqual(keyRank, Vector512.Create(queryRank)), score * scale,
            Vector512.Create(float.NegativeInfinity));

    /// <summary>
    /// keep[j] = a.Keep(b, h, i, j) for the row's s keys: one Philox block per four consecutive elements
    /// (Keep draws a whole block per element and uses one of its four words).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KeepRow(AttentionShape a, int b, int h, int i, float* keep)
    {
        long index0 = a.Row(b, h, i) * a.SeqLen, group = -1;
        float scale = 1f / (1f - a.DropoutP);
        // Keys [v0, v1) start on a whole group of four and come 16 at a time (up to 64 per Philox call);
        // the rest, before and after, one at a time.
        int v0 = 0, v1 = 0;
        if (Avx512F.IsSupported)
        {
            v0 = (int)(-index0 & 3);
            v1 = v0 + Math.Max(0, a.SeqLen - v0) / 16 * 16;
            var factor = Vector512.Create(scale);
            float p = a.DropoutP;
            Vector512<float> Factors(Vector512<uint> words) => Vector512.ConditionalSelect(HostRows.Keeps(words, p), factor, Vector512<float>.Zero);
            for (int j = v0; j < v1; j += 64)
            {
                Philox.Words64(a.Seed, a.Step, a.TensorId, (index0 + j) >> 2, out var w0, out var w1, out var w2, out var w3);
                Factors(w0).Store(keep + j);
                if (j + 32 <= v1) Factors(w1).Store(keep + j + 16);
                if (j + 48 <= v1) Factors(w2).Store(keep + j + 32);
                if (j + 64 <= v1) Factors(w3).Store(keep + j + 48);
            }
        }
        uint r0 = 0, r1 = 0, r2 = 0, r3 = 0;
        for (int j = 0; j < a.SeqLen; j++)
        {
            if (j == v0 && v1 > v0) j = v1;
            if (j >= a.SeqLen) break;
            long index = index0 + j;
            if (index >> 2 != group)
            {
                group = index >> 2;
                Philox.Bits(a.Seed, a.Step, a.TensorId, group, out r0, out r1, out r2, out r3);
            }
            uint word = (index & 3) switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
            keep[j] = DropoutKernels.Keeps(word, a.DropoutP) ? scale : 0f;
        }
    }

    /// <summary>scores[j] = q·k_j/√HD for query row i (−∞ where it does not see key j); returns the row maximum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Scores(float* q, int i, float* qkv, int* mask, int b, int h, float* scores, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        float max = float.NegativeInfinity, queryRank = QueryRank(mask, a, b, i);
        for (int j = 0; j < s; j++)
        {
            float v = KeyRank(mask, a, b, j) <= queryRank ? Dot(q, qkv + a.Qkv(b, j, 1, h, 0), hd) * a.Scale : float.NegativeInfinity;
            scores[j] = v;
            max = MathF.Max(max, v);
        }
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Dot(float* x, float* y, int n)
    {
        int d = 0;
        var acc = Vector256<float>.Zero;
        for (; d + 8 <= n; d += 8)
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(x + d), Vector256.Load(y + d), acc);
        float sum = Vector256.Sum(acc);
        for (; d < n; d++) sum += x[d] * y[d];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Axpy(float alpha, float* x, float* y, int n)
    {
        int d = 0;
        var va = Vector256.Create(alpha);
        for (; d + 8 <= n; d += 8)
            Vector256.FusedMultiplyAdd(va, Vector256.Load(x + d), Vector256.Load(y + d)).Store(y + d);
        for (; d < n; d++) y[d] += alpha * x[d];
    }
}
