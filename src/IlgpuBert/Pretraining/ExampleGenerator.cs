// Training examples from tokenized documents, following BERT's create_pretraining_data.py
// (create_instances_from_document) and the variants "A Primer in BERTology" (§5.1) surveys:
// - sentence objective: NSP (50% the real next segment, label 0; 50% a random one, label 1),
//   ALBERT's SOP (50% swapped order, label 1), a 3-way next (0) / previous (1) / random (2),
//   ERNIE 2.0's sentence distance (B follows A (0) / comes from elsewhere in A's document (1) / from
//   another document (2)) and sentence reordering (a passage cut into k ≤ 3 segments, shuffled:
//   predict which of the 1! + 2! + 3! = 9 orders), a document-contrastive objective (two disjoint
//   segments of one document, each its own row: their mean-pooled encodings must find each other
//   among the batch's other segments), or none;
// - input format: segment pairs, or RoBERTa's FULL-SENTENCES (contiguous sentences packed into one
//   segment, crossing document boundaries with an extra [SEP]; no sentence objective).
// With probability 0.1 a pair example targets a random shorter length, as BERT does.
// Every token also carries ERNIE 2.0's token-document label: does its id occur in its document
// outside the text the example shows?
namespace IlgpuBert.Pretraining;

public enum SentenceObjective { Nsp, Sop, PrevNext, Distance, Reorder, Contrastive, None }

public enum InputFormat { Pairs, FullSentences }

/// <summary>Special token ids the generator and masker place or avoid.</summary>
public readonly record struct SpecialIds(int Pad, int Unk, int Cls, int Sep, int Mask);

/// <summary>
/// One example before masking: [CLS] A [SEP] (B [SEP]) (or reordering's k segments) with segment
/// ids, per-token word-start, capitalisation and token-document flags (false on specials), and the
/// sentence label (−100 when there is none).
/// </summary>
public sealed record Example(int[] Ids, int[] TokenTypes, bool[] WordStart, bool[] Capitalized, bool[] Special, int SentenceLabel,
    bool[]? ElsewhereInDocument = null)
{
    public int Length => Ids.Length;
}

public sealed class ExampleGenerator(SpecialIds special, int seqLen, SentenceObjective objective, InputFormat format, double shortSeqProb = 0.1)
{
    public const int IgnoreLabel = -100;

    /// <summary>Number of classes of the sentence objective (2 for NSP and SOP, 3 for prev-next and distance, 9 for reorder, 0 for none).</summary>
    public int SentenceClasses => ClassesOf(objective);

    public static int ClassesOf(SentenceObjective objective) => objective switch
    {
        SentenceObjective.PrevNext or SentenceObjective.Distance => 3,
        SentenceObjective.Reorder => ReorderClasses,
        SentenceObjective.None or SentenceObjective.Contrastive => 0,
        _ => 2,
    };

    /// <summary>Whether each example is a pair of segments the batch shows as two rows ([CLS] A [SEP], [CLS] B [SEP]).</summary>
    public static bool PairedRows(SentenceObjective objective) => objective == SentenceObjective.Contrastive;

    /// <summary>Reordering cuts a passage into at most this many segments.</summary>
    public const int MaxReorderSegments = 3;
    public const int ReorderClasses = 1 + 2 + 6;

    /// <summary>
    /// The reordering class of showing segments in <paramref name="order"/> (order[i] = the original
    /// index of the i-th segment shown): k segments take classes [1! + … + (k−1)!, … + k!), the
    /// permutations of k in lexicographic order; 0 is one segment, 1–2 two, 3–8 three.
    /// </summary>
    public static int ReorderClass(IReadOnlyList<int> order)
    {
        int k = order.Count, offset = 0, factorial = 1;
        for (int j = 1; j < k; j++) { factorial *= j; offset += factorial; }
        return offset + Permutations(k).FindIndex(p => p.SequenceEqual(order));
    }

