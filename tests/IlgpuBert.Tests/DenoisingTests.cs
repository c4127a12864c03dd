// BART's noising functions (Denoising.cs) on constructed texts, the seq2seq sequence they build, and
// the denoising objective through PretrainingData.
using IlgpuBert.Pretraining;

namespace IlgpuBert.Tests;

public class DenoisingTests
{
    private const int Mask = 4, Stop = 9; // [MASK] and "." in the constructed texts; words are ≥ 100
    private static readonly SpecialIds Special = new(0, 1, 2, 3, Mask);

    private static Denoiser With(params NoiseFunction[] noise) => new(Special, [Stop], noise);

    private static int[] Words(int n, int from = 100) => [.. Enumerable.Range(from, n)];

    /// <summary>Whether a is b with elements left out (in order).</summary>
    internal static bool IsSubsequence(int[] a, int[] b)
    {
        int j = 0;
        foreach (int x in a)
        {
            while (j < b.Length && b[j] != x) j++;
            if (j == b.Length) return false;
            j++;
        }
        return true;
    }

    [Fact]
    public void Token_deletion_drops_about_30_percent_and_keeps_the_order()
    {
        var x = Words(4000);
        var y = Denoiser.Delete(x, new Random(1));
        Assert.True(IsSubsequence(y, x));
        Assert.InRange(1 - (double)y.Length / x.Length, 0.27, 0.33);
        Assert.DoesNotContain(Mask, y);
    }

    [Fact]
    public void Token_masking_replaces_about_30_percent_in_place()
    {
        var x = Words(4000);
        var y = With(NoiseFunction.TokenMasking).MaskTokens(x, new Random(2));
        Assert.Equal(x.Length, y.Length);
        Assert.All(Enumerable.Range(0, x.Length), i => Assert.True(y[i] == x[i] || y[i] == Mask));
        Assert.InRange(y.Count(t => t == Mask) / (double)x.Length, 0.27, 0.33);
    }

    [Fact]
    public void Poisson_draws_have_the_mean_and_the_zero_share_of_lambda_3()
    {
        var rng = new Random(3);
        var k = Enumerable.Range(0, 40_000).Select(_ => Denoiser.Poisson(rng, 3)).ToArray();
        Assert.InRange(k.Average(), 2.95, 3.05);
        Assert.InRange(k.Count(v => v == 0) / (double)k.Length, Math.Exp(-3) - 0.006, Math.Exp(-3) + 0.006);
    }

    /// <summary>
    /// Text infilling covers exactly 30 % of the tokens with spans. Each run of covered tokens becomes
    /// one [MASK], so the spans (mean 3, merged where they touch) leave far fewer masks than tokens
    /// removed. Zero-length spans insert a [MASK] between kept tokens.
    /// </summary>
    [Fact]
    public void Text_infilling_replaces_each_span_by_one_mask()
    {
        var x = Words(3000);
        var y = With(NoiseFunction.TextInfilling).Infill(x, new Random(4));
        var kept = y.Where(t => t != Mask).ToArray();
        Assert.True(IsSubsequence(kept, x));
        Assert.Equal(900, x.Length - kept.Length);
        int masks = y.Length - kept.Length;
        Assert.InRange(masks, 150, 330); // ~300 spans of mean 3 drawn, fewer after merging, plus ~5 % insertions
        // Where a mask stands for a span, the kept tokens around it are not neighbours in x; an
        // inserted mask (a zero-length span) sits between neighbours. Both happen.
        int spans = 0, insertions = 0;
        for (int i = 1; i + 1 < y.Length; i++)
            if (y[i] == Mask && y[i - 1] != Mask && y[i + 1] != Mask)
            {
                if (y[i + 1] == y[i - 1] + 1) insertions++;
                else spans++;
            }
        Assert.True(spans > 100 && insertions > 0, $"{spans} span masks, {insertions} inserted");
    }

