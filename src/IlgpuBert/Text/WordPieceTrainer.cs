// Builds a WordPiece vocabulary from raw text the way HF tokenizers' WordPieceTrainer does: BPE
// merges over words, written in WordPiece form (a word's first piece bare, later pieces with
// "##"). Text is normalised and split into words and single punctuation marks exactly as the
// tokenizer will later split it (BertNormalizer). The special tokens come first: [PAD] [UNK] [CLS] [SEP] [MASK].
//
// Merges are counted incrementally: each merge updates only the pair counts of the words that
// contain it, and a lazy max-heap finds the next most frequent pair.
namespace IlgpuBert.Text;

public static class WordPieceTrainer
{
    public static readonly string[] SpecialTokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

    /// <summary>Words and punctuation marks, as BERT's tokenizer splits them (lower-cased and accent-stripped unless asked not to).</summary>
    public static IEnumerable<string> Words(string text, bool lowerCase = true) => new BertNormalizer(lowerCase).WordStrings(text);

    /// <summary>A vocabulary of at most <paramref name="size"/> tokens from the texts.</summary>
    public static List<string> Train(IEnumerable<string> texts, int size, int minFrequency = 2, int maxWordLength = 50, bool lowerCase = true)
    {
        if (size < SpecialTokens.Length + 1) throw new ArgumentException($"vocabulary size {size} is too small");
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var w in Words(text, lowerCase))
                if (w.Length <= maxWordLength) counts[w] = counts.GetValueOrDefault(w) + 1;

        var symbols = new List<string>();
        var symbolId = new Dictionary<string, int>(StringComparer.Ordinal);
        int Id(string s)
        {
            if (!symbolId.TryGetValue(s, out int id)) { id = symbols.Count; symbols.Add(s); symbolId[s] = id; }
            return id;
        }
        var words = counts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var pieces = new List<int>[words.Count];
        var freq = new int[words.Count];
        var alphabet = new Dictionary<int, long>();
        for (int w = 0; w < words.Count; w++)
        {
            freq[w] = words[w].Value;
            pieces[w] = words[w].Key.Select((c, i) => Id(i == 0 ? c.ToString() : "##" + c)).ToList();
            foreach (int s in pieces[w]) alphabet[s] = alphabet.GetValueOrDefault(s) + freq[w];
        }
        var vocab = new List<string>(SpecialTokens);
        foreach (var s in alphabet.OrderByDescending(kv => kv.Value).ThenBy(kv => symbols[kv.Key], StringComparer.Ordinal))
        {
            if (vocab.Count >= size) return vocab;
            vocab.Add(symbols[s.Key]);
        }

        var pairCount = new Dictionary<(int, int), long>();
        var pairWords = new Dictionary<(int, int), HashSet<int>>();
        void Count(int w, int sign)
        {
            var p = pieces[w];
            for (int i = 0; i + 1 < p.Count; i++)
            {
                var key = (p[i], p[i + 1]);
                pairCount[key] = pairCount.GetValueOrDefault(key) + sign * freq[w];
                if (sign > 0)
                {
                    if (!pairWords.TryGetValue(key, out var set)) pairWords[key] = set = new HashSet<int>();
                    set.Add(w);
                }
            }
        }
        for (int w = 0; w < words.Count; w++) Count(w, +1);
        var heap = new PriorityQueue<(int, int), (long, int, int)>(Comparer<(long, int, int)>.Create((a, b) => b.CompareTo(a)));
        foreach (var (key, c) in pairCount) heap.Enqueue(key, (c, -key.Item1, -key.Item2));

        while (vocab.Count < size && heap.TryDequeue(out var pair, out var priority))
        {
            long current = pairCount.GetValueOrDefault(pair);
            if (current != priority.Item1) { if (current > 0) heap.Enqueue(pair, (current, -pair.Item1, -pair.Item2)); continue; }
            if (current < minFrequency) break;
            string merged = symbols[pair.Item1] + symbols[pair.Item2].Substring(2);
            int mergedId = Id(merged);
            vocab.Add(merged);
            var touched = new HashSet<(int, int)>();
            foreach (int w in pairWords[pair].ToList())
            {
                Count(w, -1);
                var p = pieces[w];
                for (int i = 0; i + 1 < p.Count; i++)
                    if (p[i] == pair.Item1 && p[i + 1] == pair.Item2)
                    {
                        p[i] = mergedId;
                        p.RemoveAt(i + 1);
                    }
                Count(w, +1);
                for (int i = 0; i + 1 < p.Count; i++) touched.Add((p[i], p[i + 1]));
            }
            pairCount.Remove(pair);
            foreach (var key in touched) heap.Enqueue(key, (pairCount.GetValueOrDefault(key), -key.Item1, -key.Item2));
        }
        return vocab;
    }
}