    /// <summary>The permutations of 0..k−1 in lexicographic order.</summary>
    public static List<int[]> Permutations(int k)
    {
        var result = new List<int[]>();
        void Extend(List<int> prefix)
        {
            if (prefix.Count == k) { result.Add([.. prefix]); return; }
            for (int v = 0; v < k; v++)
                if (!prefix.Contains(v)) { prefix.Add(v); Extend(prefix); prefix.RemoveAt(prefix.Count - 1); }
        }
        Extend([]);
        return result;
    }

    public List<Example> Generate(IReadOnlyList<Document> documents, Random rng)
    {
        if (seqLen < 8) throw new ArgumentException($"sequence length {seqLen} is too short for pretraining examples");
        var counts = new DocumentCounts(documents);
        if (format == InputFormat.FullSentences)
        {
            if (objective != SentenceObjective.None)
                throw new ArgumentException("full-sentences packs one segment per example: use --sentence-objective none");
            return FullSentences(documents, counts);
        }
        var result = new List<Example>();
        for (int d = 0; d < documents.Count; d++)
            result.AddRange(objective switch
            {
                SentenceObjective.Reorder => Reordered(documents, d, counts, rng),
                SentenceObjective.Contrastive => SameDocumentPairs(documents, d, counts, rng),
                _ => FromDocument(documents, d, counts, rng),
            });
        return result;
    }

    private List<Example> FullSentences(IReadOnlyList<Document> documents, DocumentCounts counts)
    {
        int max = seqLen - 2;
        var result = new List<Example>();
        var chunk = new List<Piece>();
        for (int d = 0; d < documents.Count; d++)
        {
            var doc = documents[d];
            if (chunk.Count > 0 && chunk.Sum(p => p.Length) + 1 <= max)
                chunk.Add(Piece.Separator(special.Sep)); // document boundary
            foreach (var sentence in doc.Sentences)
            {
                var piece = Piece.Of(sentence, d);
                if (chunk.Count > 0 && chunk.Sum(p => p.Length) + piece.Length > max)
                {
                    result.Add(Build([Flatten(chunk, max)], IgnoreLabel, counts));
                    chunk.Clear();
                }
                chunk.Add(piece);
            }
        }
        if (chunk.Count > 0) result.Add(Build([Flatten(chunk, max)], IgnoreLabel, counts));
        return result;
    }

    private IEnumerable<Example> FromDocument(IReadOnlyList<Document> documents, int docIndex, DocumentCounts counts, Random rng)
    {
        var doc = documents[docIndex].Sentences;
        bool single = objective == SentenceObjective.None;
        int maxTokens = seqLen - (single ? 2 : 3);
        int target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        var chunk = new List<Piece>();
        int length = 0;
        for (int i = 0; i < doc.Length; i++)
        {
            chunk.Add(Piece.Of(doc[i], docIndex));
            length += doc[i].Length;
            if (i != doc.Length - 1 && length < target) continue;
            if (single)
            {
                yield return Build([Flatten(chunk, maxTokens)], IgnoreLabel, counts);
            }
            else
            {
                int chunkStart = i - chunk.Count + 1;
                int aEnd = chunk.Count >= 2 ? rng.Next(1, chunk.Count) : 1;
                var a = Flatten(chunk.GetRange(0, aEnd), int.MaxValue);
                Piece b;
                int label;
                int kind = objective switch
                {
                    SentenceObjective.Nsp => chunk.Count == 1 || rng.NextDouble() < 0.5 ? 2 : 0,
                    SentenceObjective.Sop => rng.NextDouble() < 0.5 ? 1 : 0,
                    SentenceObjective.Distance => rng.Next(3) switch { 0 => 0, 1 => 3, _ => 2 },
                    _ => rng.Next(3),
                };
                Piece? far = kind == 3 ? FarSegment(doc, docIndex, chunkStart, chunkStart + aEnd, target - a.Length, rng) : null;
                if (kind == 3 && far is null) kind = 2; // the document has no sentence apart from A's neighbours
                if (kind == 3)
                {
                    // Distance's middle class: from A's document, not touching A.
                    b = far!;
                    i -= chunk.Count - aEnd;
                    label = 1;
                }
                else if (kind == 2 && documents.Count > 1)
                {
                    // A random segment from another document; the unused sentences go back.
                    b = RandomSegment(documents, docIndex, target - a.Length, rng);
                    i -= chunk.Count - aEnd;
                    label = objective == SentenceObjective.Nsp ? 1 : 2;
                }
                else
                {
                    b = aEnd < chunk.Count ? Flatten(chunk.GetRange(aEnd, chunk.Count - aEnd), int.MaxValue) : SplitOff(ref a, rng);
                    label = 0;
                    if (kind == 1)
                    {
                        (a, b) = (b, a); // B before A: the order is swapped
                        label = 1;
                    }
                    // kind 2 with a single document has nothing random to draw: a real next segment.
                }
                if (a.Length > 0 && b.Length > 0)
                {
                    Truncate(ref a, ref b, maxTokens, rng);
                    yield return Build([a, b], label, counts);
                }
            }
            chunk.Clear();
            length = 0;
            target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        }
    }

