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
    public void Sentence_distance_labels_are_balanced_and_say_where_B_comes_from()
    {
        var rng = new Random(11);
        var gen = new ExampleGenerator(Special, 64, SentenceObjective.Distance, InputFormat.Pairs);
        Assert.Equal(3, gen.SentenceClasses);
        var examples = gen.Generate(Documents(300, 30, rng), rng);
        Assert.True(examples.Count > 900, $"{examples.Count} examples");
        for (int c = 0; c < 3; c++)
            Assert.InRange(examples.Count(e => e.SentenceLabel == c) / (double)examples.Count, 1.0 / 3 - 0.06, 1.0 / 3 + 0.06);
        int adjacent = 0;
        foreach (var e in examples)
        {
            var (a, b) = Segments(e);
            var sa = a.Select(Source).ToArray();
            var sb = b.Select(Source).ToArray();
            Assert.All(sa, x => Assert.Equal(sa[0].Doc, x.Doc));
            Assert.All(sb, x => Assert.Equal(sb[0].Doc, x.Doc));
            int aFirst = sa.Min(x => x.Sentence), aLast = sa.Max(x => x.Sentence), bFirst = sb.Min(x => x.Sentence), bLast = sb.Max(x => x.Sentence);
            switch (e.SentenceLabel)
            {
                case 0: // B continues A (truncation may drop a boundary sentence's tokens)
                    Assert.Equal(sa[0].Doc, sb[0].Doc);
                    Assert.True(bFirst >= aLast, $"B ({bFirst}) before A ({aLast})");
                    if (bFirst - aLast <= 1) adjacent++;
                    break;
                case 1: // same document, not touching A on either side
                    Assert.Equal(sa[0].Doc, sb[0].Doc);
                    Assert.True(bFirst >= aLast + 2 || bLast <= aFirst - 2, $"A {aFirst}–{aLast}, B {bFirst}–{bLast}");
                    break;
                default:
                    Assert.NotEqual(sa[0].Doc, sb[0].Doc);
                    break;
            }
        }
        Assert.True(adjacent >= 0.95 * examples.Count(e => e.SentenceLabel == 0), $"{adjacent} adjacent");
    }

    [Fact]
    public void Reorder_classes_enumerate_the_orders_of_one_to_three_segments()
    {
        Assert.Equal(9, ExampleGenerator.ReorderClasses);
        Assert.Equal([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], ExampleGenerator.Permutations(3));
        Assert.Equal(0, ExampleGenerator.ReorderClass([0]));
        Assert.Equal([1, 2], new[] { ExampleGenerator.ReorderClass([0, 1]), ExampleGenerator.ReorderClass([1, 0]) });
        Assert.Equal(Enumerable.Range(3, 6), ExampleGenerator.Permutations(3).Select(ExampleGenerator.ReorderClass));
    }

    [Fact]
    public void Reordered_examples_show_their_segments_in_the_order_the_label_names()
    {
        var rng = new Random(12);
        var gen = new ExampleGenerator(Special, 64, SentenceObjective.Reorder, InputFormat.Pairs);
        Assert.Equal(9, gen.SentenceClasses);
        var examples = gen.Generate(Documents(200, 30, rng), rng);
        var bySegments = new int[4];
        var classes = new int[9];
        foreach (var e in examples)
        {
            Assert.True(e.Length <= 64);
            Assert.Equal(Special.Cls, e.Ids[0]);
            Assert.Equal(Special.Sep, e.Ids[^1]);
            // Split at [SEP]: the shown segments, segment ids alternating 0, 1, 0.
            var shown = new List<int[]>();
            for (int start = 1, i = 1; i < e.Length; i++)
                if (e.Ids[i] == Special.Sep)
                {
                    Assert.All(e.TokenTypes[start..(i + 1)], t => Assert.Equal(shown.Count % 2, t));
                    shown.Add(e.Ids[start..i]);
                    start = i + 1;
                }
            int k = shown.Count;
            Assert.InRange(k, 1, 3);
            Assert.All(shown, seg => Assert.NotEmpty(seg));
            int offset = k switch { 1 => 0, 2 => 1, _ => 3 };
            Assert.InRange(e.SentenceLabel, offset, offset + (k == 3 ? 6 : k) - 1);
            bySegments[k]++;
            classes[e.SentenceLabel]++;
            // Undo the permutation the label names: the original text runs in document order.
            var order = ExampleGenerator.Permutations(k)[e.SentenceLabel - offset];
            var original = new int[k][];
            for (int i = 0; i < k; i++) original[order[i]] = shown[i];
            var sources = original.SelectMany(x => x).Select(Source).ToArray();
            Assert.All(sources, x => Assert.Equal(sources[0].Doc, x.Doc));
            for (int i = 1; i < sources.Length; i++) Assert.True(sources[i].Sentence >= sources[i - 1].Sentence, "segments restored to document order");
        }
        for (int k = 1; k <= 3; k++) Assert.InRange(bySegments[k] / (double)examples.Count, 1.0 / 3 - 0.06, 1.0 / 3 + 0.06);
        Assert.All(classes, c => Assert.True(c > 0)); // every order occurs
        // Within k = 3, the six orders are equally likely.
        foreach (int c in classes[3..]) Assert.InRange(c / (double)bySegments[3], 1.0 / 6 - 0.05, 1.0 / 6 + 0.05);
    }

    [Fact]
    public void Contrastive_examples_pair_disjoint_segments_of_one_document()
    {
        var rng = new Random(13);
        var docs = Documents(60, 30, rng);
        docs.Add(new Document([docs[0].Sentences[0]])); // one sentence: no pair
        var gen = new ExampleGenerator(Special, 40, SentenceObjective.Contrastive, InputFormat.Pairs);
        Assert.Equal(0, gen.SentenceClasses);
        var examples = gen.Generate(docs, rng);
        Assert.True(examples.Count > 150, $"{examples.Count} examples");
        foreach (var e in examples)
        {
            var (a, b) = Segments(e);
            Assert.InRange(a.Length, 1, 38); // each segment becomes a row of at most 40 with its [CLS] and [SEP]
            Assert.InRange(b.Length, 1, 38);
            var sa = a.Select(Source).ToArray();
            var sb = b.Select(Source).ToArray();
            Assert.All(sa.Concat(sb), x => Assert.Equal(sa[0].Doc, x.Doc));
            Assert.True(sa.Max(x => x.Sentence) < sb.Min(x => x.Sentence) || sb.Max(x => x.Sentence) < sa.Min(x => x.Sentence), "disjoint sentences");
            Assert.Equal(ExampleGenerator.IgnoreLabel, e.SentenceLabel);
        }
        Assert.Equal(60, examples.Select(e => Source(e.Ids[1]).Doc).Distinct().Count());
    }

    [Fact]
    public void Token_document_labels_mark_tokens_that_occur_in_their_document_outside_the_example()
    {
        // One document of four 3-token sentences; examples of at most 6 tokens take two sentences each.
        Sentence S(params int[] ids) => new(ids, [true, true, true], [false, false, false]);
        var doc = new Document([S(10, 11, 12), S(13, 10, 14), S(15, 16, 17), S(11, 18, 18)]);
        var other = new Document([S(10, 11, 19), S(20, 21, 22)]);
        var gen = new ExampleGenerator(Special, 8, SentenceObjective.None, InputFormat.Pairs, shortSeqProb: 0);
        var examples = gen.Generate([doc, other], new Random(1));
        Assert.Equal(3, examples.Count);
        // 11 also occurs in the other half of its document; 10 twice but both shown; 18 likewise; ids in
        // another document do not count (the second document's 10 and 11 occur nowhere else in it).
        Assert.Equal([2, 10, 11, 12, 13, 10, 14, 3], examples[0].Ids);
        Assert.Equal([false, false, true, false, false, false, false, false], examples[0].ElsewhereInDocument);
        Assert.Equal([2, 15, 16, 17, 11, 18, 18, 3], examples[1].Ids);
        Assert.Equal([false, false, false, false, true, false, false, false], examples[1].ElsewhereInDocument);
        Assert.Equal([2, 10, 11, 19, 20, 21, 22, 3], examples[2].Ids);
        Assert.All(examples[2].ElsewhereInDocument!, Assert.False);
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
