// XLNet's permutation LM (PermutationLm.cs) and UniLMv2's pseudo-masked LM (PseudoMaskedLm.cs): the
// rows they build on constructed examples, and through a real model that a query row's output does
// not depend on what it must not see.
using IlgpuBert.Autograd;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class PermutationTests
{
    private const int Mask = 4, Vocab = 60;
    private static readonly SpecialIds Special = new(0, 1, 2, 3, Mask);

    /// <summary>[CLS] a… [SEP] b… [SEP] with word ids from 10, segment 1 after the first [SEP].</summary>
    private static Example Pair(int a, int b)
    {
        int[] ids = [Special.Cls, .. Enumerable.Range(10, a), Special.Sep, .. Enumerable.Range(10 + a, b), Special.Sep];
        var types = ids.Select((_, i) => i > a + 1 ? 1 : 0).ToArray();
        var special = ids.Select(id => id == Special.Cls || id == Special.Sep).ToArray();
        return new Example(ids, types, new bool[ids.Length], new bool[ids.Length], special, ExampleGenerator.IgnoreLabel);
    }

    /// <summary>The rows as one batch row: the model's view of them.</summary>
    private static BertInputs Inputs(Example e, MaskedExample m) =>
        new(1, e.Length, m.InputIds, e.TokenTypes, Enumerable.Repeat(1, e.Length).ToArray(), m.Labels)
        {
            PositionIds = m.PositionIds, KeyRanks = m.KeyRanks, QueryRanks = m.QueryRanks,
        };

    /// <summary>Whether row i of the built rows sees row j (the attention rule on BertInputs' ranks).</summary>
    private static bool Sees(MaskedExample m, int i, int j) => m.KeyRanks![j] != BertInputs.NeverSeen && m.KeyRanks[j] <= m.QueryRanks![i];

    [Fact]
    public void Permutation_ranks_the_text_by_a_sampled_order_and_queries_its_last_sixth()
    {
        var e = Pair(13, 11); // 24 text tokens: ⌈24 / 6⌉ = 4 query rows
        var lm = new PermutationLm(Special);
        var orders = new HashSet<string>();
        for (int seed = 0; seed < 20; seed++)
        {
            var (built, m) = lm.Build(e, new Random(seed));
            int n = e.Length, text = 24, queries = PermutationLm.Predicted(text);
            Assert.Equal(4, queries);
            Assert.Equal(n + queries, built.Length);
            Assert.Equal(e.Ids, m.InputIds[..n]);
            // Content rows: the specials rank 0, the text a permutation of 1..24, every row its own key rank.
            var textRanks = Enumerable.Range(0, n).Where(i => !e.Special[i]).Select(i => m.KeyRanks![i]).ToArray();
            Assert.Equal(Enumerable.Range(1, text), textRanks.Order());
            Assert.All(Enumerable.Range(0, n).Where(i => e.Special[i]), i => Assert.Equal(0, m.KeyRanks![i]));
            Assert.Equal(m.KeyRanks![..n], m.QueryRanks![..n]);
            Assert.Equal(Enumerable.Range(0, n), m.PositionIds![..n]);
            Assert.All(m.Labels[..n], l => Assert.Equal(-100, l));
            orders.Add(string.Join(",", textRanks));
            // Query rows: the targets are the last four of the order, in position order.
            var targets = m.PositionIds[n..];
            Assert.Equal(targets.Order(), targets);
            Assert.All(targets, p => Assert.True(m.KeyRanks[p] > text - queries, $"position {p} (rank {m.KeyRanks[p]}) is not in the last sixth"));
            for (int q = n; q < built.Length; q++)
            {
                int p = m.PositionIds[q];
                Assert.Equal(Mask, m.InputIds[q]);
                Assert.Equal(e.Ids[p], m.Labels[q]);
                Assert.Equal(e.TokenTypes[p], built.TokenTypes[q]);
                Assert.Equal(BertInputs.NeverSeen, m.KeyRanks[q]);
                // The query stream sees exactly the content ranked before its target: never its own token.
                Assert.False(Sees(m, q, p));
                for (int j = 0; j < built.Length; j++)
                    Assert.Equal(j < n && m.KeyRanks[j] < m.KeyRanks[p], Sees(m, q, j));
            }
            // The content stream sees its own rank and below (XLNet's h), and no query row.
            for (int i = 0; i < n; i++)
                for (int j = 0; j < built.Length; j++)
                    Assert.Equal(j < n && m.KeyRanks[j] <= m.KeyRanks[i], Sees(m, i, j));
        }
        Assert.Equal(20, orders.Count);
        Assert.True(PermutationLm.ExampleLength(128) + PermutationLm.Predicted(PermutationLm.ExampleLength(128) - 2) <= 128);
        Assert.True(PermutationLm.ExampleLength(128) + 1 + PermutationLm.Predicted(PermutationLm.ExampleLength(128) - 1) > 128);
    }

    [Fact]
    public void Pseudo_masks_predict_spans_in_a_sampled_order_and_mlm_at_the_masks()
    {
        var e = Pair(30, 25); // 55 text tokens: round(0.15 · 55) = 8 masked
        var lm = new PseudoMaskedLm(Special, 0.15, Vocab, replaceWithMask: 1, replaceWithRandom: 0); // every [M] a [MASK]; BERT's mix below
        int longSpans = 0;
        for (int seed = 0; seed < 20; seed++)
        {
            var spans = lm.Spans(e, new Random(seed));
            Assert.Equal(8, spans.Sum(s => s.Length));
            Assert.All(spans, s => Assert.Equal(Enumerable.Range(s[0], s.Length), s)); // contiguous
            Assert.All(spans.SelectMany(s => s), p => Assert.False(e.Special[p]));
            Assert.Equal(spans.SelectMany(s => s).Distinct().Count(), spans.Sum(s => s.Length));
            longSpans += spans.Count(s => s.Length > 1);

            var (built, m) = lm.Build(e, new Random(seed));
            int n = e.Length;
            var masked = spans.SelectMany(s => s).ToHashSet();
            // In place: [M] at the spans (labelled: the autoencoding part), the context as it was; all rank 0.
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(masked.Contains(i) ? Mask : e.Ids[i], m.InputIds[i]);
                Assert.Equal(masked.Contains(i) ? e.Ids[i] : -100, m.Labels[i]);
                Assert.Equal((0, 0, i), (m.KeyRanks![i], m.QueryRanks![i], m.PositionIds![i]));
            }
            // Appended, span by span in position order: [P]s (never seen, query rank k − 1) then, but
            // for the last span of the order, the originals (rank k).
            var rankOf = new Dictionary<int, int>();
            int row = n;
            foreach (var span in spans)
            {
                int k = m.QueryRanks![row] + 1;
                Assert.DoesNotContain(k, rankOf.Values);
                foreach (int p in span)
                {
                    rankOf[p] = k;
                    Assert.Equal((Mask, e.Ids[p], p, BertInputs.NeverSeen, k - 1), (m.InputIds[row], m.Labels[row], m.PositionIds![row], m.KeyRanks![row], m.QueryRanks[row]));
                    row++;
                }
                if (k == spans.Count) continue;
                foreach (int p in span)
                {
                    Assert.Equal((e.Ids[p], -100, p, k, k), (m.InputIds[row], m.Labels[row], m.PositionIds![row], m.KeyRanks![row], m.QueryRanks[row]));
                    row++;
                }
            }
            Assert.Equal(built.Length, row);
            Assert.Equal(Enumerable.Range(1, spans.Count), rankOf.Values.Distinct().Order());
            // Visibility: a [P] sees the context, the [M]s and the originals of the spans before its own, nothing else.
            for (int q = n; q < built.Length; q++)
                if (m.KeyRanks![q] == BertInputs.NeverSeen)
                    for (int j = 0; j < built.Length; j++)
                        Assert.Equal(j < n || (m.KeyRanks[j] != BertInputs.NeverSeen && m.KeyRanks[j] < rankOf[m.PositionIds![q]]), Sees(m, q, j));
            // The text's rows never see an appended row.
            for (int i = 0; i < n; i++)
                for (int j = n; j < built.Length; j++)
                    Assert.False(Sees(m, i, j));
        }
        Assert.True(longSpans > 10, $"only {longSpans} spans of two or more tokens");
        Assert.True(lm.ExampleLength(128) + 2 * lm.Budget(lm.ExampleLength(128) - 2) <= 128);

        // BERT's 80/10/10 at the [M] positions (the autoencoding part); the [P]s stay [MASK].
        var mixed = new PseudoMaskedLm(Special, 0.15, Vocab);
        int masks = 0, kept = 0, total = 0;
        for (int seed = 0; seed < 200; seed++)
        {
            var (built, m) = mixed.Build(e, new Random(seed));
            for (int i = 0; i < e.Length; i++)
                if (m.Labels[i] != -100)
                {
                    total++;
                    if (m.InputIds[i] == Mask) masks++;
                    else if (m.InputIds[i] == e.Ids[i]) kept++;
                }
            Assert.All(Enumerable.Range(e.Length, built.Length - e.Length).Where(j => m.Labels[j] != -100), j => Assert.Equal(Mask, m.InputIds[j]));
        }
        Assert.InRange(masks / (double)total, 0.76, 0.84);
        Assert.InRange(kept / (double)total, 0.07, 0.14); // 10 %, and a random piece that happens to be the original
    }

    /// <summary>
    /// Through a real model: a query row's hidden state is the same, bit for bit, whatever the token
    /// it predicts is (XLNet: the query stream has no content of its own token), while the content
    /// rows that may see that token change. Likewise a [P] row and its span's original tokens.
    /// </summary>
    [Fact]
    public void A_query_row_does_not_depend_on_the_token_it_predicts()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = BertConfig.ForSize("tiny", Vocab) with { MaxPositionEmbeddings = 64 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(3);
        float[] Hidden(BertInputs x)
        {
            using var tape = new Tape(recording: false);
            return model.Forward(tape, x, Dropouts.Off).LastHiddenState.Value.ToHost();
        }
        float[] Row(float[] h, int r) => h[(r * config.HiddenSize)..((r + 1) * config.HiddenSize)];
        var e = Pair(20, 18);

        var (built, m) = new PermutationLm(Special).Build(e, new Random(5));
        int n = e.Length, q = n, p = m.PositionIds![q];
        var before = Hidden(Inputs(built, m));
        var changed = (int[])m.InputIds.Clone();
        changed[p] = 50; // the content row of the query's own target
        var after = Hidden(Inputs(built, m with { InputIds = changed }));
        Assert.Equal(Row(before, q), Row(after, q));
        Assert.NotEqual(Row(before, p), Row(after, p));
        // A query row does see the content ranked before its target: changing it changes the query.
        int earlier = Enumerable.Range(0, n).First(j => !e.Special[j] && m.KeyRanks![j] < m.KeyRanks[p]);
        changed = (int[])m.InputIds.Clone();
        changed[earlier] = 50;
        Assert.NotEqual(Row(before, q), Row(Hidden(Inputs(built, m with { InputIds = changed })), q));

        var (pb, pm) = new PseudoMaskedLm(Special, 0.15, Vocab).Build(e, new Random(5));
        // The first span of the order (rank 1): its [P] rows query rank 0, its originals rank 1.
        var own = Enumerable.Range(n, pb.Length - n).Where(j => pm.KeyRanks![j] == BertInputs.NeverSeen && pm.QueryRanks![j] == 0).ToArray();
        var later = Enumerable.Range(n, pb.Length - n).Where(j => pm.KeyRanks![j] == BertInputs.NeverSeen && pm.QueryRanks![j] > 0).ToArray();
        Assert.NotEmpty(own);
        Assert.NotEmpty(later);
        before = Hidden(Inputs(pb, pm));
        changed = (int[])pm.InputIds.Clone();
        for (int j = n; j < pb.Length; j++)
            if (pm.KeyRanks![j] == 1) changed[j] = 50;
        after = Hidden(Inputs(pb, pm with { InputIds = changed }));
        Assert.All(own, j => Assert.Equal(Row(before, j), Row(after, j)));
        Assert.All(later, j => Assert.NotEqual(Row(before, j), Row(after, j))); // the spans after it see those originals
        for (int i = 0; i < n; i++) Assert.Equal(Row(before, i), Row(after, i)); // the text never sees them
    }
}
