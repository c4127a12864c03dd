// BERT's embedding sum (HF BertEmbeddings before its LayerNorm):
// out[t] = word[input_ids[t]] + position[position_ids[t]] + token_type[token_type_ids[t]], t over
// [B·S]. position_ids is HF's argument: t mod S for plain BERT (BertInputs' default), the target's
// position for XLNet's query stream and UniLMv2's pseudo-masks.
//
// Backward adds each output row's gradient into the table rows that produced it. Several tokens
// share a row (a frequent word, a position, a segment), so a naive kernel needs float atomics,
// which are nondeterministic and hang on NaN in ILGPU (ILGPU-NOTES.md). Instead the launcher
// groups the tokens by table row on the host (the ids come from the host batch anyway): a stable
// counting sort gives, per distinct row, the ascending list of its tokens; the kernel then gives
// each (row, h) one thread that sums its tokens in that order. Deterministic, atomic-free.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class EmbeddingKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, EmbeddingShape>> forward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>> scatter;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int>> gather;

    internal EmbeddingKernels(KernelSet set)
    {
        this.set = set;
        forward = new(() => set.LoadStreamKernel<ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, EmbeddingShape>(ForwardKernel));
        scatter = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(ScatterAddKernel));
        gather = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int>(GatherKernel));
    }

    /// <summary>
    /// output[r] = table[rows[r]] for r over rows.Length: an embedding lookup in one table, also
    /// how the MLM head picks masked positions and the pooler picks [CLS]. Its backward is
    /// <see cref="ScatterAdd"/> with the same rows.
    /// </summary>
    public void Gather(ArrayView<float> table, ReadOnlySpan<int> rows, ArrayView<float> output, int tableRows, int hidden)
    {
        Check.Matrix("table", table, tableRows, hidden);
        Check.Matrix("output", output, rows.Length, hidden);
        foreach (int r in rows)
            if ((uint)r >= (uint)tableRows) throw new ArgumentOutOfRangeException(nameof(rows), $"row {r} is outside [0, {tableRows})");
        if (rows.Length == 0 || hidden == 0) return;
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.Gather(table, rows, output, hidden);
            return;
        }
        gather.Value(set.GridStride((long)rows.Length * hidden), table, set.IntScratch(rows), output, rows.Length, hidden, tableRows);
    }

    /// <summary>
    /// out: [T, H] with T = B·S tokens. ids, positionIds, typeIds: [T] on the device. An id outside
    /// its table makes that token's row NaN (never an out-of-bounds read); callers validate ids on
    /// the host first to give a proper error.
    /// </summary>
    public void Forward(ArrayView<int> ids, ArrayView<int> positionIds, ArrayView<int> typeIds, ArrayView<float> word, ArrayView<float> position,
        ArrayView<float> tokenType, ArrayView<float> output, EmbeddingShape shape)
    {
        shape.Validate();
        Check.Vector("input_ids", ids, shape.Tokens);
        Check.Vector("position_ids", positionIds, shape.Tokens);
        Check.Vector("token_type_ids", typeIds, shape.Tokens);
        Check.Matrix("word_embeddings", word, shape.VocabSize, shape.Hidden);
        Check.Matrix("position_embeddings", position, shape.MaxPositions, shape.Hidden);
        Check.Matrix("token_type_embeddings", tokenType, shape.TypeVocabSize, shape.Hidden);
        long n = Check.Matrix("output", output, shape.Tokens, shape.Hidden);
        if (n > 0 && set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.EmbeddingsForward(ids, positionIds, typeIds, word, position, tokenType, output, shape);
            return;
        }
        if (n > 0) forward.Value(set.GridStride(n), ids, positionIds, typeIds, word, position, tokenType, output, shape);
    }

    /// <summary>dWord, dPosition, dTokenType += their shares of dOut [T, H] (any may be default to skip).</summary>
    public void Backward(ArrayView<float> dOut, ReadOnlySpan<int> ids, ReadOnlySpan<int> positionIds, ReadOnlySpan<int> typeIds,
        ArrayView<float> dWord, ArrayView<float> dPosition, ArrayView<float> dTokenType, EmbeddingShape shape)
    {
        shape.Validate();
        if (ids.Length != shape.Tokens || positionIds.Length != shape.Tokens || typeIds.Length != shape.Tokens)
            throw new ArgumentException($"expected {shape.Tokens} input, position and token type ids, got {ids.Length}, {positionIds.Length} and {typeIds.Length}");
        Check.Matrix("dOut", dOut, shape.Tokens, shape.Hidden);
        if (dWord.IsValid && dWord.Length > 0)
            ScatterAdd(dOut, ids, dWord, shape.VocabSize, shape.Hidden, "input_ids");
        if (dPosition.IsValid && dPosition.Length > 0)
            ScatterAdd(dOut, positionIds, dPosition, shape.MaxPositions, shape.Hidden, "position_ids");
        if (dTokenType.IsValid && dTokenType.Length > 0)
            ScatterAdd(dOut, typeIds, dTokenType, shape.TypeVocabSize, shape.Hidden, "token_type_ids");
    }

    /// <summary>table[rowOf[t]] += dOut[t] for every token t, deterministically.</summary>
    public void ScatterAdd(ArrayView<float> dOut, ReadOnlySpan<int> rowOf, ArrayView<float> table, int tableRows, int hidden, string what)
    {
        Check.Matrix("table", table, tableRows, hidden);
        Check.Matrix("dOut", dOut, rowOf.Length, hidden);
        int[] index = BuildIndex(rowOf, tableRows, what);
        int distinct = index[0];
        if (distinct == 0 || hidden == 0) return;
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.ScatterAdd(dOut, index, table, hidden);
            return;
        }
        scatter.Value(set.GridStride((long)distinct * hidden), dOut, set.IntScratch(index), table, hidden, rowOf.Length);
    }

    /// <summary>
    /// [U, offsets (U+1), distinct rows (U), tokens sorted by row (T)]: a stable counting sort, so
    /// each row's tokens stay in ascending order.
    /// </summary>
    internal static int[] BuildIndex(ReadOnlySpan<int> rowOf, int tableRows, string what)
    {
        var counts = new int[tableRows];
        for (int t = 0; t < rowOf.Length; t++)
        {
            int r = rowOf[t];
            if ((uint)r >= (uint)tableRows)
                throw new ArgumentOutOfRangeException(what, $"{what}[{t}] = {r} is outside [0, {tableRows})");
            counts[r]++;
        }
        int distinct = 0;
        foreach (int c in counts) if (c > 0) distinct++;
        var index = new int[1 + (distinct + 1) + distinct + rowOf.Length];
        index[0] = distinct;
        int offsetsAt = 1, rowsAt = offsetsAt + distinct + 1, orderAt = rowsAt + distinct;
        var start = new int[tableRows];
        int u = 0, pos = 0;
        for (int r = 0; r < tableRows; r++)
        {
            if (counts[r] == 0) continue;
            index[offsetsAt + u] = pos;
            index[rowsAt + u] = r;
            start[r] = pos;
            pos += counts[r];
            u++;
        }
        index[offsetsAt + distinct] = pos;
        for (int t = 0; t < rowOf.Length; t++)
            index[orderAt + start[rowOf[t]]++] = t;
        return index;
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel(ArrayView<int> ids, ArrayView<int> positionIds, ArrayView<int> typeIds, ArrayView<float> word, ArrayView<float> position,
        ArrayView<float> tokenType, ArrayView<float> output, EmbeddingShape s)
    {
        long n = (long)s.Tokens * s.Hidden;
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
        {
            int t = (int)(i / s.Hidden), h = (int)(i % s.Hidden);
            int id = ids[t], type = typeIds[t], p = positionIds[t];
            output[i] = (uint)id < (uint)s.VocabSize && (uint)type < (uint)s.TypeVocabSize && (uint)p < (uint)s.MaxPositions
                ? word[(long)id * s.Hidden + h] + position[(long)p * s.Hidden + h] + tokenType[(long)type * s.Hidden + h]
                : float.NaN;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void GatherKernel(ArrayView<float> table, ArrayView<int> rows, ArrayView<float> output, int count, int hidden, int tableRows)
    {
        long n = (long)count * hidden;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < n; e += step)
        {
            int r = (int)(e / hidden), h = (int)(e % hidden);
            output[e] = table[(long)rows[r] * hidden + h];
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ScatterAddKernel(ArrayView<float> dOut, ArrayView<int> index, ArrayView<float> table, int hidden, int tokens)
    {
        int distinct = index[0];
        int offsetsAt = 1, rowsAt = offsetsAt + distinct + 1, orderAt = rowsAt + distinct;
        long n = (long)distinct * hidden;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < n; e += step)
        {
            int u = (int)(e / hidden), h = (int)(e % hidden);
            float s = 0f;
            for (int q = index[offsetsAt + u]; q < index[offsetsAt + u + 1]; q++)
                s += dOut[(long)index[orderAt + q] * hidden + h];
            long dst = (long)index[rowsAt + u] * hidden + h;
            table[dst] = table[dst] + s;
        }
    }
}

/// <summary>
/// Sizes for the embedding kernels: T = Tokens = B·S, H, and the three table heights. S may exceed
/// max_position_embeddings (XLNet's query rows repeat positions): the position ids are what must fit.
/// </summary>
public struct EmbeddingShape
{
    public int Tokens, SeqLen, Hidden, VocabSize, MaxPositions, TypeVocabSize;

    internal readonly void Validate()
    {
        if (Tokens < 0 || SeqLen < 1 || Hidden < 0 || VocabSize < 1 || MaxPositions < 1 || TypeVocabSize < 1 || Tokens % SeqLen != 0)
            throw new ArgumentException($"invalid embedding shape: tokens={Tokens}, seq_len={SeqLen}, hidden={Hidden}, vocab={VocabSize}, positions={MaxPositions}, types={TypeVocabSize}");
    }
}
