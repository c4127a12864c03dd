using IlgpuBert.Pretraining;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

/// <summary>The pretraining example generator and masking strategies (rates, spans, word boundaries, label balance).</summary>
public class PretrainingDataTests
{
    private static readonly SpecialIds Special = new(0, 1, 2, 3, 4);

    /// <summary>
    /// Synthetic documents whose token ids encode where they came from: 10000 + doc·100 + sentence,
    /// so tests can check order and provenance. Every third token continues a word; words whose
    /// index is a multiple of 5 are capitalised.
    /// </summary>
    private static List<Document> Documents(int count, int sentences, Random rng) =>
        Enumerable.Range(0, count).Select(d => new Document(Enumerable.Range(0, sentences).Select(s =>
        {
            int n = rng.Next(4, 10);
            var ids = Enumerable.Repeat(10000 + d * 100 + s, n).ToArray();
            var starts = Enumerable.Range(0, n).Select(i => i % 3 != 2).ToArray();
            var caps = Enumerable.Range(0, n).Select(i => (i / 3) % 5 == 0).ToArray();
            return new Sentence(ids, starts, caps);
        }).ToArray())).ToList();

    private static (int Doc, int Sentence) Source(int id) => ((id - 10000) / 100, (id - 10000) % 100);

    private static (int[] A, int[] B) Segments(Example e)
    {
        int firstSep = Array.IndexOf(e.Ids, Special.Sep);
        return (e.Ids[1..firstSep], e.Ids[(firstSep + 1)..^1]);
    }

