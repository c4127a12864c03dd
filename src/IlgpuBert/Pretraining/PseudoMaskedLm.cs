// UniLMv2's pseudo-masked language model (Bao et al. 2020) on the encoder, in one forward pass
// under a rank mask (BertInputs.KeyRanks / QueryRanks):
// - spans covering round(rate · n) of the n text tokens are masked (UniLMv2 §3: 60 % single
//   tokens, 40 % n-grams of 2 to 6 word pieces); in place, as BERT's MLM does (UniLMv2's
//   autoencoding part "is the same as BERT's"), each becomes [M] ([MASK]), a random piece or stays
//   itself by the --mask-mix shares (80/10/10); the context and these rank 0 and see each other,
//   and each is labelled with its original;
// - the spans get a factorisation order, span k of it rank k. Appended after the text, per span in
//   position order: its pseudo-masks [P] (the [MASK] piece, at the span's position_ids), seen by no
//   row and seeing rank ≤ k − 1 (the context, the [M]s and the spans before it), labelled with the
//   originals: the partially autoregressive part, a whole span predicted at once; then the span's
//   original tokens (again at its positions), rank k, seen by the spans after it.
// The last span's originals would be seen by no row, so they are left out (the outputs are the same).
// The two losses are one masked-LM loss over the [M] and [P] rows together (UniLMv2 sums the two
// means; here each labelled row weighs the same).
using IlgpuBert.Model;

namespace IlgpuBert.Pretraining;

public sealed class PseudoMaskedLm(SpecialIds special, double rate, int vocabSize, double replaceWithMask = 0.8, double replaceWithRandom = 0.1)
{
    /// <summary>Masked tokens for <paramref name="textTokens"/> text tokens: round(rate · n), at least one.</summary>
    public int Budget(int textTokens) => Math.Max(1, (int)Math.Round(rate * textTokens));

    /// <summary>The longest example whose text (at most its length less [CLS] and one [SEP]) fits in <paramref name="seqLen"/> with a [P] and an original row per masked token.</summary>
    public int ExampleLength(int seqLen)
    {
        int length = seqLen;
        while (length > 3 && length + 2 * Budget(length - 2) > seqLen) length--;
        return length;
    }

    /// <summary>Contiguous spans of text tokens (no special inside), drawn until the budget is met, sorted by start.</summary>
    public List<int[]> Spans(Example e, Random rng)
    {
        int n = e.Length;
        int text = e.Special.Count(s => !s), budget = Budget(text), covered = 0;
        var taken = new bool[n];
        var spans = new List<int[]>();
        for (int tries = 0; covered < budget && text > 0 && tries < 20 * n; tries++)
        {
            int length = Math.Min(budget - covered, rng.NextDouble() < 0.4 ? rng.Next(2, 7) : 1);
            int start = rng.Next(n - length + 1);
            if (Enumerable.Range(start, length).Any(i => e.Special[i] || taken[i])) continue;
            for (int i = start; i < start + length; i++) taken[i] = true;
            spans.Add([.. Enumerable.Range(start, length)]);
            covered += length;
        }
        spans.Sort((a, b) => a[0].CompareTo(b[0]));
        return spans;
    }

    /// <summary>The example's rows with [M]s, then per span its [P] rows and its original rows, with position ids, ranks and labels as the file's header says.</summary>
    public (Example Example, MaskedExample Masked) Build(Example e, Random rng)
    {
        var spans = Spans(e, rng);
        var order = Enumerable.Range(0, spans.Count).ToArray();
        rng.Shuffle(order);
        var spanRank = new int[spans.Count];
        for (int k = 0; k < order.Length; k++) spanRank[order[k]] = k + 1;

        var ids = new List<int>(e.Ids);
        var labels = Enumerable.Repeat(ExampleGenerator.IgnoreLabel, e.Length).ToList();
        var positions = Enumerable.Range(0, e.Length).ToList();
        var keyRanks = Enumerable.Repeat(0, e.Length).ToList();
        var queryRanks = Enumerable.Repeat(0, e.Length).ToList();
        var types = new List<int>(e.TokenTypes);
        void Row(int id, int label, int position, int keyRank, int queryRank)
        {
            ids.Add(id);
            labels.Add(label);
            positions.Add(position);
            keyRanks.Add(keyRank);
            queryRanks.Add(queryRank);
            types.Add(e.TokenTypes[position]);
        }
        for (int s = 0; s < spans.Count; s++)
        {
            foreach (int p in spans[s])
            {
                double u = rng.NextDouble();
                if (u < replaceWithMask) ids[p] = special.Mask; // [M]
                else if (u < replaceWithMask + replaceWithRandom) ids[p] = rng.Next(vocabSize);
                labels[p] = e.Ids[p];
            }
            int k = spanRank[s];
            foreach (int p in spans[s]) Row(special.Mask, e.Ids[p], p, BertInputs.NeverSeen, k - 1); // [P]
            if (k < spans.Count)
                foreach (int p in spans[s]) Row(e.Ids[p], ExampleGenerator.IgnoreLabel, p, k, k); // the originals
        }
        int total = ids.Count;
        var specials = new bool[total];
        e.Special.CopyTo(specials, 0);
        var example = new Example([.. ids], [.. types], new bool[total], new bool[total], specials, ExampleGenerator.IgnoreLabel);
        return (example, new MaskedExample([.. ids], [.. labels]) { PositionIds = [.. positions], KeyRanks = [.. keyRanks], QueryRanks = [.. queryRanks] });
    }
}
