// XLNet's permutation language model (Yang et al. 2019) on the encoder, both streams in one fused
// pass under a rank mask (BertInputs.KeyRanks / QueryRanks):
// - a factorisation order z is sampled over the example's text tokens; a token's rank is its place
//   in z (1, 2, …), the special tokens rank 0 (context everyone sees);
// - the content stream is the example's own rows: row i sees every key j with rank(j) ≤ rank(i),
//   itself included (XLNet's h, Eq. 4);
// - partial prediction (§2.3): only the last 1/K of z is predicted (K = 6). Each predicted token at
//   position p gets a query-stream row appended after the text: [MASK] at position_ids p (XLNet's
//   trainable w plus p's position: no content of its own token), seen by no row (key rank
//   NeverSeen), seeing the content rows ranked before p's (query rank rank(p) − 1, XLNet's g, Eq. 4),
//   labelled with the token at p. Its own content row has rank rank(p), so it never sees it.
// Keys and values of the query rows come, as in XLNet, from the content stream of the layer below;
// a query row's own state carries through the residual, as XLNet's g does. Unlike XLNet there is no
// relative position encoding or segment recurrence: BERT's absolute positions, one segment pair.
using IlgpuBert.Model;

namespace IlgpuBert.Pretraining;

public sealed class PermutationLm(SpecialIds special)
{
    /// <summary>XLNet's K: the last 1/K of each factorisation order is predicted.</summary>
    public const int K = 6;

    /// <summary>Query-stream rows for <paramref name="textTokens"/> text tokens: ⌈n / K⌉, at least one.</summary>
    public static int Predicted(int textTokens) => Math.Max(1, (textTokens + K - 1) / K);

    /// <summary>The longest example whose text tokens (at most its length less [CLS] and one [SEP]) and their query rows fit in <paramref name="seqLen"/>.</summary>
    public static int ExampleLength(int seqLen)
    {
        int length = seqLen;
        while (length > 3 && length + Predicted(length - 2) > seqLen) length--;
        return length;
    }

    /// <summary>
    /// The example's content rows, then one query row per predicted token (in position order), with
    /// position ids, ranks and labels as the file's header says. Token types: the query row takes its
    /// target's segment.
    /// </summary>
    public (Example Example, MaskedExample Masked) Build(Example e, Random rng)
    {
        int n = e.Length;
        var text = Enumerable.Range(0, n).Where(i => !e.Special[i]).ToArray();
        var order = (int[])text.Clone();
        rng.Shuffle(order);
        var rank = new int[n];
        for (int k = 0; k < order.Length; k++) rank[order[k]] = k + 1;
        int predicted = order.Length == 0 ? 0 : Predicted(order.Length);
        var targets = order[^predicted..].Order().ToArray();

        int total = n + targets.Length;
        var ids = new int[total];
        var labels = Enumerable.Repeat(ExampleGenerator.IgnoreLabel, total).ToArray();
        var positions = new int[total];
        var keyRanks = new int[total];
        var queryRanks = new int[total];
        var types = new int[total];
        for (int i = 0; i < n; i++)
        {
            ids[i] = e.Ids[i];
            positions[i] = i;
            keyRanks[i] = queryRanks[i] = rank[i];
            types[i] = e.TokenTypes[i];
        }
        for (int q = 0; q < targets.Length; q++)
        {
            int p = targets[q], row = n + q;
            ids[row] = special.Mask;
            labels[row] = e.Ids[p];
            positions[row] = p;
            keyRanks[row] = BertInputs.NeverSeen;
            queryRanks[row] = rank[p] - 1;
            types[row] = e.TokenTypes[p];
        }
        var specials = new bool[total];
        e.Special.CopyTo(specials, 0);
        var example = new Example(ids, types, new bool[total], new bool[total], specials, ExampleGenerator.IgnoreLabel);
        return (example, new MaskedExample(ids, labels) { PositionIds = positions, KeyRanks = keyRanks, QueryRanks = queryRanks });
    }
}
