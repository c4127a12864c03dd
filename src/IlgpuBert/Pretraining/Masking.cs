// Which tokens an MLM example hides and how ("A Primer in BERTology" §5.1): the rate, the
// 80/10/10 mix of [MASK] / random token / unchanged (or [UNK] instead of [MASK]), and the unit
// that is masked together:
// - token: word pieces independently (original BERT);
// - whole-word: all pieces of a word together (BERT's later release);
// - span: SpanBERT spans of whole words, lengths ~ Geometric(p = 0.2) clipped at 10;
// - phrase: ERNIE-style multi-word units — phrases from a supplied list, capitalised runs
//   (entity-like), and frequent word n-grams — masked together, other words as whole words.
// Units are drawn in random order and kept while the budget of round(rate · n) tokens allows,
// so whole units are never split. The schedule decides the random stream: static gives each
// example N fixed masks (original BERT's duplication), dynamic a fresh one every epoch (RoBERTa).
namespace IlgpuBert.Pretraining;

public enum MaskingStrategy { Token, WholeWord, Span, Phrase }

public enum MaskSchedule { Static, Dynamic }

public sealed record MaskingOptions
{
    public double Rate { get; init; } = 0.15;
    public double ReplaceWithMask { get; init; } = 0.8;
    public double ReplaceWithRandom { get; init; } = 0.1;
    public bool MaskWithUnk { get; init; }
    public MaskingStrategy Strategy { get; init; } = MaskingStrategy.Token;
    public MaskSchedule Schedule { get; init; } = MaskSchedule.Dynamic;
    public int StaticCopies { get; init; } = 10;
    public double SpanP { get; init; } = 0.2;
    public int MaxSpan { get; init; } = 10;

    /// <summary>Parses "0.8,0.1,0.1" (mask, random, keep); the three must add up to 1.</summary>
    public MaskingOptions WithMix(string mix)
    {
        var parts = mix.Split(',').Select(p => double.TryParse(p, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) ? v : double.NaN).ToArray();
        if (parts.Length != 3 || parts.Any(v => !(v >= 0 && v <= 1)) || Math.Abs(parts.Sum() - 1) > 1e-6)
            throw new ArgumentException($"--mask-mix must be three non-negative fractions adding up to 1 (mask,random,keep), got \"{mix}\"");
        return this with { ReplaceWithMask = parts[0], ReplaceWithRandom = parts[1] };
    }
}

/// <summary>
/// Input ids with the chosen positions replaced, and MLM labels (original id there, −100 elsewhere);
/// for objectives that arrange their own rows (XLNet's query stream, UniLMv2's pseudo-masks), the
/// rows' position ids and attention ranks (<see cref="Model.BertInputs.KeyRanks"/>).
/// </summary>
public sealed record MaskedExample(int[] InputIds, int[] Labels)
{
    public int[]? PositionIds { get; init; }
    public int[]? KeyRanks { get; init; }
    public int[]? QueryRanks { get; init; }
}

public sealed class Masker(MaskingOptions options, SpecialIds special, int vocabSize, PhraseTable? phrases = null)
{
    /// <summary>
    /// The random stream for one example in one epoch: static masking cycles through
    /// <see cref="MaskingOptions.StaticCopies"/> fixed streams, dynamic draws a new one each epoch.
    /// </summary>
    public Random StreamFor(ulong seed, long example, int epoch)
    {
        long copy = options.Schedule == MaskSchedule.Static ? epoch % Math.Max(1, options.StaticCopies) : epoch;
        ulong x = seed ^ (ulong)example * 0x9E3779B97F4A7C15UL ^ (ulong)copy * 0xC2B2AE3D27D4EB4FUL;
        // SplitMix64 finaliser: nearby (example, epoch) pairs get unrelated streams.
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        x ^= x >> 31;
        return new Random((int)(x & 0x7FFFFFFF));
    }

    public MaskedExample Apply(Example e, Random rng)
    {
        var units = Units(e, rng);
        int candidates = e.Special.Count(s => !s);
        int budget = Math.Max(1, (int)Math.Round(candidates * options.Rate));
        var labels = Enumerable.Repeat(ExampleGenerator.IgnoreLabel, e.Length).ToArray();
        var ids = (int[])e.Ids.Clone();
        int covered = 0;
        foreach (var unit in units)
        {
            if (covered >= budget) break;
            if (covered + unit.Length > budget) continue;
            if (unit.Any(p => labels[p] != ExampleGenerator.IgnoreLabel)) continue; // overlapping span
            foreach (int p in unit)
            {
                labels[p] = e.Ids[p];
                double r = rng.NextDouble();
                if (r < options.ReplaceWithMask) ids[p] = options.MaskWithUnk ? special.Unk : special.Mask;
                else if (r < options.ReplaceWithMask + options.ReplaceWithRandom) ids[p] = rng.Next(vocabSize);
            }
            covered += unit.Length;
        }
        return new MaskedExample(ids, labels);
    }

