// Fused attention on ILGPU's CPU accelerator as host SIMD code over the accelerator's own buffers
// (the emulator runs one OS thread per GPU thread, far too slow for the tiled kernels).
//
// Same contract and math as AttentionKernels (see Attention.cs), organised for a CPU: each core
// takes whole (sequence, head) pairs; for one query row it computes the row's scores into a
// buffer of S floats (O(S) memory per core, never S×S), the exact softmax, and the output as a
// sum of V rows. Backward walks the query rows of a head in order, so dK and dV accumulate
// deterministically without atomics.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
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
        Parallel.For(0, a.Batch * a.Heads, bh => ForwardHead(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pc, (float*)pl, (float*)pp, a));
    }

    public static void Backward(ArrayView<float> qkv, ArrayView<int> mask, ArrayView<float> lse, ArrayView<float> dContext,
        ArrayView<float> dQkv, AttentionShape a)
    {
        nint pq = qkv.LoadEffectiveAddressAsPtr(), pl = lse.LoadEffectiveAddressAsPtr();
        nint pdo = dContext.LoadEffectiveAddressAsPtr(), pdq = dQkv.LoadEffectiveAddressAsPtr();
        nint pm = a.HasMask != 0 ? mask.LoadEffectiveAddressAsPtr() : 0;
        Parallel.For(0, a.Batch * a.Heads, bh => BackwardHead(bh / a.Heads, bh % a.Heads, (float*)pq, (int*)pm, (float*)pl,
            (float*)pdo, (float*)pdq, a));
    }

    private static float* Row(int s)
    {
        if (rowBuffer is null || rowBuffer.Length < 2 * s)
            rowBuffer = GC.AllocateUninitializedArray<float>(Math.Max(2 * s, 256), pinned: true);
        return (float*)Unsafe.AsPointer(ref rowBuffer[0]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ForwardHead(int b, int h, float* qkv, int* mask, float* context, float* lse, float* probs, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        float* scores = Row(s);
        for (int i = 0; i < s; i++)
        {
            float* q = qkv + a.Qkv(b, i, 0, h, 0);
            float max = Scores(q, qkv, mask, b, h, scores, a);
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardHead(int b, int h, float* qkv, int* mask, float* lse, float* dContext, float* dQkv, AttentionShape a)
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
            Scores(q, qkv, mask, b, h, scores, a);
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

    /// <summary>scores[j] = q·k_j/√HD (−∞ where masked); returns the row maximum.</summary>
    private static float Scores(float* q, float* qkv, int* mask, int b, int h, float* scores, AttentionShape a)
    {
        int s = a.SeqLen, hd = a.HeadDim;
        float max = float.NegativeInfinity;
        for (int j = 0; j < s; j++)
        {
            float v = mask == null || mask[(long)b * s + j] != 0 ? Dot(q, qkv + a.Qkv(b, j, 1, h, 0), hd) * a.Scale : float.NegativeInfinity;
            scores[j] = v;
            max = MathF.Max(max, v);
        }
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy(float alpha, float* x, float* y, int n)
    {
        int d = 0;
        var va = Vector256.Create(alpha);
        for (; d + 8 <= n; d += 8)
            Vector256.FusedMultiplyAdd(va, Vector256.Load(x + d), Vector256.Load(y + d)).Store(y + d);
        for (; d < n; d++) y[d] += alpha * x[d];
    }
}
