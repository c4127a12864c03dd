// Fused multi-head self-attention, forward and backward, without an S×S buffer in device memory
// (FlashAttention-2, Dao 2023): softmax(Q·Kᵀ/√HD + mask)·V per head, with dropout on the
// probabilities as HF's BertSelfAttention applies it.
//
// Layouts, chosen so no transposes are needed around the fused QKV projection:
//   qkv     [B, S, 3, NH, HD]   the QKV GEMM's output (q, k, v for each head side by side)
//   mask    [B, S] int          HF's attention_mask: per key 0 masked, 1 seen by every query (optional), or
//           [2, B, S] int       with shape.Ranks = 1, a rank mask: every key's rank, then every query's
//   context [B, S, NH·HD]       ready for the output projection
//   lse     [B, NH, S]          log-Σ-exp of each query row, saved for backward
//   dQkv    [B, S, 3, NH, HD]   the gradient in the same fused layout
// A rank mask says which query sees which key with 2·B·S ints and no S×S tensor: query i sees key j
// when rank(j) ≤ rank(i) (key ranks and query ranks kept apart, so a query may be denied its own key).
// UniLM's masks (Dong et al. 2019): bidirectional = every rank 0; left-to-right = rank = position;
// prefix (seq2seq) = 0 over the source, the position over the target. XLNet's two streams: a content
// query of factorisation rank r sees keys of rank ≤ r, a query-stream row (its own key never seen)
// rank < r. Padding keys get NeverSeen.
// Masked keys get probability exactly 0. A query row whose keys are all masked gets context 0 and
// lse = +∞ (so every recomputed probability is exp(s − ∞) = 0), never NaN.
// Dropout draws element ((b·NH + h)·S + i)·S + j of Philox (see Dropout.cs): the same bits the
// materialised path's dropout kernel draws for a [B, NH, S, S] buffer, regenerated in backward.
//
// GPU kernels: one group per (query tile, head, sequence); register tiles of scores and output, with
// tiles of Q, K and V in static shared memory (≤ 45 KB); the online softmax rescales the running output
// by exp(m_old − m_new) per key tile (FlashForwardKernel for HD ≤ 64, FlashWideForwardKernel up to 128). Backward is two deterministic kernels (dK, dV
// per key tile looping over queries; dQ per query tile looping over keys) after a row-wise
// D = rowsum(dO ⊙ O): no atomics; for HD ≤ 64 both are register-tiled (FlashDkDvKernel, FlashDqKernel). On the CPU accelerator the same math runs as host SIMD code
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

    /// <summary>
    /// 1: the mask is a rank mask [2, B, S] (every key's rank, then every query's) rather than HF's
    /// attention_mask [B, S] of 0/1. Set by the caller; see the file's header.
    /// </summary>
    public int Ranks;

    /// <summary>1 when qkv and context can be read and written as float4s (aligned starts, HD a multiple of 4).</summary>
    public int Vec;

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

    /// <summary>The key rank no query reaches: a masked key in a rank mask.</summary>
    public const int NeverSeen = int.MaxValue;

    /// <summary>Ranks are compared as floats: every other rank must lie in [0, 2^24), where floats hold integers exactly.</summary>
    public const int MaxRank = 1 << 24;

    /// <summary>
    /// The rank of key j of sequence b: +∞ past the sequence, 0 without a mask; with HF's
    /// attention_mask 0 where the key is seen by every query and +∞ where masked; with a rank mask its
    /// value (<see cref="NeverSeen"/> beyond every query).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly float KeyRank(ArrayView<int> mask, int b, int j) =>
        j >= SeqLen ? float.PositiveInfinity : HasMask == 0 ? 0f : RankOfKey(mask[(long)b * SeqLen + j], Ranks);

    /// <summary>A key's rank from its mask value: the value itself in a rank mask, 0 or +∞ from attention_mask's 1 or 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float RankOfKey(int m, int ranks) => ranks != 0 ? m : m == 0 ? float.PositiveInfinity : 0f;

    /// <summary>The rank of query i of sequence b: −∞ past the sequence (it sees nothing), its value in a rank mask, else 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly float QueryRank(ArrayView<int> mask, int b, int i) =>
        i >= SeqLen ? float.NegativeInfinity : HasMask != 0 && Ranks != 0 ? mask[((long)Batch + b) * SeqLen + i] : 0f;

    /// <summary>The ranks of queries i … i + 3 of sequence b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly Float4 QueryRanks4(ArrayView<int> mask, int b, int i) => new(QueryRank(mask, b, i), QueryRank(mask, b, i + 1),
        QueryRank(mask, b, i + 2), QueryRank(mask, b, i + 3));

    /// <summary>Whether query i sees key j of sequence b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly bool Attends(ArrayView<int> mask, int b, int i, int j) => KeyRank(mask, b, j) <= QueryRank(mask, b, i);

    /// <summary>The ranks of keys j … j + 3 of sequence b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal readonly Float4 KeyRanks4(ArrayView<int> mask, int b, int j) => new(KeyRank(mask, b, j), KeyRank(mask, b, j + 1),
        KeyRank(mask, b, j + 2), KeyRank(mask, b, j + 3));

    /// <summary>1 or 0 for keys of ranks <paramref name="keyRanks"/> as seen by a query of rank <paramref name="queryRank"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Float4 Visible4(Float4 keyRanks, float queryRank) => new(Visible(keyRanks.X, queryRank), Visible(keyRanks.Y, queryRank),
        Visible(keyRanks.Z, queryRank), Visible(keyRanks.W, queryRank));

    /// <summary>1 where a query of rank <paramref name="queryRank"/> sees a key of rank <paramref name="keyRank"/> (key rank ≤ query rank), else 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Visible(float keyRank, float queryRank) => keyRank <= queryRank ? 1f : 0f;
}