    /// <summary>
    /// Sentence reordering: a passage of the document (BERT's target length) cut into k = 1–3
    /// segments, at sentence boundaries when it has enough sentences and at word pieces otherwise,
    /// shown in a random order as [CLS] s₁ [SEP] s₂ [SEP] s₃ [SEP] with alternating segment ids.
    /// </summary>
    private IEnumerable<Example> Reordered(IReadOnlyList<Document> documents, int docIndex, DocumentCounts counts, Random rng)
    {
        int maxTokens = seqLen - 1 - MaxReorderSegments;
        foreach (var chunk in Passages(documents[docIndex].Sentences, docIndex, maxTokens, rng))
        {
            int length = chunk.Sum(p => p.Length);
            int k = Math.Min(rng.Next(1, MaxReorderSegments + 1), Math.Min(length, maxTokens));
            // Cut points: k − 1 distinct sentence boundaries inside the kept tokens, or token positions.
            var all = Flatten(chunk, maxTokens);
            var boundaries = new List<int>();
            for (int j = 0, end = 0; j < chunk.Count - 1; j++)
            {
                end += chunk[j].Length;
                if (end < all.Length) boundaries.Add(end);
            }
            if (boundaries.Count < k - 1) boundaries = Enumerable.Range(1, all.Length - 1).ToList();
            var cuts = boundaries.OrderBy(_ => rng.Next()).Take(k - 1).Order().Prepend(0).Append(all.Length).ToArray();
            var segments = Enumerable.Range(0, k).Select(j => all.Slice(cuts[j], cuts[j + 1] - cuts[j])).ToArray();
            var order = Permutations(k)[rng.Next(Factorial(k))];
            yield return Build([.. order.Select(j => segments[j])], ReorderClass(order), counts);
        }
    }

    /// <summary>
    /// A document's consecutive sentences grouped into passages of BERT's target length (<paramref name="maxTokens"/>,
    /// or with probability shortSeqProb a random shorter one); the last passage takes what is left.
    /// </summary>
    private IEnumerable<List<Piece>> Passages(Sentence[] doc, int docIndex, int maxTokens, Random rng)
    {
        int target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        var chunk = new List<Piece>();
        int length = 0;
        for (int i = 0; i < doc.Length; i++)
        {
            chunk.Add(Piece.Of(doc[i], docIndex));
            length += doc[i].Length;
            if (i != doc.Length - 1 && length < target) continue;
            yield return chunk;
            chunk = [];
            length = 0;
            target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        }
    }

