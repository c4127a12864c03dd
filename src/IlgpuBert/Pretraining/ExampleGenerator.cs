// Training examples from tokenized documents, following BERT's create_pretraining_data.py
// (create_instances_from_document) and the variants "A Primer in BERTology" (§5.1) surveys:
// - sentence objective: NSP (50% the real next segment, label 0; 50% a random one, label 1),
//   ALBERT's SOP (50% swapped order, label 1), a 3-way next (0) / previous (1) / random (2), or none;
// - input format: segment pairs, or RoBERTa's FULL-SENTENCES (contiguous sentences packed into one
//   segment, crossing document boundaries with an extra [SEP]; no sentence objective).
// With probability 0.1 a pair example targets a random shorter length, as BERT does.
namespace IlgpuBert.Pretraining;

public enum SentenceObjective { Nsp, Sop, PrevNext, None }

public enum InputFormat { Pairs, FullSentences }

/// <summary>Special token ids the generator and masker place or avoid.</summary>
public readonly record struct SpecialIds(int Pad, int Unk, int Cls, int Sep, int Mask);

/// <summary>
/// One example before masking: [CLS] A [SEP] (B [SEP]) with segment ids, per-token word-start and
/// capitalisation flags (false on specials), and the sentence label (−100 when there is none).
/// </summary>
public sealed record Example(int[] Ids, int[] TokenTypes, bool[] WordStart, bool[] Capitalized, bool[] Special, int SentenceLabel)
{
    public int Length => Ids.Length;
}

public sealed class ExampleGenerator(SpecialIds special, int seqLen, SentenceObjective objective, InputFormat format, double shortSeqProb = 0.1)
{
    public const int IgnoreLabel = -100;

    /// <summary>Number of classes of the sentence objective (2 for NSP and SOP, 3 for prev-next, 0 for none).</summary>
    public int SentenceClasses => objective switch { SentenceObjective.PrevNext => 3, SentenceObjective.None => 0, _ => 2 };

    public List<Example> Generate(IReadOnlyList<Document> documents, Random rng)
    {
        if (seqLen < 8) throw new ArgumentException($"sequence length {seqLen} is too short for pretraining examples");
        if (format == InputFormat.FullSentences)
        {
            if (objective != SentenceObjective.None)
                throw new ArgumentException("full-sentences packs one segment per example: use --sentence-objective none");
            return FullSentences(documents);
        }
        var result = new List<Example>();
        for (int d = 0; d < documents.Count; d++)
            result.AddRange(FromDocument(documents, d, rng));
        return result;
    }

    private List<Example> FullSentences(IReadOnlyList<Document> documents)
    {
        int max = seqLen - 2;
        var result = new List<Example>();
        var chunk = new List<Piece>();
        foreach (var doc in documents)
        {
            if (chunk.Count > 0 && chunk.Sum(p => p.Length) + 1 <= max)
                chunk.Add(Piece.Separator(special.Sep)); // document boundary
            foreach (var sentence in doc.Sentences)
            {
                var piece = Piece.Of(sentence);
                if (chunk.Count > 0 && chunk.Sum(p => p.Length) + piece.Length > max)
                {
                    result.Add(Build(Flatten(chunk, max), null, IgnoreLabel));
                    chunk.Clear();
                }
                chunk.Add(piece);
            }
        }
        if (chunk.Count > 0) result.Add(Build(Flatten(chunk, max), null, IgnoreLabel));
        return result;
    }

    private IEnumerable<Example> FromDocument(IReadOnlyList<Document> documents, int docIndex, Random rng)
    {
        var doc = documents[docIndex].Sentences;
        bool single = objective == SentenceObjective.None;
        int maxTokens = seqLen - (single ? 2 : 3);
        int target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        var chunk = new List<Piece>();
        int length = 0;
        for (int i = 0; i < doc.Length; i++)
        {
            chunk.Add(Piece.Of(doc[i]));
            length += doc[i].Length;
            if (i != doc.Length - 1 && length < target) continue;
            if (single)
            {
                yield return Build(Flatten(chunk, maxTokens), null, IgnoreLabel);
            }
            else
            {
                int aEnd = chunk.Count >= 2 ? rng.Next(1, chunk.Count) : 1;
                var a = Flatten(chunk.GetRange(0, aEnd), int.MaxValue);
                Piece b;
                int label;
                int kind = objective switch
                {
                    SentenceObjective.Nsp => chunk.Count == 1 || rng.NextDouble() < 0.5 ? 2 : 0,
                    SentenceObjective.Sop => rng.NextDouble() < 0.5 ? 1 : 0,
                    _ => rng.Next(3),
                };
                if (kind == 2 && documents.Count > 1)
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
                    yield return Build(a, b, label);
                }
            }
            chunk.Clear();
            length = 0;
            target = rng.NextDouble() < shortSeqProb ? rng.Next(2, maxTokens + 1) : maxTokens;
        }
    }

    private static Piece RandomSegment(IReadOnlyList<Document> documents, int exclude, int targetLength, Random rng)
    {
        int d = rng.Next(documents.Count - 1);
        if (d >= exclude) d++;
        var sentences = documents[d].Sentences;
        var pieces = new List<Piece>();
        int len = 0;
        for (int j = rng.Next(sentences.Length); j < sentences.Length && len < Math.Max(targetLength, 1); j++)
        {
            pieces.Add(Piece.Of(sentences[j]));
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

    private Example Build(Piece a, Piece? b, int label)
    {
        var ids = new List<int> { special.Cls };
        var types = new List<int> { 0 };
        var starts = new List<bool> { false };
        var caps = new List<bool> { false };
        var specials = new List<bool> { true };
        void Add(Piece p, int type)
        {
            for (int i = 0; i < p.Length; i++)
            {
                ids.Add(p.Ids[i]);
                types.Add(type);
                starts.Add(p.WordStart[i]);
                caps.Add(p.Capitalized[i]);
                specials.Add(p.Ids[i] == special.Sep);
            }
            ids.Add(special.Sep);
            types.Add(type);
            starts.Add(false);
            caps.Add(false);
            specials.Add(true);
        }
        Add(a, 0);
        if (b is not null) Add(b, 1);
        return new Example(ids.ToArray(), types.ToArray(), starts.ToArray(), caps.ToArray(), specials.ToArray(), label);
    }

    /// <summary>A run of tokens with their flags.</summary>
    private sealed record Piece(int[] Ids, bool[] WordStart, bool[] Capitalized)
    {
        public static readonly Piece Empty = new([], [], []);
        public int Length => Ids.Length;
        public static Piece Of(Sentence s) => new(s.Ids, s.WordStart, s.Capitalized);
        public static Piece Separator(int sep) => new([sep], [false], [false]);
        public Piece Slice(int start, int count) => new(Ids[start..(start + count)], WordStart[start..(start + count)], Capitalized[start..(start + count)]);
        public static Piece Concat(IEnumerable<Piece> pieces)
        {
            var list = pieces.ToList();
            return new(list.SelectMany(p => p.Ids).ToArray(), list.SelectMany(p => p.WordStart).ToArray(), list.SelectMany(p => p.Capitalized).ToArray());
        }
    }
}
