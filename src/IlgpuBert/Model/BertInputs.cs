using IlgpuBert.Checkpoints;

namespace IlgpuBert.Model;

/// <summary>
/// One batch in HF's terms: input_ids, token_type_ids and attention_mask as [B, S] row-major,
/// optional MLM labels [B, S] (−100 = ignored) and next_sentence_label [B]; for pretraining, labels
/// of the model's auxiliary token heads by head name ([B, S] of 0/1, −100 = ignored); and, for
/// UniLM's attention masks, <see cref="AttentionPrefix"/>, or for any other visibility pattern
/// (XLNet's factorisation orders, UniLMv2's pseudo-masks) explicit <see cref="KeyRanks"/> and
/// <see cref="QueryRanks"/>.
/// </summary>
public sealed record BertInputs(int Batch, int SeqLen, int[] InputIds, int[] TokenTypeIds, int[] AttentionMask,
    int[]? Labels = null, int[]? NextSentenceLabel = null, IReadOnlyDictionary<string, int[]>? AuxLabels = null)
{
    /// <summary>Builds inputs from rows; token types and mask default to 0 and 1. Ragged rows are an error.</summary>
    public static BertInputs FromRows(IReadOnlyList<int[]> inputIds, IReadOnlyList<int[]>? tokenTypeIds = null,
        IReadOnlyList<int[]>? attentionMask = null, IReadOnlyList<int[]>? labels = null, int[]? nextSentenceLabel = null)
    {
        if (inputIds.Count == 0) throw new ArgumentException("input_ids has no rows");
        int s = inputIds[0].Length;
        int[] Flat(string name, IReadOnlyList<int[]>? rows, int fill)
        {
            if (rows is null) return Enumerable.Repeat(fill, inputIds.Count * s).ToArray();
            if (rows.Count != inputIds.Count) throw new ArgumentException($"{name} has {rows.Count} rows, input_ids has {inputIds.Count}");
            for (int r = 0; r < rows.Count; r++)
                if (rows[r].Length != s) throw new ArgumentException($"{name} row {r} has {rows[r].Length} entries, expected {s} (ragged rows)");
            return rows.SelectMany(r => r).ToArray();
        }
        return new BertInputs(inputIds.Count, s, Flat("input_ids", inputIds, 0), Flat("token_type_ids", tokenTypeIds, 0),
            Flat("attention_mask", attentionMask, 1), labels is null ? null : Flat("labels", labels, -100), nextSentenceLabel);
    }

    /// <summary>
    /// UniLM's attention masks (Dong et al. 2019), one int per row [B]: every token sees the row's
    /// first P positions, and a position at or after P only from itself on. P = S is bidirectional
    /// (the default when null), 0 left-to-right, the source's length (with its [SEP]) seq2seq.
    /// </summary>
    public int[]? AttentionPrefix { get; init; }

    /// <summary>
    /// Attention ranks [B, S], given with <see cref="QueryRanks"/>: query i of a row sees key j of it
    /// when KeyRanks[j] ≤ QueryRanks[i] (and attention_mask[j] is 1). Ranks lie in [0, 2^24);
    /// a key rank of <see cref="Kernels.AttentionShape.NeverSeen"/> hides the key from every query.
    /// </summary>
    public int[]? KeyRanks { get; init; }

    /// <summary>The key rank that hides a key from every query (<see cref="Kernels.AttentionShape.NeverSeen"/>).</summary>
    public const int NeverSeen = Kernels.AttentionShape.NeverSeen;

    /// <summary>The query half of <see cref="KeyRanks"/>, [B, S].</summary>
    public int[]? QueryRanks { get; init; }

    /// <summary>
    /// HF's position_ids [B, S], each in [0, max_position_embeddings); null means every row counts
    /// 0, 1, …, S − 1. Rows that stand for another token (XLNet's query stream, UniLMv2's pseudo-masks)
    /// take that token's position, so S itself may then exceed max_position_embeddings.
    /// </summary>
    public int[]? PositionIds { get; init; }

    /// <summary><see cref="PositionIds"/>, or the default t mod S for every token t of the batch.</summary>
    public int[] Positions() => PositionIds ?? Enumerable.Range(0, Batch * SeqLen).Select(t => t % SeqLen).ToArray();

    /// <summary>
    /// The attention kernels' rank mask [2, B, S] (every key's rank, then every query's; see
    /// <see cref="Kernels.AttentionShape"/>): <see cref="KeyRanks"/> and <see cref="QueryRanks"/> when
    /// given; else from <see cref="AttentionPrefix"/>, rank 0 before each row's prefix and the position
    /// from it on; else every rank 0. Keys with attention_mask 0 get NeverSeen.
    /// </summary>
    public int[] AttentionRanks()
    {
        int n = Batch * SeqLen;
        var r = new int[2 * n];
        for (int i = 0; i < n; i++)
        {
            int position = i % SeqLen;
            int rank = AttentionPrefix is not null && position >= AttentionPrefix[i / SeqLen] ? position : 0;
            r[i] = AttentionMask[i] == 0 ? Kernels.AttentionShape.NeverSeen : KeyRanks?[i] ?? rank;
            r[n + i] = QueryRanks?[i] ?? rank;
        }
        return r;
    }

    /// <summary>
    /// Mean pooling as a matrix for <see cref="Autograd.Ops.MixRows"/>: [rows.Count, B·S], its i-th row
    /// averaging the real tokens (attention mask 1) of batch row rows[i].
    /// </summary>
    public float[] MeanPooling(IReadOnlyList<int> rows)
    {
        var m = new float[(long)rows.Count * Batch * SeqLen];
        for (int i = 0; i < rows.Count; i++)
        {
            int r = rows[i], count = 0;
            for (int t = 0; t < SeqLen; t++) count += AttentionMask[r * SeqLen + t];
            for (int t = 0; t < SeqLen; t++)
                if (AttentionMask[r * SeqLen + t] != 0) m[(long)i * Batch * SeqLen + r * SeqLen + t] = 1f / count;
        }
        return m;
    }

    /// <summary>Every id in range for the config, every length consistent; the message names the first problem.</summary>
    public void Validate(BertConfig config)
    {
        int n = Batch * SeqLen;
        if (Batch < 1 || SeqLen < 1) throw new ArgumentException($"empty batch ({Batch} × {SeqLen})");
        if (SeqLen > config.MaxPositionEmbeddings && PositionIds is null)
            throw new ArgumentException($"sequence length {SeqLen} exceeds max_position_embeddings {config.MaxPositionEmbeddings}");
        void Length(string name, int[]? a, int expected)
        {
            if (a is not null && a.Length != expected) throw new ArgumentException($"{name} has {a.Length} entries, expected {expected}");
        }
        Length("input_ids", InputIds, n);
        Length("token_type_ids", TokenTypeIds, n);
        Length("attention_mask", AttentionMask, n);
        Length("labels", Labels, n);
        Length("next_sentence_label", NextSentenceLabel, Batch);
        Length("attention prefix", AttentionPrefix, Batch);
        for (int r = 0; r < Batch && AttentionPrefix is not null; r++)
            if ((uint)AttentionPrefix[r] > (uint)SeqLen)
                throw new ArgumentException($"attention prefix of row {r} is {AttentionPrefix[r]}, outside [0, {SeqLen}]");
        if ((KeyRanks is null) != (QueryRanks is null))
            throw new ArgumentException("attention ranks need both KeyRanks and QueryRanks");
        if (KeyRanks is not null && AttentionPrefix is not null)
            throw new ArgumentException("give an attention prefix or attention ranks, not both");
        Length("key ranks", KeyRanks, n);
        Length("query ranks", QueryRanks, n);
        Length("position_ids", PositionIds, n);
        for (int i = 0; i < n && PositionIds is not null; i++)
            if ((uint)PositionIds[i] >= (uint)config.MaxPositionEmbeddings)
                throw new ArgumentException($"position_ids[{i / SeqLen}][{i % SeqLen}] = {PositionIds[i]} is outside [0, {config.MaxPositionEmbeddings})");
        for (int i = 0; i < n && KeyRanks is not null; i++)
        {
            if ((uint)KeyRanks[i] >= Kernels.AttentionShape.MaxRank && KeyRanks[i] != Kernels.AttentionShape.NeverSeen)
                throw new ArgumentException($"key rank [{i / SeqLen}][{i % SeqLen}] = {KeyRanks[i]} is outside [0, 2^24) and not NeverSeen");
            if ((uint)QueryRanks![i] >= Kernels.AttentionShape.MaxRank)
                throw new ArgumentException($"query rank [{i / SeqLen}][{i % SeqLen}] = {QueryRanks[i]} is outside [0, 2^24)");
        }
        for (int i = 0; i < n; i++)
        {
            if ((uint)InputIds[i] >= (uint)config.VocabSize)
                throw new ArgumentException($"input_ids[{i / SeqLen}][{i % SeqLen}] = {InputIds[i]} is outside the vocabulary [0, {config.VocabSize})");
            if ((uint)TokenTypeIds[i] >= (uint)config.TypeVocabSize)
                throw new ArgumentException($"token_type_ids[{i / SeqLen}][{i % SeqLen}] = {TokenTypeIds[i]} is outside [0, {config.TypeVocabSize})");
            if (AttentionMask[i] is not (0 or 1))
                throw new ArgumentException($"attention_mask[{i / SeqLen}][{i % SeqLen}] = {AttentionMask[i]} must be 0 or 1");
            if (Labels is not null && Labels[i] != -100 && (uint)Labels[i] >= (uint)config.VocabSize)
                throw new ArgumentException($"labels[{i / SeqLen}][{i % SeqLen}] = {Labels[i]} is outside the vocabulary (use -100 to ignore)");
        }
        foreach (var (head, labels) in AuxLabels ?? new Dictionary<string, int[]>())
        {
            if (!config.AuxHeads.Contains(head)) throw new ArgumentException($"labels for the {head} head, which this model does not have");
            Length($"{head} labels", labels, n);
            for (int i = 0; i < n; i++)
                if (labels[i] is not (-100 or 0 or 1))
                    throw new ArgumentException($"{head} labels[{i / SeqLen}][{i % SeqLen}] = {labels[i]} must be 0, 1 or -100");
        }
        if (NextSentenceLabel is not null)
            for (int b = 0; b < Batch; b++)
                if (NextSentenceLabel[b] != -100 && (uint)NextSentenceLabel[b] >= (uint)config.SentenceClasses)
                    throw new ArgumentException($"next_sentence_label[{b}] = {NextSentenceLabel[b]} must be in [0, {config.SentenceClasses})");
    }
}