    [Fact]
    public void Raw_text_splits_into_documents_sentences_and_words_with_their_flags()
    {
        var docs = PretrainingCorpus.SplitDocuments(["Gets the Value. Returns a", "collection! 3 items", "", "", "Second doc? Yes."]).ToList();
        Assert.Equal(2, docs.Count);
        Assert.Equal(["Gets the Value.", "Returns a collection!", "3 items"], docs[0]);
        Assert.Equal(["Second doc?", "Yes."], docs[1]);

        using var dir = new TempDir();
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(["gets", "the", "value", "val", "##ue", "."]));
        var s = PretrainingCorpus.Tokenize(BertTextEncoder.FromVocab(dir.File("vocab.txt")), "Gets the Value.");
        Assert.Equal([5, 6, 7, 10], s.Ids);
        Assert.Equal([true, true, true, true], s.WordStart);
        Assert.Equal([true, false, true, false], s.Capitalized);
    }

    public static TheoryData<SentenceObjective> Objectives() => new(SentenceObjective.Nsp, SentenceObjective.Sop, SentenceObjective.PrevNext);

    [Theory]
    [MemberData(nameof(Objectives))]
    public void Sentence_objectives_have_balanced_labels_and_the_right_segments(SentenceObjective objective)
    {
        var rng = new Random(1);
        var docs = Documents(300, 30, rng);
        var gen = new ExampleGenerator(Special, 64, objective, InputFormat.Pairs);
        var examples = gen.Generate(docs, rng);
        Assert.True(examples.Count > 900, $"{examples.Count} examples");
        int classes = gen.SentenceClasses;
        var counts = Enumerable.Range(0, classes).Select(c => examples.Count(e => e.SentenceLabel == c) / (double)examples.Count).ToArray();
        foreach (var share in counts) Assert.InRange(share, 1.0 / classes - 0.06, 1.0 / classes + 0.06);
        foreach (var e in examples)
        {
            Assert.True(e.Length <= 64);
            Assert.Equal(Special.Cls, e.Ids[0]);
            Assert.Equal(Special.Sep, e.Ids[^1]);
            var (a, b) = Segments(e);
            Assert.NotEmpty(a);
            Assert.NotEmpty(b);
            Assert.All(e.TokenTypes[..(a.Length + 2)], t => Assert.Equal(0, t));
            Assert.All(e.TokenTypes[(a.Length + 2)..], t => Assert.Equal(1, t));
            var sa = a.Select(Source).ToArray();
            var sb = b.Select(Source).ToArray();
            bool random = objective == SentenceObjective.Nsp ? e.SentenceLabel == 1 : e.SentenceLabel == 2;
            if (random)
                Assert.NotEqual(sa[0].Doc, sb[0].Doc);
            else
            {
                Assert.All(sa.Concat(sb), s => Assert.Equal(sa[0].Doc, s.Doc));
                bool swapped = e.SentenceLabel == 1;
                // In order: everything in A comes no later than B; swapped: the reverse.
                if (swapped) Assert.True(sa.Min(s => s.Sentence) >= sb.Max(s => s.Sentence));
                else Assert.True(sa.Max(s => s.Sentence) <= sb.Min(s => s.Sentence));
            }
        }
    }

    [Fact]
    public void About_a_tenth_of_pair_examples_target_a_shorter_length()
    {
        var rng = new Random(2);
        var gen = new ExampleGenerator(Special, 128, SentenceObjective.Nsp, InputFormat.Pairs);
        var examples = gen.Generate(Documents(200, 80, rng), rng);
        double shortShare = examples.Count(e => e.Length < 100) / (double)examples.Count;
        // 10% short targets, plus document tails (one per document) make up the rest.
        Assert.InRange(shortShare, 0.08, 0.25);
    }

    [Fact]
    public void No_objective_gives_single_segments_and_full_sentences_cross_documents()
    {
        var rng = new Random(3);
        var docs = Documents(10, 6, rng);
        var single = new ExampleGenerator(Special, 40, SentenceObjective.None, InputFormat.Pairs).Generate(docs, rng);
        Assert.All(single, e =>
        {
            Assert.Equal(-100, e.SentenceLabel);
            Assert.DoesNotContain(1, e.TokenTypes);
            Assert.Equal(2, e.Ids.Count(i => i == Special.Sep) + 1);
        });
        var full = new ExampleGenerator(Special, 40, SentenceObjective.None, InputFormat.FullSentences).Generate(docs, rng);
        Assert.All(full, e => Assert.True(e.Length <= 40));
        // Some example spans two documents, with a [SEP] at the boundary.
        Assert.Contains(full, e =>
        {
            var inner = e.Ids[1..^1];
            int sep = Array.IndexOf(inner, Special.Sep);
            return sep > 0 && Source(inner[sep - 1]).Doc != Source(inner[sep + 1]).Doc;
        });
        Assert.Equal(docs.Sum(d => d.Sentences.Sum(s => s.Length)), full.Sum(e => e.Ids.Count(i => i >= 10000)));
        Assert.Throws<ArgumentException>(() => new ExampleGenerator(Special, 40, SentenceObjective.Nsp, InputFormat.FullSentences).Generate(docs, rng));
    }

    private static List<Example> SomeExamples(int seed = 4) =>
        new ExampleGenerator(Special, 96, SentenceObjective.Nsp, InputFormat.Pairs).Generate(Documents(40, 20, new Random(seed)), new Random(seed));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Token_masking_hits_the_rate_and_the_mix_and_never_specials(bool unk)
    {
        var masker = new Masker(new MaskingOptions { MaskWithUnk = unk }, Special, 1000);
        var rng = new Random(5);
        long candidates = 0, masked = 0, asMask = 0, asRandom = 0, kept = 0;
        foreach (var e in SomeExamples())
        {
            var m = masker.Apply(e, rng);
            int n = e.Special.Count(s => !s);
            int count = m.Labels.Count(l => l != -100);
            Assert.Equal(Math.Max(1, (int)Math.Round(n * 0.15)), count);
            candidates += n;
            masked += count;
            for (int p = 0; p < e.Length; p++)
            {
                if (m.Labels[p] == -100) { Assert.Equal(e.Ids[p], m.InputIds[p]); continue; }
                Assert.False(e.Special[p]);
                Assert.Equal(e.Ids[p], m.Labels[p]);
                if (m.InputIds[p] == (unk ? Special.Unk : Special.Mask)) asMask++;
                else if (m.InputIds[p] == e.Ids[p]) kept++;
                else asRandom++;
            }
        }
        Assert.InRange(masked / (double)candidates, 0.14, 0.16);
        Assert.InRange(asMask / (double)masked, 0.77, 0.83);
        Assert.InRange(asRandom / (double)masked, 0.08, 0.12);
        Assert.InRange(kept / (double)masked, 0.08, 0.12);
    }

    [Theory]
    [InlineData(MaskingStrategy.WholeWord)]
    [InlineData(MaskingStrategy.Span)]
    [InlineData(MaskingStrategy.Phrase)]
    public void Word_level_strategies_never_split_a_word(MaskingStrategy strategy)
    {
        var masker = new Masker(new MaskingOptions { Strategy = strategy }, Special, 1000);
        var rng = new Random(6);
        long masked = 0, candidates = 0;
        foreach (var e in SomeExamples())
        {
            var m = masker.Apply(e, rng);
            foreach (var word in Masker.Words(e))
            {
                var hit = word.Select(p => m.Labels[p] != -100).Distinct().ToList();
                Assert.Single(hit); // all pieces of the word masked, or none
            }
            masked += m.Labels.Count(l => l != -100);
            candidates += e.Special.Count(s => !s);
        }
        Assert.InRange(masked / (double)candidates, 0.12, 0.16); // whole units cannot always fill the budget exactly
    }

    [Fact]
    public void Span_lengths_follow_spanbert_and_spans_are_contiguous()
    {
        var masker = new Masker(new MaskingOptions { Strategy = MaskingStrategy.Span }, Special, 1000);
        var rng = new Random(7);
        var lengths = Enumerable.Range(0, 40000).Select(_ => masker.SpanLength(rng)).ToArray();
        Assert.InRange(lengths.Average(), 3.72, 3.88);                          // SpanBERT: mean 3.8
        Assert.Equal(10, lengths.Max());
        Assert.Equal(1, lengths.Min());
        Assert.InRange(lengths.Count(l => l == 1) / 40000.0, 0.214, 0.234);     // 0.2 / (1 − 0.8¹⁰)

        // Masked words come in runs: far fewer runs than masked words.
        long runs = 0, maskedWords = 0;
        foreach (var e in SomeExamples(8))
        {
            var m = masker.Apply(e, rng);
            var words = Masker.Words(e);
            bool previous = false;
            foreach (var w in words)
            {
                bool hit = m.Labels[w[0]] != -100;
                if (hit) { maskedWords++; if (!previous) runs++; }
                previous = hit;
            }
        }
        Assert.True(maskedWords / (double)runs > 2.0, $"{maskedWords} masked words in {runs} runs");
    }

    [Fact]
    public void Phrase_masking_masks_listed_phrases_and_capitalised_runs_together()
    {
        // Words: [10 11] [12] [13] [14 15] [16] ; phrase = words "12 13"; capitalised run = words 3 and 4.
        var e = new Example([2, 10, 11, 12, 13, 14, 15, 16, 3], new int[9],
            [false, true, false, true, true, true, false, true, false],
            [false, false, false, false, false, true, true, true, false],
            [true, false, false, false, false, false, false, false, true], -100);
        var table = PhraseTable.FromPhrases([[[12], [13]]]);
        var masker = new Masker(new MaskingOptions { Strategy = MaskingStrategy.Phrase, Rate = 0.5 }, Special, 100, table);
        var rng = new Random(9);
        for (int trial = 0; trial < 200; trial++)
        {
            var m = masker.Apply(e, rng);
            Assert.Equal(m.Labels[3] != -100, m.Labels[4] != -100);                                  // listed phrase
            Assert.True(m.Labels[5] != -100 == (m.Labels[6] != -100) && m.Labels[6] != -100 == (m.Labels[7] != -100)); // capitalised run
        }
        var frequent = PhraseTable.FromPhrases([]).WithFrequentNgrams(Enumerable.Repeat(e, 5), minCount: 5);
        Assert.True(frequent.Count > 0);
        Assert.Equal(3, frequent.MatchAt(e, Masker.Words(e), 0));
    }

    [Fact]
    public void Static_masks_repeat_after_their_copies_and_dynamic_masks_do_not()
    {
        var e = SomeExamples()[0];
        int[] Labels(Masker m, int epoch) => m.Apply(e, m.StreamFor(42, 7, epoch)).Labels;
        var fixedMasks = new Masker(new MaskingOptions { Schedule = MaskSchedule.Static, StaticCopies = 3 }, Special, 1000);
        Assert.Equal(Labels(fixedMasks, 1), Labels(fixedMasks, 4));
        Assert.NotEqual(Labels(fixedMasks, 1), Labels(fixedMasks, 2));
        var dynamic = new Masker(new MaskingOptions { Schedule = MaskSchedule.Dynamic }, Special, 1000);
        var distinct = Enumerable.Range(0, 6).Select(ep => string.Join(",", Labels(dynamic, ep))).Distinct().Count();
        Assert.Equal(6, distinct);
        Assert.Equal(Labels(dynamic, 2), Labels(dynamic, 2)); // reproducible
    }

    [Fact]
    public void Mask_mix_is_parsed_and_checked()
    {
        var o = new MaskingOptions().WithMix("0.9,0.05,0.05");
        Assert.Equal((0.9, 0.05), (o.ReplaceWithMask, o.ReplaceWithRandom));
        Assert.Throws<ArgumentException>(() => new MaskingOptions().WithMix("0.8,0.1"));
        Assert.Throws<ArgumentException>(() => new MaskingOptions().WithMix("0.8,0.3,0.1"));
    }
}