    /// <summary>
    /// The contrastive objective's positives: the document cut into segments of BERT's target length
    /// (each becomes a row of its own, so up to seqLen − 2 tokens), shuffled, and paired (1st with
    /// 2nd, 3rd with 4th; an odd last one with the one before it): two places anywhere in the
    /// document, not neighbours, so what they share is the document's subject rather than the local
    /// thread (fine-tuned 78.8% against 76.6% from neighbouring pairs; perf/RESULTS.md). A document that
    /// fills only one segment is cut between its sentences; a one-sentence document gives no pair.
    /// </summary>
    private IEnumerable<Example> SameDocumentPairs(IReadOnlyList<Document> documents, int docIndex, DocumentCounts counts, Random rng)
    {
        int maxTokens = seqLen - 2;
        var segments = Passages(documents[docIndex].Sentences, docIndex, maxTokens, rng).ToList();
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(segments));
        if (segments.Count == 1 && segments[0].Count >= 2)
        {
            int cut = rng.Next(1, segments[0].Count);
            segments = [segments[0][..cut], segments[0][cut..]];
        }
        for (int j = 0; j + 1 < segments.Count; j += 2)
            yield return Build([Flatten(segments[j], maxTokens), Flatten(segments[j + 1], maxTokens)], IgnoreLabel, counts);
        if (segments.Count >= 3 && segments.Count % 2 == 1)
            yield return Build([Flatten(segments[^2], maxTokens), Flatten(segments[^1], maxTokens)], IgnoreLabel, counts);
    }

    private static int Factorial(int k) => k <= 1 ? 1 : k * Factorial(k - 1);

    private static Piece RandomSegment(IReadOnlyList<Document> documents, int exclude, int targetLength, Random rng)
    {
        int d = rng.Next(documents.Count - 1);
        if (d >= exclude) d++;
        var sentences = documents[d].Sentences;
        return Segment(sentences, d, rng.Next(sentences.Length), sentences.Length, targetLength);
    }

    /// <summary>
    /// A segment of the same document that neither overlaps nor touches A (sentences
    /// [<paramref name="aStart"/>, <paramref name="aEnd"/>)): it starts at least one sentence after A,
    /// or ends at least one before it; null when the document has no such sentence.
    /// </summary>
    private static Piece? FarSegment(Sentence[] doc, int docIndex, int aStart, int aEnd, int targetLength, Random rng)
    {
        int before = Math.Max(0, aStart - 1), after = Math.Max(0, doc.Length - (aEnd + 1));
        if (before + after == 0) return null;
        int pick = rng.Next(before + after);
        return pick < before
            ? Segment(doc, docIndex, pick, aStart - 1, targetLength)
            : Segment(doc, docIndex, aEnd + 1 + (pick - before), doc.Length, targetLength);
    }

    /// <summary>Sentences from <paramref name="first"/> (before <paramref name="limit"/>) until the target length is reached.</summary>
    private static Piece Segment(Sentence[] sentences, int docIndex, int first, int limit, int targetLength)
    {
        var pieces = new List<Piece>();
        int len = 0;
        for (int j = first; j < limit && len < Math.Max(targetLength, 1); j++)
        {
            pieces.Add(Piece.Of(sentences[j], docIndex));
            len += sentences[j].Length;
        }
        return Flatten(pieces, int.MaxValue);
    }

    /// <summary>A one-sentence chunk has no B: cut A's tokens at a random point (at a word start when possible).</summary>
    private static Piece SplitOff(ref Piece a, Random rng)
    {
        if (a.Length < 2) return Piece.Empty;
        int cut = rng.Next(1, a.Length);
        var b = a.Slice(cut, a.Length - cut);
        a = a.Slice(0, cut);
        return b;
    }

    /// <summary>BERT's truncate_seq_pair: drop one token at a time from the front or back of the longer segment.</summary>
    private static void Truncate(ref Piece a, ref Piece b, int maxTokens, Random rng)
    {
        while (a.Length + b.Length > maxTokens)
        {
            ref Piece longer = ref (a.Length > b.Length ? ref a : ref b);
            longer = rng.NextDouble() < 0.5 ? longer.Slice(1, longer.Length - 1) : longer.Slice(0, longer.Length - 1);
        }
    }

    private static Piece Flatten(List<Piece> pieces, int max)
    {
        var all = Piece.Concat(pieces);
        return all.Length > max ? all.Slice(0, max) : all;
    }

    /// <summary>[CLS] s₁ [SEP] s₂ [SEP] …, segment ids 0, 1, 0, …; a token is "elsewhere in its document" when its document holds more of its id than the example shows.</summary>
    private Example Build(Piece[] segments, int label, DocumentCounts counts)
    {
        var ids = new List<int> { special.Cls };
        var types = new List<int> { 0 };
        var starts = new List<bool> { false };
        var caps = new List<bool> { false };
        var specials = new List<bool> { true };
        var docs = new List<int> { -1 };
        for (int s = 0; s < segments.Length; s++)
        {
            var p = segments[s];
            for (int i = 0; i < p.Length; i++)
            {
                ids.Add(p.Ids[i]);
                types.Add(s % 2);
                starts.Add(p.WordStart[i]);
                caps.Add(p.Capitalized[i]);
                specials.Add(p.Ids[i] == special.Sep);
                docs.Add(p.Doc[i]);
            }
            ids.Add(special.Sep);
            types.Add(s % 2);
            starts.Add(false);
            caps.Add(false);
            specials.Add(true);
            docs.Add(-1);
        }
        var shown = new Dictionary<(int Doc, int Id), int>();
        for (int i = 0; i < ids.Count; i++)
            if (docs[i] >= 0) shown[(docs[i], ids[i])] = shown.GetValueOrDefault((docs[i], ids[i])) + 1;
        var elsewhere = new bool[ids.Count];
        for (int i = 0; i < ids.Count; i++)
            elsewhere[i] = docs[i] >= 0 && counts.Of(docs[i], ids[i]) > shown[(docs[i], ids[i])];
        return new Example(ids.ToArray(), types.ToArray(), starts.ToArray(), caps.ToArray(), specials.ToArray(), label, elsewhere);
    }

    /// <summary>How often each token id occurs in a document, counted on first use (a few documents kept).</summary>
    private sealed class DocumentCounts(IReadOnlyList<Document> documents)
    {
        private readonly Dictionary<int, Dictionary<int, int>> cache = new();

        public int Of(int doc, int id)
        {
            if (!cache.TryGetValue(doc, out var counts))
            {
                if (cache.Count >= 64) cache.Clear();
                cache[doc] = counts = new Dictionary<int, int>();
                foreach (var s in documents[doc].Sentences)
                    foreach (int t in s.Ids) counts[t] = counts.GetValueOrDefault(t) + 1;
            }
            return counts.GetValueOrDefault(id);
        }
    }

    /// <summary>A run of tokens with their flags and the document each came from (−1: a separator).</summary>
    private sealed record Piece(int[] Ids, bool[] WordStart, bool[] Capitalized, int[] Doc)
    {
        public static readonly Piece Empty = new([], [], [], []);
        public int Length => Ids.Length;
        public static Piece Of(Sentence s, int doc) => new(s.Ids, s.WordStart, s.Capitalized, Enumerable.Repeat(doc, s.Length).ToArray());
        public static Piece Separator(int sep) => new([sep], [false], [false], [-1]);
        public Piece Slice(int start, int count) =>
            new(Ids[start..(start + count)], WordStart[start..(start + count)], Capitalized[start..(start + count)], Doc[start..(start + count)]);
        public static Piece Concat(IEnumerable<Piece> pieces)
        {
            var list = pieces.ToList();
            return new(list.SelectMany(p => p.Ids).ToArray(), list.SelectMany(p => p.WordStart).ToArray(),
                list.SelectMany(p => p.Capitalized).ToArray(), list.SelectMany(p => p.Doc).ToArray());
        }
    }
}