    /// <summary>The maskable units of an example in the random order they are tried.</summary>
    private List<int[]> Units(Example e, Random rng)
    {
        var words = Words(e);
        List<int[]> units = options.Strategy switch
        {
            MaskingStrategy.Token => Enumerable.Range(0, e.Length).Where(p => !e.Special[p]).Select(p => new[] { p }).ToList(),
            MaskingStrategy.WholeWord => words,
            MaskingStrategy.Span => Spans(words, rng),
            _ => PhraseUnits(e, words),
        };
        if (options.Strategy != MaskingStrategy.Span) Shuffle(units, rng);
        return units;
    }

    /// <summary>Positions of each word: a word start and the continuation pieces after it.</summary>
    public static List<int[]> Words(Example e)
    {
        var words = new List<int[]>();
        var current = new List<int>();
        for (int p = 0; p < e.Length; p++)
        {
            if (e.Special[p] || e.WordStart[p])
            {
                if (current.Count > 0) words.Add(current.ToArray());
                current.Clear();
            }
            if (!e.Special[p]) current.Add(p);
        }
        if (current.Count > 0) words.Add(current.ToArray());
        return words;
    }

    /// <summary>SpanBERT: spans of ℓ ~ Geometric(p) whole words (ℓ ≤ max) at uniformly random word starts.</summary>
    private List<int[]> Spans(List<int[]> words, Random rng)
    {
        var spans = new List<int[]>();
        if (words.Count == 0) return spans;
        for (int attempt = 0; attempt < 4 * words.Count; attempt++)
        {
            int length = SpanLength(rng);
            int start = rng.Next(words.Count);
            int end = Math.Min(words.Count, start + length);
            spans.Add(words.Skip(start).Take(end - start).SelectMany(w => w).ToArray());
        }
        return spans;
    }

    /// <summary>
    /// One draw of the span length in words: Geometric(p) on 1, 2, … truncated to the maximum and
    /// renormalised, as SpanBERT samples it (mean 3.8 words for p = 0.2, maximum 10).
    /// </summary>
    public int SpanLength(Random rng)
    {
        while (true)
        {
            int length = 1;
            while (rng.NextDouble() >= options.SpanP && length <= options.MaxSpan) length++;
            if (length <= options.MaxSpan) return length;
        }
    }

    private List<int[]> PhraseUnits(Example e, List<int[]> words)
    {
        var units = new List<int[]>();
        int i = 0;
        while (i < words.Count)
        {
            int n = phrases?.MatchAt(e, words, i) ?? 0;
            if (n < 2) n = CapitalizedRun(e, words, i);
            n = Math.Max(n, 1);
            units.Add(words.Skip(i).Take(n).SelectMany(w => w).ToArray());
            i += n;
        }
        return units;
    }

    /// <summary>Consecutive capitalised words from i (entity-like), when there are at least two.</summary>
    private static int CapitalizedRun(Example e, List<int[]> words, int i)
    {
        int n = 0;
        while (i + n < words.Count && e.Capitalized[words[i + n][0]]) n++;
        return n >= 2 ? n : 1;
    }

    private static void Shuffle<T>(List<T> list, Random rng)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }
}

/// <summary>
/// Multi-word units for phrase masking, as sequences of word-piece ids: a supplied phrase list
/// (tokenized), plus word n-grams (n = 2, 3) frequent in the training examples.
/// </summary>
public sealed class PhraseTable
{
    private readonly HashSet<string> keys = new();
    private readonly int maxWords;

    private PhraseTable(int maxWords) => this.maxWords = maxWords;

    public int Count => keys.Count;

    private static string Key(IEnumerable<int[]> wordIds) => string.Join("|", wordIds.Select(w => string.Join(",", w)));

    /// <summary>Phrases given as lists of words, each word its word-piece ids.</summary>
    public static PhraseTable FromPhrases(IEnumerable<int[][]> phrases, int maxWords = 6)
    {
        var t = new PhraseTable(maxWords);
        foreach (var p in phrases.Where(p => p.Length >= 2 && p.Length <= maxWords)) t.keys.Add(Key(p));
        return t;
    }

    /// <summary>Adds word bigrams and trigrams occurring at least <paramref name="minCount"/> times in the examples.</summary>
    public PhraseTable WithFrequentNgrams(IEnumerable<Example> examples, int minCount)
    {
        var counts = new Dictionary<string, int>();
        foreach (var e in examples)
        {
            var words = Masker.Words(e).Select(w => w.Select(p => e.Ids[p]).ToArray()).ToList();
            for (int n = 2; n <= 3; n++)
                for (int i = 0; i + n <= words.Count; i++)
                {
                    string k = Key(words.Skip(i).Take(n));
                    counts[k] = counts.GetValueOrDefault(k) + 1;
                }
        }
        foreach (var (k, c) in counts) if (c >= minCount) keys.Add(k);
        return this;
    }

    /// <summary>The number of words of the longest known phrase starting at word i, or 0.</summary>
    public int MatchAt(Example e, List<int[]> words, int i)
    {
        for (int n = Math.Min(maxWords, words.Count - i); n >= 2; n--)
            if (keys.Contains(Key(words.Skip(i).Take(n).Select(w => w.Select(p => e.Ids[p]).ToArray())))) return n;
        return 0;
    }
}