public sealed class AttentionKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>> flash, wide;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>> rowDot;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>> flashDkDv, flashDq, wideDkDv, wideDq;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, AttentionShape>> maskScores;

    internal AttentionKernels(KernelSet set)
    {
        this.set = set;
        wide = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashWideForwardKernel));
        flash = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashForwardKernel));
        rowDot = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(RowDotKernel));
        wideDkDv = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashWideDkDvKernel));
        wideDq = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashWideDqKernel));
        maskScores = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, AttentionShape>(MaskScoresKernel));
        flashDkDv = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashDkDvKernel));
        flashDq = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(FlashDqKernel));
    }

    /// <summary>When true on the CPU accelerator, run the ILGPU kernels instead of host SIMD code (tests).</summary>
    public bool ForceDeviceKernel { get; set; }

    private bool UseHost => set.IsCpu && !ForceDeviceKernel;

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
        var m = shape.HasMask != 0 ? mask : Dummy();
        var p = shape.WriteProbs != 0 ? probs : context;
        if (shape.HeadDim <= FlashHd)
        {
            if (((IContiguousArrayView)context).Index % 4 != 0) shape.Vec = 0;
            flash.Value(new KernelConfig(new Index3D((shape.SeqLen + FlashQ - 1) / FlashQ, shape.Heads, shape.Batch), new Index3D(FlashGroup, 1, 1)),
                qkv, m, context, lse, p, shape);
        }
        else
        {
            if (((IContiguousArrayView)context).Index % 4 != 0) shape.Vec = 0;
            wide.Value(new KernelConfig(new Index3D((shape.SeqLen + WideQ - 1) / WideQ, shape.Heads, shape.Batch), new Index3D(FlashGroup, 1, 1)),
                qkv, m, context, lse, p, shape);
        }
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
        rowDot.Value(set.GridStride(shape.RowCount), dContext, context, d, shape);
        if (shape.HeadDim <= FlashHd)
        {
            var blocks = new KernelConfig(new Index3D((shape.SeqLen + BwdBlock - 1) / BwdBlock, shape.Heads, shape.Batch), new Index3D(FlashGroup, 1, 1));
            flashDkDv.Value(blocks, qkv, m, lse, d, dContext, dQkv, shape);
            flashDq.Value(blocks, qkv, m, lse, d, dContext, dQkv, shape);
            return;
        }
        var wideBlocks = new KernelConfig(new Index3D((shape.SeqLen + WideBwd - 1) / WideBwd, shape.Heads, shape.Batch), new Index3D(FlashGroup, 1, 1));
        wideDkDv.Value(wideBlocks, qkv, m, lse, d, dContext, dQkv, shape);
        wideDq.Value(wideBlocks, qkv, m, lse, d, dContext, dQkv, shape);
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
            maskScores.Value(set.GridStride(shape.RowCount * s), probs, mask, shape);
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
        if (shape.HasMask != 0) Check.Vector(shape.Ranks != 0 ? "rank mask" : "attention_mask", mask, (shape.Ranks != 0 ? 2L : 1L) * shape.Batch * shape.SeqLen);
        if (shape.HasMask == 0 && shape.Ranks != 0) throw new ArgumentException("a rank mask was announced (Ranks = 1) but none given");
        shape.WriteProbs = probs.IsValid && probs.Length > 0 ? 1 : 0;
        if (shape.WriteProbs != 0) Check.Vector("probs", probs, shape.RowCount * shape.SeqLen);
        shape.Vec = shape.HeadDim % 4 == 0 && ((IContiguousArrayView)qkv).Index % 4 == 0 ? 1 : 0;
        return shape;
    }

    private ArrayView<int> Dummy() => set.IntScratch([0]);

    // FlashAttention-2's forward for head dims ≤ 64 (every BERT size of Turc et al. and HF's base and
    // large). A group of 128 threads owns 64 query rows of one head; K and V stream through shared
    // memory 32 keys at a time. Thread t holds rows 4·(t/8)..+3: their scores against keys
    // 4·(t%8)..+3 of the tile (a 4×4 register tile), their output in columns 4·(t%8)..+3 and
    // 32 + 4·(t%8)..+3 (4×8 registers), and their running max and partial sum. A row's eight
    // threads agree on its max through shared memory once per tile (fixed order, no shuffles, so
    // OpenCL devices without sub-groups run it too); the partial sums are only combined at the end.
    // Shared memory, 34 KB: Q [HD][64] (transposed), K [HD][32] (transposed; reused for the tile's
    // probabilities [32][64]), V [32][HD], and the row partials [64][8].
    internal const int FlashQ = 64, FlashK = 32, FlashHd = 64, FlashGroup = 128;
    internal const int FlashShared4 = (FlashHd * FlashQ + FlashHd * FlashK + FlashK * FlashHd + FlashQ * 8) / 4;

    /// <summary>
    /// Head h of sequence b of qkv, from (b, 0, 0, h, 0) on, as floats and (when Vec) as float4s: one
    /// 64-bit offset here, 32-bit ones inside.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ArrayView<float> HeadView(ArrayView<float> qkv, AttentionShape a, int b, int h, out ArrayView<Float4> head4)
    {
        long headOff = a.Qkv(b, 0, 0, h, 0);
        var qkv4 = qkv.Cast<Float4>();
        long headOff4 = a.Vec != 0 ? headOff >> 2 : 0;
        head4 = qkv4.SubView(headOff4, qkv4.Length - headOff4);
        return qkv.SubView(headOff, qkv.Length - headOff);
    }

    /// <summary>
    /// Four consecutive head elements d..d+3 of row i of one part, from the head's view (qkv from
    /// (b, 0, 0, h, 0) on: 32-bit offsets inside it); zero past the sequence or the head.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 QkvChunk(ArrayView<float> head, ArrayView<Float4> head4, AttentionShape a, int i, int part, int d)
    {
        int hd = a.HeadDim;
        if (i >= a.SeqLen || d >= hd)
            return default;
        int off = (i * 3 + part) * a.Hidden + d;
        if (a.Vec != 0)
            return head4[off >> 2];
        return new Float4(head[off], d + 1 < hd ? head[off + 1] : 0f, d + 2 < hd ? head[off + 2] : 0f, d + 3 < hd ? head[off + 3] : 0f);
    }

    /// <summary>
    /// The group loads rows row0.. of one part transposed into tile [d][row] (width rows per d), for heads
    /// up to 4·2^<paramref name="chunkBits"/> (4: 64, 5: 128; a shift, which stays a shift in the kernel, where
    /// a division by a constant does not).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadTransposed(ArrayView<float> head, ArrayView<Float4> head4, ArrayView<float> tile, AttentionShape a,
        int part, int row0, int rows, int t, int chunkBits = 4)
    {
        for (int e = t; e < rows << chunkBits; e += FlashGroup)
        {
            int r = e >> chunkBits, d = (e & ((1 << chunkBits) - 1)) * 4;
            var c = QkvChunk(head, head4, a, row0 + r, part, d);
            tile[d * rows + r] = c.X;
            tile[(d + 1) * rows + r] = c.Y;
            tile[(d + 2) * rows + r] = c.Z;
            tile[(d + 3) * rows + r] = c.W;
        }
    }

    /// <summary>Scores of this thread's 4 rows against its 4 keys: Σ_d Q[d][rows]·K[d][keys], d in steps of 8 (tiles are zero past the head).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Acc4x4 Scores(ArrayView<Float4> q4, ArrayView<Float4> k4, int hd, int rg, int cg)
    {
        var s = new Acc4x4();
        for (int d = 0; d < hd; d += 8)
        {
            var q = q4.SubView(d * (FlashQ / 4) + rg, 7 * (FlashQ / 4) + 1);
            var k = k4.SubView(d * (FlashK / 4) + cg, 7 * (FlashK / 4) + 1);
            s.Fma(q[0], k[0]);
            s.Fma(q[1 * (FlashQ / 4)], k[1 * (FlashK / 4)]);
            s.Fma(q[2 * (FlashQ / 4)], k[2 * (FlashK / 4)]);
            s.Fma(q[3 * (FlashQ / 4)], k[3 * (FlashK / 4)]);
            s.Fma(q[4 * (FlashQ / 4)], k[4 * (FlashK / 4)]);
            s.Fma(q[5 * (FlashQ / 4)], k[5 * (FlashK / 4)]);
            s.Fma(q[6 * (FlashQ / 4)], k[6 * (FlashK / 4)]);
            s.Fma(q[7 * (FlashQ / 4)], k[7 * (FlashK / 4)]);
        }
        return s;
    }

    /// <summary>Scaled scores with masked keys and keys past the sequence at −∞.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 MaskRow(Float4 s, float scale, Float4 keep) =>
        new(keep.X != 0f ? s.X * scale : float.NegativeInfinity, keep.Y != 0f ? s.Y * scale : float.NegativeInfinity,
            keep.Z != 0f ? s.Z * scale : float.NegativeInfinity, keep.W != 0f ? s.W * scale : float.NegativeInfinity);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Max4(Float4 v) => MathF.Max(MathF.Max(v.X, v.Y), MathF.Max(v.Z, v.W));

    /// <summary>exp(v − m) element-wise, 0 for v = −∞ (and for every v when m = −∞).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Exp(Float4 v, float m) => m == float.NegativeInfinity ? default
        : new(MathF.Exp(v.X - m), MathF.Exp(v.Y - m), MathF.Exp(v.Z - m), MathF.Exp(v.W - m));

    /// <summary>Dropout's keep factors of keys j..j+3 of query row i (a loop: one copy of Philox in the kernel).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Keeps(AttentionShape a, int b, int h, int i, int j)
    {
        var keep = default(Float4);
        for (int y = 0; y < 4; y++)
            keep = keep.With(y, a.Keep(b, h, i, j + y));
        return keep;
    }

    /// <summary>Σ of the row's eight partials in shared memory (fixed order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float SumPartials(ArrayView<Float4> red4, int row)
    {
        var lo = red4[row * 2];
        var hi = red4[row * 2 + 1];
        return lo.X + lo.Y + lo.Z + lo.W + hi.X + hi.Y + hi.Z + hi.W;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaxPartials(ArrayView<Float4> red4, int row) => MathF.Max(Max4(red4[row * 2]), Max4(red4[row * 2 + 1]));

    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashForwardKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        ArrayView<float> probs, AttentionShape a)
    {
        var shared4 = SharedMemory.Allocate<Float4>(FlashShared4);
        var q4 = shared4.SubView(0, FlashHd * FlashQ / 4);                                  // Q [d][row]
        var k4 = shared4.SubView(FlashHd * FlashQ / 4, FlashHd * FlashK / 4);               // K [d][key], then P [key][row]
        var v4 = shared4.SubView((FlashHd * FlashQ + FlashHd * FlashK) / 4, FlashK * FlashHd / 4); // V [key][d]
        var red4 = shared4.SubView((FlashHd * FlashQ + 2 * FlashHd * FlashK) / 4, FlashQ * 8 / 4);  // [row][8] partials
        var qs = q4.Cast<float>();
        var ks = k4.Cast<float>();
        var red = red4.Cast<float>();
        int t = Group.IdxX, rg = t >> 3, cg = t & 7;
        int i0 = Grid.IdxX * FlashQ, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        int row = rg * 4, col = cg * 4; // the thread's first row in the block, first key in a tile

        LoadTransposed(head, head4, qs, a, 0, i0, FlashQ, t);
        var qr = a.QueryRanks4(mask, b, i0 + row);
        var m = new Float4(float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity);
        var l = default(Float4);
        var o = new Acc4x8();

        for (int j0 = 0; j0 < s; j0 += FlashK)
        {
            LoadTransposed(head, head4, ks, a, 1, j0, FlashK, t);
            for (int e = t; e < FlashK * (FlashHd / 4); e += FlashGroup)
                v4[e] = QkvChunk(head, head4, a, j0 + (e >> 4), 2, (e & 15) * 4);
            Group.Barrier();

            int j = j0 + col;
            var keyRanks = a.KeyRanks4(mask, b, j);
            var sc = Scores(q4, k4, hd8, rg, cg);
            for (int x = 0; x < 4; x++)
                red[(row + x) * 8 + cg] = Max4(MaskRow(sc.Row(x), a.Scale, AttentionShape.Visible4(keyRanks, qr[x])));
            Group.Barrier();

            // Online softmax, a row at a time: the new running max, the rescale of what was
            // accumulated under the old one, and this tile's probabilities (before dropout for the
            // normaliser, after it for V). K is no longer read (every thread passed the barrier
            // after its scores), so the probabilities go there, [key][row].
            var alpha = default(Float4);
            for (int x = 0; x < 4; x++)
            {
                float mOld = m[x], mNew = MathF.Max(mOld, MaxPartials(red4, row + x));
                float rescale = Rescale(mOld, mNew);
                var p = Exp(MaskRow(sc.Row(x), a.Scale, AttentionShape.Visible4(keyRanks, qr[x])), mNew);
                l = l.With(x, l[x] * rescale + p.X + p.Y + p.Z + p.W);
                m = m.With(x, mNew);
                alpha = alpha.With(x, rescale);
                if (a.DropoutP > 0f)
                    p = Mul(p, Keeps(a, b, h, i0 + row + x, j));
                ks[(col + 0) * FlashQ + row + x] = p.X;
                ks[(col + 1) * FlashQ + row + x] = p.Y;
                ks[(col + 2) * FlashQ + row + x] = p.Z;
                ks[(col + 3) * FlashQ + row + x] = p.W;
            }
            o.ScaleRows(alpha);
            Group.Barrier();

            for (int jj = 0; jj < FlashK; jj += 16)
            {
                var p = k4.SubView(jj * (FlashQ / 4) + rg, 15 * (FlashQ / 4) + 1);
                var v = v4.SubView(jj * (FlashHd / 4) + cg, 15 * (FlashHd / 4) + 9);
                o.Fma(p[0 * (FlashQ / 4)], v[0 * (FlashHd / 4)], v[0 * (FlashHd / 4) + 8]);
                o.Fma(p[1 * (FlashQ / 4)], v[1 * (FlashHd / 4)], v[1 * (FlashHd / 4) + 8]);
                o.Fma(p[2 * (FlashQ / 4)], v[2 * (FlashHd / 4)], v[2 * (FlashHd / 4) + 8]);
                o.Fma(p[3 * (FlashQ / 4)], v[3 * (FlashHd / 4)], v[3 * (FlashHd / 4) + 8]);
                o.Fma(p[4 * (FlashQ / 4)], v[4 * (FlashHd / 4)], v[4 * (FlashHd / 4) + 8]);
                o.Fma(p[5 * (FlashQ / 4)], v[5 * (FlashHd / 4)], v[5 * (FlashHd / 4) + 8]);
                o.Fma(p[6 * (FlashQ / 4)], v[6 * (FlashHd / 4)], v[6 * (FlashHd / 4) + 8]);
                o.Fma(p[7 * (FlashQ / 4)], v[7 * (FlashHd / 4)], v[7 * (FlashHd / 4) + 8]);
                o.Fma(p[8 * (FlashQ / 4)], v[8 * (FlashHd / 4)], v[8 * (FlashHd / 4) + 8]);
                o.Fma(p[9 * (FlashQ / 4)], v[9 * (FlashHd / 4)], v[9 * (FlashHd / 4) + 8]);
                o.Fma(p[10 * (FlashQ / 4)], v[10 * (FlashHd / 4)], v[10 * (FlashHd / 4) + 8]);
                o.Fma(p[11 * (FlashQ / 4)], v[11 * (FlashHd / 4)], v[11 * (FlashHd / 4) + 8]);
                o.Fma(p[12 * (FlashQ / 4)], v[12 * (FlashHd / 4)], v[12 * (FlashHd / 4) + 8]);
                o.Fma(p[13 * (FlashQ / 4)], v[13 * (FlashHd / 4)], v[13 * (FlashHd / 4) + 8]);
                o.Fma(p[14 * (FlashQ / 4)], v[14 * (FlashHd / 4)], v[14 * (FlashHd / 4) + 8]);
                o.Fma(p[15 * (FlashQ / 4)], v[15 * (FlashHd / 4)], v[15 * (FlashHd / 4) + 8]);
            }
            Group.Barrier();
        }

        // The rows' sums from their eight partials, then context = O / l and lse = m + log l.
        red[(row + 0) * 8 + cg] = l.X;
        red[(row + 1) * 8 + cg] = l.Y;
        red[(row + 2) * 8 + cg] = l.Z;
        red[(row + 3) * 8 + cg] = l.W;
        Group.Barrier();
        var rowLse = default(Float4);
        var context4 = context.Cast<Float4>();
        for (int x = 0; x < 4; x++)
        {
            float sum = SumPartials(red4, row + x);
            rowLse = rowLse.With(x, Lse(m[x], sum));
            int i = i0 + row + x;
            if (i >= s) continue;
            float inv = sum > 0f ? 1f / sum : 0f;
            o.Row(x, out var lo, out var hi);
            StoreContext(context, context4, a, b, i, h, col, lo.Times(inv));
            StoreContext(context, context4, a, b, i, h, 32 + col, hi.Times(inv));
            if (cg == 0)
                lse[a.Row(b, h, i)] = rowLse[x];
        }
        if (a.WriteProbs == 0)
            return;

        // Probabilities on request: each key tile's scores again, normalised with the final lse.
        for (int j0 = 0; j0 < s; j0 += FlashK)
        {
            Group.Barrier();
            LoadTransposed(head, head4, ks, a, 1, j0, FlashK, t);
            Group.Barrier();
            int j = j0 + col;
            var keyRanks = a.KeyRanks4(mask, b, j);
            var sc = Scores(q4, k4, hd8, rg, cg);
            for (int x = 0; x < 4; x++)
            {
                int i = i0 + row + x;
                if (i >= s) break;
                var p = Exp(MaskRow(sc.Row(x), a.Scale, AttentionShape.Visible4(keyRanks, qr[x])), rowLse[x]);
                long off = a.Row(b, h, i) * s + j;
                if (j < s) probs[off] = p.X;
                if (j + 1 < s) probs[off + 1] = p.Y;
                if (j + 2 < s) probs[off + 2] = p.Z;
                if (j + 3 < s) probs[off + 3] = p.W;
            }
        }
    }

    /// <summary>exp(m_old − m_new): how much of what was accumulated under the old max survives (1 while nothing is attended).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Rescale(float mOld, float mNew) => mNew == float.NegativeInfinity ? 1f : MathF.Exp(mOld - mNew);

    /// <summary>log Σ exp: m + log l, or +∞ for a row with nothing attended (every recomputed probability is then 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Lse(float m, float l) => l > 0f ? m + MathF.Log(l) : float.PositiveInfinity;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Mul(Float4 x, Float4 y) => new(x.X * y.X, x.Y * y.Y, x.Z * y.Z, x.W * y.W);

    /// <summary>Head elements d..d+3 of row i's context (those inside the head).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreContext(ArrayView<float> context, ArrayView<Float4> context4, AttentionShape a, int b, int i, int h, int d, Float4 v)
    {
        int hd = a.HeadDim;
        if (d >= hd)
            return;
        long off = a.Ctx(b, i, h, d);
        if (a.Vec != 0)
        {
            context4[off >> 2] = v;
            return;
        }
        context[off] = v.X;
        if (d + 1 < hd) context[off + 1] = v.Y;
        if (d + 2 < hd) context[off + 2] = v.Z;
        if (d + 3 < hd) context[off + 3] = v.W;
    }

    // FlashAttention-2's forward for head dims 65–128: the same online softmax as FlashForwardKernel,
    // tiled for the wider head. A group of 128 threads owns 32 query rows; keys stream through shared
    // memory 16 at a time. Thread t holds rows 4·(t/16)..+3: their scores against key t%16 of the tile
    // (a 4-row strip), their output in head columns 4·(t%16)..+3 and 64 + 4·(t%16)..+3, and their
    // running max and partial sum. A row's 16 threads agree on its max through shared memory once per
    // tile; the partial sums are combined at the end. Shared memory, 36 KB: Q [HD][32] (transposed),
    // K [HD][16] (transposed), V [16][HD], the tile's probabilities [16][32] and the row partials [32][16].
    internal const int WideQ = 32, WideK = 16, WideHd = AttentionShape.MaxHeadDim;
    private const int WideShared = WideHd * WideQ + WideHd * WideK + WideK * WideHd + WideK * WideQ + WideQ * WideK;

    /// <summary>Scaled scores of rows x = 0..3 (query ranks <paramref name="queryRanks"/>) against one key, −∞ where the row does not see it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 MaskColumn(Float4 s, float scale, float keyRank, Float4 queryRanks) =>
        MaskRow(s, scale, Column(keyRank, queryRanks));

    /// <summary>1 or 0 for one key (of rank <paramref name="keyRank"/>) as seen by four queries.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Column(float keyRank, Float4 queryRanks) => new(AttentionShape.Visible(keyRank, queryRanks.X),
        AttentionShape.Visible(keyRank, queryRanks.Y), AttentionShape.Visible(keyRank, queryRanks.Z), AttentionShape.Visible(keyRank, queryRanks.W));

    /// <summary>Max (or Σ) of a row's 16 partials in shared memory, in a fixed order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Reduce16(ArrayView<Float4> red4, int row, bool max)
    {
        var x = red4[row * 4];
        var y = red4[row * 4 + 1];
        var z = red4[row * 4 + 2];
        var w = red4[row * 4 + 3];
        return max ? MathF.Max(MathF.Max(Max4(x), Max4(y)), MathF.Max(Max4(z), Max4(w)))
            : x.X + x.Y + x.Z + x.W + y.X + y.Y + y.Z + y.W + z.X + z.Y + z.Z + z.W + w.X + w.Y + w.Z + w.W;
    }

    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashWideForwardKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> context, ArrayView<float> lse,
        ArrayView<float> probs, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(WideShared);
        var qT = shared.SubView(0, WideHd * WideQ);                                            // Q [d][row]
        var kT = shared.SubView(WideHd * WideQ, WideHd * WideK);                               // K [d][key]
        var v4 = shared.SubView(WideHd * (WideQ + WideK), WideK * WideHd).Cast<Float4>();      // V [key][d]
        var pT4 = shared.SubView(WideHd * (WideQ + 2 * WideK), WideK * WideQ).Cast<Float4>();  // P [key][row]
        var red = shared.SubView(WideHd * (WideQ + 2 * WideK) + WideK * WideQ, WideQ * WideK); // [row][16] partials
        var red4 = red.Cast<Float4>();
        int t = Group.IdxX, rg = t >> 4, cg = t & 15;
        int i0 = Grid.IdxX * WideQ, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        int row = rg * 4, i = i0 + row; // the thread's first row in the block, and in the sequence

        LoadTransposed(head, head4, qT, a, 0, i0, WideQ, t, chunkBits: 5);
        var qr = a.QueryRanks4(mask, b, i);
        var m = new Float4(float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity);
        var l = default(Float4);
        var o = new Acc4x8();
        for (int j0 = 0; j0 < s; j0 += WideK)
        {
            Group.Barrier(); // the previous tile's readers are done
            LoadTransposed(head, head4, kT, a, 1, j0, WideK, t, chunkBits: 5);
            for (int e = t; e < WideK * (WideHd / 4); e += FlashGroup)
                v4[e] = QkvChunk(head, head4, a, j0 + (e >> 5), 2, (e & 31) * 4);
            Group.Barrier();

            int j = j0 + cg;
            var sc = MaskColumn(Strip(qT.Cast<Float4>(), WideQ, rg, kT, WideK, cg, hd8), a.Scale, a.KeyRank(mask, b, j), qr);
            red[(row + 0) * WideK + cg] = sc.X;
            red[(row + 1) * WideK + cg] = sc.Y;
            red[(row + 2) * WideK + cg] = sc.Z;
            red[(row + 3) * WideK + cg] = sc.W;
            Group.Barrier();

            var mNew = m;
            for (int x = 0; x < 4; x++)
                mNew = mNew.With(x, MathF.Max(m[x], Reduce16(red4, row + x, true)));
            var alpha = new Float4(Rescale(m.X, mNew.X), Rescale(m.Y, mNew.Y), Rescale(m.Z, mNew.Z), Rescale(m.W, mNew.W));
            var p = new Float4(ExpOrZero(sc.X, mNew.X), ExpOrZero(sc.Y, mNew.Y), ExpOrZero(sc.Z, mNew.Z), ExpOrZero(sc.W, mNew.W));
            l = new Float4(l.X * alpha.X + p.X, l.Y * alpha.Y + p.Y, l.Z * alpha.Z + p.Z, l.W * alpha.W + p.W);
            m = mNew;
            if (a.DropoutP > 0f)
                for (int x = 0; x < 4; x++) // a loop, not four copies of Philox
                    p = p.With(x, p[x] * a.Keep(b, h, i + x, j));
            pT4[cg * (WideQ / 4) + rg] = p;
            o.ScaleRows(alpha);
            Group.Barrier();

            var pk = pT4.SubView(rg, 15 * (WideQ / 4) + 1);
            var vk = v4.SubView(cg, 15 * (WideHd / 4) + 17);
            o.Fma(pk[0 * (WideQ / 4)], vk[0 * (WideHd / 4)], vk[0 * (WideHd / 4) + 16]);
            o.Fma(pk[1 * (WideQ / 4)], vk[1 * (WideHd / 4)], vk[1 * (WideHd / 4) + 16]);
            o.Fma(pk[2 * (WideQ / 4)], vk[2 * (WideHd / 4)], vk[2 * (WideHd / 4) + 16]);
            o.Fma(pk[3 * (WideQ / 4)], vk[3 * (WideHd / 4)], vk[3 * (WideHd / 4) + 16]);
            o.Fma(pk[4 * (WideQ / 4)], vk[4 * (WideHd / 4)], vk[4 * (WideHd / 4) + 16]);
            o.Fma(pk[5 * (WideQ / 4)], vk[5 * (WideHd / 4)], vk[5 * (WideHd / 4) + 16]);
            o.Fma(pk[6 * (WideQ / 4)], vk[6 * (WideHd / 4)], vk[6 * (WideHd / 4) + 16]);
            o.Fma(pk[7 * (WideQ / 4)], vk[7 * (WideHd / 4)], vk[7 * (WideHd / 4) + 16]);
            o.Fma(pk[8 * (WideQ / 4)], vk[8 * (WideHd / 4)], vk[8 * (WideHd / 4) + 16]);
            o.Fma(pk[9 * (WideQ / 4)], vk[9 * (WideHd / 4)], vk[9 * (WideHd / 4) + 16]);
            o.Fma(pk[10 * (WideQ / 4)], vk[10 * (WideHd / 4)], vk[10 * (WideHd / 4) + 16]);
            o.Fma(pk[11 * (WideQ / 4)], vk[11 * (WideHd / 4)], vk[11 * (WideHd / 4) + 16]);
            o.Fma(pk[12 * (WideQ / 4)], vk[12 * (WideHd / 4)], vk[12 * (WideHd / 4) + 16]);
            o.Fma(pk[13 * (WideQ / 4)], vk[13 * (WideHd / 4)], vk[13 * (WideHd / 4) + 16]);
            o.Fma(pk[14 * (WideQ / 4)], vk[14 * (WideHd / 4)], vk[14 * (WideHd / 4) + 16]);
            o.Fma(pk[15 * (WideQ / 4)], vk[15 * (WideHd / 4)], vk[15 * (WideHd / 4) + 16]);
        }

        // The rows' sums from their 16 partials, then context = O / l and lse = m + log l.
        Group.Barrier();
        red[(row + 0) * WideK + cg] = l.X;
        red[(row + 1) * WideK + cg] = l.Y;
        red[(row + 2) * WideK + cg] = l.Z;
        red[(row + 3) * WideK + cg] = l.W;
        Group.Barrier();
        var rowLse = default(Float4);
        var context4 = context.Cast<Float4>();
        for (int x = 0; x < 4; x++)
        {
            float sum = Reduce16(red4, row + x, false);
            rowLse = rowLse.With(x, Lse(m[x], sum));
            if (i + x >= s) continue;
            float inv = sum > 0f ? 1f / sum : 0f;
            o.Row(x, out var lo, out var hi);
            StoreContext(context, context4, a, b, i + x, h, cg * 4, lo.Times(inv));
            StoreContext(context, context4, a, b, i + x, h, 64 + cg * 4, hi.Times(inv));
            if (cg == 0)
                lse[a.Row(b, h, i + x)] = rowLse[x];
        }
        if (a.WriteProbs == 0)
            return;

        // Probabilities on request: each key tile's scores again, normalised with the final lse.
        for (int j0 = 0; j0 < s; j0 += WideK)
        {
            Group.Barrier();
            LoadTransposed(head, head4, kT, a, 1, j0, WideK, t, chunkBits: 5);
            Group.Barrier();
            int j = j0 + cg;
            if (j >= s) continue;
            var sc = MaskColumn(Strip(qT.Cast<Float4>(), WideQ, rg, kT, WideK, cg, hd8), a.Scale, a.KeyRank(mask, b, j), qr);
            for (int x = 0; x < 4; x++)
                if (i + x < s)
                    probs[a.Row(b, h, i + x) * s + j] = ExpOrZero(sc[x], rowLse[x]);
        }
    }

    /// <summary>exp(v − m), 0 for v = −∞ (and for every v when m = ±∞).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ExpOrZero(float v, float m) => v == float.NegativeInfinity || float.IsInfinity(m) ? 0f : MathF.Exp(v - m);

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

    // FlashAttention-2's backward for head dims ≤ 64, as two deterministic passes of register tiles
    // (a single pass would add each key block's share of dQ with float atomics: not reproducible, and
    // ILGPU's float atomics spin forever on NaN off CUDA). Both recompute P = exp(S·scale − lse) from
    // Q, K and the forward's lse, with D = rowsum(dO ⊙ O):
    //   dV += Pdᵀ·dO,  dK += dSᵀ·Q  (FlashDkDvKernel: 32 keys per group, queries streamed 16 at a time)
    //   dQ += dS·K                   (FlashDqKernel: 32 queries per group, keys streamed 32 at a time)
    // with Pd = P·keep (dropout), dP = (dO·Vᵀ)·keep and dS = P·(dP − D). Shared tiles are d-major for
    // the products over the head dim (a thread's four keys or queries are one float4) and row-major for
    // the products over the streamed rows; each thread holds a 4-wide strip of scores and a 4×4 tile
    // of each accumulator. Tiles are zero past the sequence and past the head, so padded rows and
    // columns contribute nothing; masked and padded keys get P = 0 exactly.
    internal const int BwdBlock = 32, BwdStream = 16, DqStream = 32;
    private const int DkvSharedFlash = 2 * FlashHd * BwdBlock + 4 * BwdStream * FlashHd + 2 * BwdStream * BwdBlock + 2 * BwdStream;
    private const int DqSharedFlash = 2 * FlashHd * BwdBlock + 3 * DqStream * FlashHd + DqStream * BwdBlock + 2 * BwdBlock; // 45 KB

    /// <summary>
    /// Σ_d over the head (steps of 8; tiles zero past it): a thread's 4 columns of a d-major [HD][wide]
    /// tile times one column of a d-major [HD][narrow] tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 Strip(ArrayView<Float4> wide4, int wide, int col4, ArrayView<float> narrowTile, int narrow, int col, int hd8)
    {
        var acc = default(Float4);
        int w = wide / 4;
        for (int d = 0; d < hd8; d += 8)
        {
            var x = wide4.SubView(d * w + col4, 7 * w + 1);
            var y = narrowTile.SubView(d * narrow + col, 7 * narrow + 1);
            acc = Float4.Fma(y[0], x[0], acc);
            acc = Float4.Fma(y[1 * narrow], x[1 * w], acc);
            acc = Float4.Fma(y[2 * narrow], x[2 * w], acc);
            acc = Float4.Fma(y[3 * narrow], x[3 * w], acc);
            acc = Float4.Fma(y[4 * narrow], x[4 * w], acc);
            acc = Float4.Fma(y[5 * narrow], x[5 * w], acc);
            acc = Float4.Fma(y[6 * narrow], x[6 * w], acc);
            acc = Float4.Fma(y[7 * narrow], x[7 * w], acc);
        }
        return acc;
    }

    /// <summary>acc[r][c] += Σ_x a[x][4·ra + r]·b[x][4·cb + c] over the 16 streamed rows x of two row-major tiles (widths in float4s).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Outer16(ref Acc4x4 acc, ArrayView<Float4> a4, int aWidth4, int ra, ArrayView<Float4> b4, int bWidth4, int cb)
    {
        var a = a4.SubView(ra, 15 * aWidth4 + 1);
        var b = b4.SubView(cb, 15 * bWidth4 + 1);
        acc.Fma(a[0], b[0]);
        acc.Fma(a[1 * aWidth4], b[1 * bWidth4]);
        acc.Fma(a[2 * aWidth4], b[2 * bWidth4]);
        acc.Fma(a[3 * aWidth4], b[3 * bWidth4]);
        acc.Fma(a[4 * aWidth4], b[4 * bWidth4]);
        acc.Fma(a[5 * aWidth4], b[5 * bWidth4]);
        acc.Fma(a[6 * aWidth4], b[6 * bWidth4]);
        acc.Fma(a[7 * aWidth4], b[7 * bWidth4]);
        acc.Fma(a[8 * aWidth4], b[8 * bWidth4]);
        acc.Fma(a[9 * aWidth4], b[9 * bWidth4]);
        acc.Fma(a[10 * aWidth4], b[10 * bWidth4]);
        acc.Fma(a[11 * aWidth4], b[11 * bWidth4]);
        acc.Fma(a[12 * aWidth4], b[12 * bWidth4]);
        acc.Fma(a[13 * aWidth4], b[13 * bWidth4]);
        acc.Fma(a[14 * aWidth4], b[14 * bWidth4]);
        acc.Fma(a[15 * aWidth4], b[15 * bWidth4]);
    }

    /// <summary>Element (r, d) of a dO tile from row0 (the context gradient, [B, S, NH·HD]); zero past the sequence or the head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DoElement(ArrayView<float> dContext, AttentionShape a, int b, int h, int i, int d) =>
        i < a.SeqLen && d < a.HeadDim ? dContext[a.Ctx(b, i, h, d)] : 0f;

    /// <summary>The group loads rows row0.. of dO d-major into [2^hdBits][rows] (64 or 128 head elements).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadDoTransposed(ArrayView<float> dContext, ArrayView<float> dOT, AttentionShape a, int b, int h, int row0, int rows, int t,
        int hdBits = 6)
    {
        for (int e = t; e < rows << hdBits; e += FlashGroup)
        {
            int d = e & ((1 << hdBits) - 1), r = e >> hdBits;
            dOT[d * rows + r] = DoElement(dContext, a, b, h, row0 + r, d);
        }
    }

    /// <summary>The group loads rows row0.. of dO row-major into [rows][HD].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadDoRows(ArrayView<float> dContext, ArrayView<float> dO, AttentionShape a, int b, int h, int row0, int rows, int t)
    {
        for (int e = t; e < rows * FlashHd; e += FlashGroup)
            dO[e] = DoElement(dContext, a, b, h, row0 + e / FlashHd, e % FlashHd);
    }

    /// <summary>The group loads rows row0.. of one part row-major into [rows][HD] (as float4s).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadRows(ArrayView<float> head, ArrayView<Float4> head4, ArrayView<Float4> tile4, AttentionShape a, int part, int row0, int rows, int t)
    {
        for (int e = t; e < rows * (FlashHd / 4); e += FlashGroup)
            tile4[e] = QkvChunk(head, head4, a, row0 + (e >> 4), part, (e & 15) * 4);
    }

    /// <summary>Row i's elements d..d+3 of one part of dQkv (those inside the head), scaled.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreGradient(ArrayView<float> dQkv, AttentionShape a, int b, int i, int part, int h, int d, Float4 v, float scale)
    {
        if (i >= a.SeqLen) return;
        long off = a.Qkv(b, i, part, h, 0);
        if (d < a.HeadDim) dQkv[off + d] = v.X * scale;
        if (d + 1 < a.HeadDim) dQkv[off + d + 1] = v.Y * scale;
        if (d + 2 < a.HeadDim) dQkv[off + d + 2] = v.Z * scale;
        if (d + 3 < a.HeadDim) dQkv[off + d + 3] = v.W * scale;
    }

    /// <summary>dK and dV of 32 keys (FlashAttention-2 grade; see above), looping over the queries 16 at a time.</summary>
    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashDkDvKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(DkvSharedFlash);
        var kT = shared.SubView(0, FlashHd * BwdBlock);                                   // K [d][key]
        var vT = shared.SubView(FlashHd * BwdBlock, FlashHd * BwdBlock);                  // V [d][key]
        int o = 2 * FlashHd * BwdBlock;
        var qT = shared.SubView(o, FlashHd * BwdStream);                                  // Q [d][query]
        var q = shared.SubView(o + FlashHd * BwdStream, BwdStream * FlashHd);             // Q [query][d]
        var dOT = shared.SubView(o + 2 * FlashHd * BwdStream, FlashHd * BwdStream);       // dO [d][query]
        var dO = shared.SubView(o + 3 * FlashHd * BwdStream, BwdStream * FlashHd);        // dO [query][d]
        o += 4 * FlashHd * BwdStream;
        var pd = shared.SubView(o, BwdStream * BwdBlock);                                 // P·keep [query][key]
        var ds = shared.SubView(o + BwdStream * BwdBlock, BwdStream * BwdBlock);          // dS [query][key]
        var rowLse = shared.SubView(o + 2 * BwdStream * BwdBlock, BwdStream);
        var rowD = shared.SubView(o + 2 * BwdStream * BwdBlock + BwdStream, BwdStream);
        int t = Group.IdxX, j0 = Grid.IdxX * BwdBlock, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        // Scores: this thread's 4 keys (kg) against one query (qi). Accumulators: 4 keys (kr) × 4 head elements (dc).
        int kg = t & 7, qi = t >> 3, kr = t >> 4, dc = t & 15;
        int j = j0 + kg * 4;

        LoadTransposed(head, head4, kT, a, 1, j0, BwdBlock, t);
        LoadTransposed(head, head4, vT, a, 2, j0, BwdBlock, t);
        var keyRanks = a.KeyRanks4(mask, b, j);
        var dk = new Acc4x4();
        var dv = new Acc4x4();
        for (int i0 = 0; i0 < s; i0 += BwdStream)
        {
            Group.Barrier(); // the previous tile's readers are done
            LoadTransposed(head, head4, qT, a, 0, i0, BwdStream, t);
            LoadRows(head, head4, q.Cast<Float4>(), a, 0, i0, BwdStream, t);
            LoadDoTransposed(dContext, dOT, a, b, h, i0, BwdStream, t);
            LoadDoRows(dContext, dO, a, b, h, i0, BwdStream, t);
            if (t < BwdStream)
            {
                int i = i0 + t;
                rowLse[t] = i < s ? lse[a.Row(b, h, i)] : float.PositiveInfinity;
                rowD[t] = i < s ? dRow[a.Row(b, h, i)] : 0f;
            }
            Group.Barrier();

            int iq = i0 + qi;
            var sc = Strip(kT.Cast<Float4>(), BwdBlock, kg, qT, BwdStream, qi, hd8);
            var dp = Strip(vT.Cast<Float4>(), BwdBlock, kg, dOT, BwdStream, qi, hd8);
            // P, then Pd = P·keep and dP = (dO·Vᵀ)·keep; dS = P·(dP − D) takes the undropped P.
            var p = Exp(MaskRow(sc, a.Scale, AttentionShape.Visible4(keyRanks, a.QueryRank(mask, b, iq))), rowLse[qi]);
            var pDropped = p;
            if (a.DropoutP > 0f)
            {
                var keep = Keeps(a, b, h, iq, j);
                pDropped = Mul(p, keep);
                dp = Mul(dp, keep);
            }
            float dRowI = rowD[qi];
            pd.Cast<Float4>()[qi * (BwdBlock / 4) + kg] = pDropped;
            ds.Cast<Float4>()[qi * (BwdBlock / 4) + kg] = new Float4(p.X * (dp.X - dRowI), p.Y * (dp.Y - dRowI), p.Z * (dp.Z - dRowI), p.W * (dp.W - dRowI));
            Group.Barrier();

            Outer16(ref dv, pd.Cast<Float4>(), BwdBlock / 4, kr, dO.Cast<Float4>(), FlashHd / 4, dc);
            Outer16(ref dk, ds.Cast<Float4>(), BwdBlock / 4, kr, q.Cast<Float4>(), FlashHd / 4, dc);
        }
        for (int x = 0; x < 4; x++)
        {
            StoreGradient(dQkv, a, b, j0 + kr * 4 + x, 1, h, dc * 4, dk.Row(x), a.Scale);
            StoreGradient(dQkv, a, b, j0 + kr * 4 + x, 2, h, dc * 4, dv.Row(x), 1f);
        }
    }

    /// <summary>dS of the thread's 4 queries (from i) against key j0 + kc, into dsT [key][query].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DsColumn(ArrayView<float> qT, ArrayView<float> dOT, ArrayView<float> kT, ArrayView<float> vT, ArrayView<float> dsT,
        ArrayView<int> mask, ArrayView<float> rowLse, ArrayView<float> rowD, AttentionShape a, int b, int h, int i, Float4 queryRanks, int j0, int kc,
        int qg, int hd8)
    {
        int jk = j0 + kc;
        float keyRank = a.KeyRank(mask, b, jk);
        var sc = Strip(qT.Cast<Float4>(), BwdBlock, qg, kT, DqStream, kc, hd8);
        var dp = Strip(dOT.Cast<Float4>(), BwdBlock, qg, vT, DqStream, kc, hd8);
        var ds4 = default(Float4);
        for (int x = 0; x < 4; x++)
        {
            int iq = i + x;
            float p = AttentionShape.Visible(keyRank, queryRanks[x]) != 0f ? MathF.Exp(sc[x] * a.Scale - rowLse[qg * 4 + x]) : 0f;
            float dpx = a.DropoutP > 0f ? dp[x] * a.Keep(b, h, iq, jk) : dp[x];
            ds4 = ds4.With(x, p * (dpx - rowD[qg * 4 + x]));
        }
        dsT.Cast<Float4>()[kc * (BwdBlock / 4) + qg] = ds4;
    }

    /// <summary>dQ of 32 queries (FlashAttention-2 grade; see above), looping over the keys 32 at a time.</summary>
    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashDqKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(DqSharedFlash);
        var qT = shared.SubView(0, FlashHd * BwdBlock);                                   // Q [d][query]
        var dOT = shared.SubView(FlashHd * BwdBlock, FlashHd * BwdBlock);                 // dO [d][query]
        int o = 2 * FlashHd * BwdBlock;
        var kT = shared.SubView(o, FlashHd * DqStream);                                   // K [d][key]
        var vT = shared.SubView(o + FlashHd * DqStream, FlashHd * DqStream);              // V [d][key]
        var k = shared.SubView(o + 2 * FlashHd * DqStream, DqStream * FlashHd);           // K [key][d]
        o += 3 * FlashHd * DqStream;
        var dsT = shared.SubView(o, DqStream * BwdBlock);                                 // dS [key][query]
        var rowLse = shared.SubView(o + DqStream * BwdBlock, BwdBlock);
        var rowD = shared.SubView(o + DqStream * BwdBlock + BwdBlock, BwdBlock);
        int t = Group.IdxX, i0 = Grid.IdxX * BwdBlock, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        // Scores: this thread's 4 queries (qg) against keys kc and kc + 16. Accumulator: 4 queries (qr) × 4 head elements (dc).
        int qg = t & 7, kc = t >> 3, qr = t >> 4, dc = t & 15;
        int i = i0 + qg * 4;

        LoadTransposed(head, head4, qT, a, 0, i0, BwdBlock, t);
        LoadDoTransposed(dContext, dOT, a, b, h, i0, BwdBlock, t);
        if (t < BwdBlock)
        {
            int r = i0 + t;
            rowLse[t] = r < s ? lse[a.Row(b, h, r)] : float.PositiveInfinity;
            rowD[t] = r < s ? dRow[a.Row(b, h, r)] : 0f;
        }
        var qRanks = a.QueryRanks4(mask, b, i);
        var dq = new Acc4x4();
        for (int j0 = 0; j0 < s; j0 += DqStream)
        {
            Group.Barrier();
            LoadTransposed(head, head4, kT, a, 1, j0, DqStream, t);
            LoadTransposed(head, head4, vT, a, 2, j0, DqStream, t);
            LoadRows(head, head4, k.Cast<Float4>(), a, 1, j0, DqStream, t);
            Group.Barrier();

            for (int key = kc; key < DqStream; key += 16) // a loop, not two copies: one Philox in the kernel
                DsColumn(qT, dOT, kT, vT, dsT, mask, rowLse, rowD, a, b, h, i, qRanks, j0, key, qg, hd8);
            Group.Barrier();

            Outer16(ref dq, dsT.Cast<Float4>(), BwdBlock / 4, qr, k.Cast<Float4>(), FlashHd / 4, dc);
            Outer16(ref dq, dsT.Cast<Float4>().SubView(16 * (BwdBlock / 4), 16 * (BwdBlock / 4)), BwdBlock / 4, qr,
                k.Cast<Float4>().SubView(16 * (FlashHd / 4), 16 * (FlashHd / 4)), FlashHd / 4, dc);
        }
        for (int x = 0; x < 4; x++)
            StoreGradient(dQkv, a, b, i0 + qr * 4 + x, 0, h, dc * 4, dq.Row(x), a.Scale);
    }

    // FlashAttention-2's backward for head dims 65–128: the same two deterministic passes as above,
    // on blocks of 16 keys (FlashWideDkDvKernel, queries streamed 16 at a time) and of 16 queries
    // (FlashWideDqKernel, keys streamed 32 at a time), in 35–37 KB of shared memory where 32-row
    // blocks would need 50. The block's own rows stay d-major ([HD][16], a thread's four rows one
    // float4); the streamed rows are row-major with a stride of 132 floats (one float4 of padding, so
    // the rows a warp reads fall in different banks) and serve both the products over the head and
    // the accumulations over the streamed rows. Each thread computes one four-wide strip of S = Q·Kᵀ
    // or dP = dO·Vᵀ per 16 streamed rows (dK/dV: warps 0-1 S, warps 2-3 dP, at once; dQ: V is loaded
    // and dP taken, then K takes V's place for S and the dQ update), turns elements of the tile into
    // P·keep and dS, and accumulates 4×4 tiles (4 of the block's rows × head elements 4·(t%32)..+3).
    internal const int WideBwd = 16, WideDqStream = 32, WideStride = WideHd + 4;
    private const int WideBwdShared = 2 * WideHd * WideBwd + 2 * WideBwd * WideStride + 2 * WideBwd * WideBwd + 2 * WideBwd; // 35 KB
    private const int WideDqShared = 2 * WideHd * WideBwd + WideDqStream * WideStride + 2 * WideDqStream * WideBwd;       // 37 KB

    /// <summary>
    /// Σ_d over the head (steps of 8; tiles zero past it): a thread's 4 columns of a d-major [HD][16]
    /// tile times one row of a row-major [16][WideStride] tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Float4 StripRow(ArrayView<Float4> tile4, int col4, ArrayView<Float4> rows4, int row, int hd8)
    {
        const int w = WideBwd / 4;
        var acc = default(Float4);
        var y4 = rows4.SubView(row * (WideStride / 4), WideHd / 4);
        for (int d = 0; d < hd8; d += 8)
        {
            var x = tile4.SubView(d * w + col4, 7 * w + 1);
            var lo = y4[d >> 2];
            var hi = y4[(d >> 2) + 1];
            acc = Float4.Fma(lo.X, x[0], acc);
            acc = Float4.Fma(lo.Y, x[1 * w], acc);
            acc = Float4.Fma(lo.Z, x[2 * w], acc);
            acc = Float4.Fma(lo.W, x[3 * w], acc);
            acc = Float4.Fma(hi.X, x[4 * w], acc);
            acc = Float4.Fma(hi.Y, x[5 * w], acc);
            acc = Float4.Fma(hi.Z, x[6 * w], acc);
            acc = Float4.Fma(hi.W, x[7 * w], acc);
        }
        return acc;
    }

    /// <summary>The group loads rows row0..+count of one part (0–2) or of dO (3) row-major into [count][WideStride].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadWideRows(ArrayView<float> head, ArrayView<Float4> head4, ArrayView<float> dContext, ArrayView<Float4> rows4,
        AttentionShape a, int b, int h, int part, int row0, int count, int t)
    {
        for (int e = t; e < count * (WideHd / 4); e += FlashGroup)
        {
            int r = e >> 5, d = (e & 31) * 4, i = row0 + r;
            rows4[r * (WideStride / 4) + (e & 31)] = part < 3 ? QkvChunk(head, head4, a, i, part, d)
                : new Float4(DoElement(dContext, a, b, h, i, d), DoElement(dContext, a, b, h, i, d + 1),
                    DoElement(dContext, a, b, h, i, d + 2), DoElement(dContext, a, b, h, i, d + 3));
        }
    }

    /// <summary>
    /// Element e of a 16×16 score tile, for query iq and key jk (their ranks given): P·keep into pd (where S was) and
    /// dS = P·(dP·keep − D) into ds (where dP was).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PdAndDs(ArrayView<float> pd, ArrayView<float> ds, int e, AttentionShape a, int b, int h, int iq, int jk,
        float keyRank, float queryRank, float rowLse, float rowD)
    {
        float p = AttentionShape.Visible(keyRank, queryRank) != 0f ? MathF.Exp(pd[e] * a.Scale - rowLse) : 0f;
        float keep = a.DropoutP > 0f ? a.Keep(b, h, iq, jk) : 1f;
        ds[e] = p * (ds[e] * keep - rowD);
        pd[e] = p * keep;
    }

    /// <summary>dK and dV of 16 keys for head dims 65–128 (see above), looping over the queries 16 at a time.</summary>
    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashWideDkDvKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(WideBwdShared);
        const int tile = WideHd * WideBwd, rows = WideBwd * WideStride, scores = WideBwd * WideBwd;
        var kT = shared.SubView(0, tile);                              // K [d][key]
        var vT = shared.SubView(tile, tile);                           // V [d][key]
        var q4 = shared.SubView(2 * tile, rows).Cast<Float4>();        // Q [query][d]
        var dO4 = shared.SubView(2 * tile + rows, rows).Cast<Float4>(); // dO [query][d]
        int o = 2 * tile + 2 * rows;
        var pd = shared.SubView(o, scores);                            // S, then P·keep [query][key]
        var ds = shared.SubView(o + scores, scores);                   // dP, then dS [query][key]
        var rowLse = shared.SubView(o + 2 * scores, WideBwd);
        var rowD = shared.SubView(o + 2 * scores + WideBwd, WideBwd);
        int t = Group.IdxX, j0 = Grid.IdxX * WideBwd, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        // Strips: warps 0-1 S, warps 2-3 dP, of 4 keys (kg) against one query (qi). Element-wise: key
        // t%16, queries t/16 and t/16 + 8. Accumulators: 4 keys (kr) × 4 head elements (dc).
        int dpHalf = t >> 6, kg = t & 3, qi = (t >> 2) & 15, kr = t >> 5, dc = t & 31;
        // Offsets, not a choice of views: a selected view loses its shared address space (generic loads).
        var strip4 = shared.SubView(dpHalf * tile, tile).Cast<Float4>();                 // K or V
        var stripRows4 = shared.SubView(2 * tile + dpHalf * rows, rows).Cast<Float4>(); // Q or dO
        var stripOut4 = shared.SubView(o + dpHalf * scores, scores).Cast<Float4>();     // S or dP
        int jk = j0 + (t & 15);
        float keyRank = a.KeyRank(mask, b, jk);

        LoadTransposed(head, head4, kT, a, 1, j0, WideBwd, t, chunkBits: 5);
        LoadTransposed(head, head4, vT, a, 2, j0, WideBwd, t, chunkBits: 5);
        var dk = new Acc4x4();
        var dv = new Acc4x4();
        for (int i0 = 0; i0 < s; i0 += WideBwd)
        {
            Group.Barrier(); // the previous tile's readers are done
            LoadWideRows(head, head4, dContext, q4, a, b, h, 0, i0, WideBwd, t);
            LoadWideRows(head, head4, dContext, dO4, a, b, h, 3, i0, WideBwd, t);
            if (t < WideBwd)
            {
                int i = i0 + t;
                rowLse[t] = i < s ? lse[a.Row(b, h, i)] : float.PositiveInfinity;
                rowD[t] = i < s ? dRow[a.Row(b, h, i)] : 0f;
            }
            Group.Barrier();

            stripOut4[qi * (WideBwd / 4) + kg] = StripRow(strip4, kg, stripRows4, qi, hd8);
            Group.Barrier();

            for (int e = t; e < WideBwd * WideBwd; e += FlashGroup) // a loop, not two copies: one Philox in the kernel
                PdAndDs(pd, ds, e, a, b, h, i0 + (e >> 4), jk, keyRank, a.QueryRank(mask, b, i0 + (e >> 4)), rowLse[e >> 4], rowD[e >> 4]);
            Group.Barrier();

            Outer16(ref dv, pd.Cast<Float4>(), WideBwd / 4, kr, dO4, WideStride / 4, dc);
            Outer16(ref dk, ds.Cast<Float4>(), WideBwd / 4, kr, q4, WideStride / 4, dc);
        }
        for (int x = 0; x < 4; x++)
        {
            StoreGradient(dQkv, a, b, j0 + kr * 4 + x, 1, h, dc * 4, dk.Row(x), a.Scale);
            StoreGradient(dQkv, a, b, j0 + kr * 4 + x, 2, h, dc * 4, dv.Row(x), 1f);
        }
    }

    /// <summary>dQ of 16 queries for head dims 65–128 (see above), looping over the keys 32 at a time.</summary>
    [GpuGroup(FlashGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FlashWideDqKernel(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dRow,
        ArrayView<float> dContext, ArrayView<float> dQkv, AttentionShape a)
    {
        var shared = SharedMemory.Allocate<float>(WideDqShared);
        const int tile = WideHd * WideBwd, scores = WideDqStream * WideBwd;
        var qT4 = shared.SubView(0, tile).Cast<Float4>();              // Q [d][query]
        var dOT = shared.SubView(tile, tile);                          // dO [d][query]
        var rows4 = shared.SubView(2 * tile, WideDqStream * WideStride).Cast<Float4>(); // V, then K [key][d]
        int o = 2 * tile + WideDqStream * WideStride;
        var pd = shared.SubView(o, scores);                            // S, then P·keep [key][query] (P·keep unused)
        var ds = shared.SubView(o + scores, scores);                   // dP, then dS [key][query]
        int t = Group.IdxX, i0 = Grid.IdxX * WideBwd, h = Grid.IdxY, b = Grid.IdxZ;
        int s = a.SeqLen, hd8 = (a.HeadDim + 7) & ~7;
        var head = HeadView(qkv, a, b, h, out var head4);
        // Strips: 4 queries (qg) against one key (kc). Element-wise: query t%16, keys t/16 + 8·x.
        // Accumulator: 4 queries (qr) × 4 head elements (dc).
        int qg = t & 3, kc = t >> 2, qr = t >> 5, dc = t & 31;
        int iq = i0 + (t & 15);
        float rowLse = iq < s ? lse[a.Row(b, h, iq)] : float.PositiveInfinity;
        float rowD = iq < s ? dRow[a.Row(b, h, iq)] : 0f;
        float queryRank = a.QueryRank(mask, b, iq);

        LoadTransposed(head, head4, qT4.Cast<float>(), a, 0, i0, WideBwd, t, chunkBits: 5);
        LoadDoTransposed(dContext, dOT, a, b, h, i0, WideBwd, t, hdBits: 7);
        var dq = new Acc4x4();
        for (int j0 = 0; j0 < s; j0 += WideDqStream)
        {
            Group.Barrier(); // the previous tile's readers are done
            LoadWideRows(head, head4, dContext, rows4, a, b, h, 2, j0, WideDqStream, t);
            Group.Barrier();
            ds.Cast<Float4>()[kc * (WideBwd / 4) + qg] = StripRow(dOT.Cast<Float4>(), qg, rows4, kc, hd8);
            Group.Barrier(); // V is read: K takes its place
            LoadWideRows(head, head4, dContext, rows4, a, b, h, 1, j0, WideDqStream, t);
            Group.Barrier();
            pd.Cast<Float4>()[kc * (WideBwd / 4) + qg] = StripRow(qT4, qg, rows4, kc, hd8);
            Group.Barrier();

            for (int e = t; e < scores; e += FlashGroup) // a loop, not four copies: one Philox in the kernel
            {
                int jk = j0 + (e >> 4);
                PdAndDs(pd, ds, e, a, b, h, iq, jk, a.KeyRank(mask, b, jk), queryRank, rowLse, rowD);
            }
            Group.Barrier();

            var ds4 = ds.Cast<Float4>();
            Outer16(ref dq, ds4, WideBwd / 4, qr, rows4, WideStride / 4, dc);
            Outer16(ref dq, ds4.SubView(16 * (WideBwd / 4), 16 * (WideBwd / 4)), WideBwd / 4, qr,
                rows4.SubView(16 * (WideStride / 4), 16 * (WideStride / 4)), WideStride / 4, dc);
        }
        for (int x = 0; x < 4; x++)
            StoreGradient(dQkv, a, b, i0 + qr * 4 + x, 0, h, dc * 4, dq.Row(x), a.Scale);
    }

    /// <summary>Scores of keys a query does not see → −∞ (the materialised path's mask, before softmax).</summary>
    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MaskScoresKernel(ArrayView<float> scores, ArrayView<int> mask, AttentionShape a)
    {
        long n = (long)a.Batch * a.Heads * a.SeqLen * a.SeqLen;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < n; e += step)
        {
            int j = (int)(e % a.SeqLen), i = (int)(e / a.SeqLen % a.SeqLen);
            int b = (int)(e / ((long)a.Heads * a.SeqLen * a.SeqLen));
            if (!a.Attends(mask, b, i, j)) scores[e] = float.NegativeInfinity;
        }
    }
}