    [Fact]
    public void Sentence_permutation_shuffles_whole_sentences()
    {
        // Ten sentences of 1-6 words, each ending in ".", and a last one without the stop.
        var sentences = Enumerable.Range(0, 10).Select(s => (int[])[.. Words(1 + s % 6, 100 + 10 * s), Stop]).Append(Words(3, 500)).ToArray();
        int[] x = [.. sentences.SelectMany(s => s)];
        var y = With(NoiseFunction.SentencePermutation).PermuteSentences(x, new Random(5));
        Assert.Equal(x.Length, y.Length);
        Assert.NotEqual(x, y);
        // y is the same sentences, each intact, in another order.
        var rest = sentences.ToList();
        for (int i = 0; i < y.Length;)
        {
            var s = rest.FirstOrDefault(c => y.AsSpan(i).StartsWith(c));
            Assert.NotNull(s);
            rest.Remove(s);
            i += s.Length;
        }
        Assert.Empty(rest);
    }

    [Fact]
    public void Document_rotation_starts_at_a_drawn_token()
    {
        var x = Words(50);
        var starts = new HashSet<int>();
        for (int seed = 0; seed < 40; seed++)
        {
            var y = Denoiser.Rotate(x, new Random(seed));
            int k = y[0] - 100;
            Assert.Equal([.. x[k..], .. x[..k]], y);
            starts.Add(k);
        }
        Assert.True(starts.Count > 20, $"only {starts.Count} starts in 40 draws");
    }

    /// <summary>
    /// [CLS] corrupted [SEP] original [SEP]: the source (segment 0) is the attention prefix, the
    /// target (segment 1) the original text; every label is the next token, from the source's [SEP]
    /// to the target's last token, and nothing else is predicted.
    /// </summary>
    [Fact]
    public void The_sequence_puts_the_corrupted_source_before_the_original_target_and_labels_the_next_token()
    {
        int[] text = [.. Words(12), Stop, .. Words(9, 200), Stop];
        int[] ids = [Special.Cls, .. text, Special.Sep];
        var e = new Example(ids, new int[ids.Length], new bool[ids.Length], new bool[ids.Length],
            ids.Select((_, i) => i == 0 || i == ids.Length - 1).ToArray(), ExampleGenerator.IgnoreLabel);
        var denoiser = With(NoiseFunction.TextInfilling, NoiseFunction.SentencePermutation);
        const int seqLen = 64;
        var (built, masked, prefix) = denoiser.Build(e, seqLen, new Random(6));
        var source = built.Ids[1..(prefix - 1)];
        Assert.Equal(Special.Cls, built.Ids[0]);
        Assert.Equal(Special.Sep, built.Ids[prefix - 1]);
        Assert.Equal([.. text, Special.Sep], built.Ids[prefix..]);
        Assert.Equal(denoiser.Corrupt(text, new Random(6)), source);
        Assert.Contains(Mask, source);
        Assert.True(built.Length <= seqLen);
        Assert.Equal(built.Ids, masked.InputIds);
        for (int p = 0; p < built.Length; p++)
        {
            Assert.Equal(p < prefix ? 0 : 1, built.TokenTypes[p]);
            Assert.Equal(p >= prefix - 1 && p < built.Length - 1 ? built.Ids[p + 1] : -100, masked.Labels[p]);
        }
        // A text longer than fits is cut to Denoiser.OriginalLength.
        var (cut, _, cutPrefix) = denoiser.Build(e, 24, new Random(7));
        Assert.Equal(Denoiser.OriginalLength(24) + 1, cut.Length - cutPrefix);
    }

    [Fact]
    public void Noise_names_parse_and_unknown_ones_are_refused()
    {
        Assert.Equal([NoiseFunction.TokenDeletion, NoiseFunction.DocumentRotation, NoiseFunction.TextInfilling],
            Denoiser.Parse(["token-deletion,document-rotation", "text-infilling"]));
        var error = Assert.Throws<ArgumentException>(() => Denoiser.Parse(["shuffle"]));
        Assert.Contains("token-masking", error.Message);
        Assert.Throws<ArgumentException>(() => With(NoiseFunction.TokenMasking, NoiseFunction.TokenMasking));
    }
}
