// Tokenization against Hugging Face's own tokenizers library (HfTokenizers.cs): thousands of
// generated strings (every Unicode general category, mixed scripts, emoji sequences, controls,
// special tokens, words around the 100-character limit), single texts and truncated pairs, uncased
// and cased vocabularies, and the whole default corpus: ids, token types and offsets must be
// identical. Plus the cases that were wrong before, spelled out.
using System.Globalization;
using System.Text;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class TokenizerTests
{
    /// <summary>Random strings built from fragments of many kinds; the same seed gives the same strings.</summary>
    public static List<string> Generate(int count, int seed, IReadOnlyList<string> vocabulary)
    {
        var rng = new Random(seed);
        var byCategory = Categories.Value;
        string Cp(int cp) => char.ConvertFromUtf32(cp);
        string Pick(string[] options) => options[rng.Next(options.Length)];
        string Word(int min, int max, Func<string> letter) => string.Concat(Enumerable.Range(0, rng.Next(min, max + 1)).Select(_ => letter()));
        string Lower() => ((char)('a' + rng.Next(26))).ToString();
        string Range(int lo, int hi) => Cp(rng.Next(lo, hi + 1));
        Func<string>[] fragments =
        [
            () => vocabulary[rng.Next(vocabulary.Count)].Replace("##", ""),
            () => vocabulary[rng.Next(vocabulary.Count)].Replace("##", "") + vocabulary[rng.Next(vocabulary.Count)].Replace("##", ""),
            () => Word(1, 9, Lower),
            () => char.ToUpperInvariant(Lower()[0]) + Word(1, 8, Lower),
            () => Word(1, 6, () => Range('0', '9')),
            () => Word(1, 3, () => Range(0x21, 0x7E)),                              // ASCII punctuation, symbols, letters
            () => Word(1, 4, () => Cp(Sample(byCategory, rng))),                     // any general category
            () => Word(2, 8, () => Range(0xC0, 0x24F)),                              // Latin with accents
            () => Word(1, 6, () => Range(0x300, 0x36F)) + Word(1, 3, Lower),         // stray combining marks
            () => Lower() + Range(0x300, 0x36F) + Lower() + Range(0x300, 0x36F),     // decomposed accents
            () => Word(2, 7, () => Range(0x391, 0x3C9)),                             // Greek
            () => Word(2, 7, () => Range(0x410, 0x44F)),                             // Cyrillic
            () => Word(2, 6, () => Range(0x621, 0x64A)),                             // Arabic
            () => Word(2, 6, () => Range(0x905, 0x939)) + Range(0x93E, 0x94C),       // Devanagari with a vowel sign
            () => Word(2, 6, () => Range(0xE01, 0xE2E)),                             // Thai
            () => Word(1, 4, () => Range(0xAC00, 0xD7A3)),                           // Hangul syllables
            () => Word(1, 4, () => Range(0x1100, 0x11FF)),                           // Hangul jamo
            () => Word(1, 5, () => Range(0x3041, 0x30FF)),                           // kana
            () => Word(1, 4, () => Range(0x4E00, 0x9FFF)),                           // CJK
            () => Word(1, 3, () => Range(0x20000, 0x2A6DF)) + Range(0x2B800, 0x2B95F), // CJK extensions, around a range edge
            () => Word(1, 3, () => Range(0x1F300, 0x1FAFF)),                         // emoji
            () => Cp(0x1F468) + "\u200D" + Cp(0x1F469) + "\u200D" + Cp(0x1F467),     // a ZWJ family
            () => Cp(0x1F44D) + Cp(rng.Next(0x1F3FB, 0x1F400)) + "\uFE0F",           // skin tone, variation selector
            () => Cp(0x1F1E9) + Cp(0x1F1EA),                                         // a flag
            () => Pick(["\u0000", "\t", "\n", "\r\n", "\u000B", "\u000C", "\u0085", "\u00A0", "\u2028", "\u2029", "\u200B",
                "\uFEFF", "\uFFFD", "\u3000", "\u202F", "\u00AD", "\u0007", "\u001F", "\u007F", "\uE000", "\u2060"]),
            () => Pick(["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "[MASK", "[[MASK]]", "x[MASK]y", "[SEP][SEP]"]),
            () => Word(95, 110, Lower),                                              // around the 100-character limit
            () => Word(99, 101, () => rng.Next(3) == 0 ? Cp(0x1F600 + rng.Next(40)) : Lower()), // counted in code points
            () => Pick(["İstanbul", "ÉCOLE", "São Paulo", "ﬁnance", "Ǆemal", "ΣΊΣΥΦΟΣ", "ß", "Å", "ǅ", "Ⅻ", "①", "ℌ"]),
            () => Pick(["List<T>.Add(T)", "a + b | $5", "x => x * 2", "#include <stdio.h>", "~/.cache", "`code`", "{0:N2}", "50%", "€100", "a_b-c"]),
        ];
        string[] separators = [" ", " ", " ", "", "\t", "\n", "  ", ", ", ". ", "-", "/", "\u3000"];
        var result = new List<string>(count);
        for (int i = 0; i < count; i++)
        {
            var sb = new StringBuilder();
            int parts = rng.Next(1, 13);
            for (int p = 0; p < parts; p++)
            {
                if (p > 0) sb.Append(separators[rng.Next(separators.Length)]);
                sb.Append(fragments[rng.Next(fragments.Length)]());
            }
            result.Add(sb.ToString());
        }
        return result;
    }

    /// <summary>Every code point (surrogates aside) by its general category in .NET's tables.</summary>
    private static readonly Lazy<int[][]> Categories = new(() =>
    {
        var lists = Enumerable.Range(0, 30).Select(_ => new List<int>()).ToArray();
        for (int cp = 0; cp <= 0x10FFFF; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF) continue;
            lists[(int)CharUnicodeInfo.GetUnicodeCategory(cp)].Add(cp);
        }
        return lists.Where(l => l.Count > 0).Select(l => l.ToArray()).ToArray();
    });

    private static int Sample(int[][] byCategory, Random rng)
    {
        var category = byCategory[rng.Next(byCategory.Length)];
        return category[rng.Next(category.Length)];
    }

    /// <summary>UTF-16 offsets of a text as code-point offsets (what HF's library reports).</summary>
    private static int CodePoints(string text, int utf16)
    {
        int n = 0;
        foreach (var _ in text.AsSpan(0, utf16).EnumerateRunes()) n++;
        return n;
    }

    internal static void AssertSame(BertTextEncoder encoder, HfTokenizers.Request request, List<HfEncoding> reference, string what)
    {
        Assert.Equal(request.Inputs.Length, reference.Count);
        for (int i = 0; i < reference.Count; i++)
        {
            string a = request.Inputs[i][0]!;
            string? b = request.Inputs[i][1];
            var (ids, types, offsets) = encoder.EncodeRowWithOffsets(a, b, request.MaxLength > 0 ? request.MaxLength : int.MaxValue);
            var hf = reference[i];
            var ours = offsets.Select((o, k) =>
            {
                string text = types[k] == 1 ? b! : a;
                return new[] { CodePoints(text, o.Start), CodePoints(text, o.End) };
            }).ToArray();
            bool same = ids.SequenceEqual(hf.Ids) && types.SequenceEqual(hf.TypeIds) && ours.Length == hf.Offsets.Length
                && ours.Zip(hf.Offsets).All(p => p.First.SequenceEqual(p.Second));
            if (!same)
            {
                string Escape(string s) => string.Concat(s.EnumerateRunes().Select(r => r.Value is >= 0x20 and < 0x7F ? r.ToString() : $"\\u{{{r.Value:X}}}"));
                string Show(int[] t, int[][] o) => string.Join(" ", t.Select((id, k) => $"{(id < encoder.Vocabulary.Count ? encoder.Vocabulary[id] : "?")}@{o[k][0]}-{o[k][1]}"));
                Assert.Fail($"{what}, input {i}: \"{Escape(a)}\"{(b is null ? "" : $" + \"{Escape(b)}\"")}\n  ours: {Show(ids, ours)}\n  HF:   {Show(hf.Ids, hf.Offsets)}");
            }
        }
    }

    private static (BertTextEncoder Encoder, HfTokenizers.Request Request) Setup(string vocab, BertNormalizer normalizer, int maxLength, string?[][] inputs) =>
        (BertTextEncoder.FromVocab(vocab, normalizer),
         new HfTokenizers.Request(vocab, normalizer.Lowercase, normalizer.StripAccents ?? normalizer.Lowercase, normalizer.HandleChineseChars, maxLength, inputs));

    [Fact]
    public void Generated_texts_match_HF_with_an_uncased_vocabulary()
    {
        HfTokenizers.Require();
        var vocab = WordPiece.ReadVocabulary(MiniLm.Vocab);
        var inputs = Generate(3000, 1, vocab).Select(s => new[] { s, null }).ToArray();
        var (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(), 0, inputs);
        AssertSame(encoder, request, HfTokenizers.Encode(request), "uncased");
    }

    [Fact]
    public void Generated_texts_match_HF_with_a_cased_vocabulary_and_without_accent_stripping()
    {
        HfTokenizers.Require();
        using var dir = new TempDir();
        string vocabPath = dir.File("vocab.txt");
        var cased = WordPieceTrainer.Train(DefaultCorpus.Documents().Take(3000).Select(d => d.Text), 6000, lowerCase: false);
        File.WriteAllLines(vocabPath, cased);
        var inputs = Generate(2000, 2, cased).Select(s => new[] { s, null }).ToArray();
        var (encoder, request) = Setup(vocabPath, new BertNormalizer(Lowercase: false), 0, inputs);
        AssertSame(encoder, request, HfTokenizers.Encode(request), "cased");
        // Lower-cased but accents kept (strip_accents: false in tokenizer_config.json).
        var uncasedVocab = WordPiece.ReadVocabulary(MiniLm.Vocab);
        var more = Generate(600, 3, uncasedVocab).Select(s => new[] { s, null }).ToArray();
        (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(Lowercase: true, StripAccents: false), 0, more);
        AssertSame(encoder, request, HfTokenizers.Encode(request), "lower-cased, accents kept");
    }

    [Theory]
    [InlineData(8)]
    [InlineData(17)]
    [InlineData(64)]
    public void Generated_pairs_truncate_longest_first_as_HF(int maxLength)
    {
        HfTokenizers.Require();
        var vocab = WordPiece.ReadVocabulary(MiniLm.Vocab);
        var texts = Generate(800, 10 + maxLength, vocab);
        var inputs = Enumerable.Range(0, 400).Select(i => new[] { texts[2 * i], texts[2 * i + 1] })
            .Concat(texts.Take(100).Select(t => new[] { t, null })).ToArray();
        var (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(), maxLength, inputs);
        AssertSame(encoder, request, HfTokenizers.Encode(request), $"pairs, max length {maxLength}");
    }

    [Fact]
    public void Pair_truncation_matches_HF_for_every_pair_of_lengths_up_to_20()
    {
        HfTokenizers.Require();
        string Words(int n, string w) => string.Join(" ", Enumerable.Repeat(w, n));
        foreach (int maxLength in new[] { 6, 8, 10, 11 })
        {
            var inputs = (from n1 in Enumerable.Range(0, 21) from n2 in Enumerable.Range(0, 21) select new[] { Words(n1, "a"), Words(n2, "b") }).ToArray();
            var (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(), maxLength, inputs);
            AssertSame(encoder, request, HfTokenizers.Encode(request), $"pair lengths, max length {maxLength}");
        }
    }

    /// <summary>Each of the 1,112,064 code points between letters: pins the Unicode 8.0/9.0 tables HF's library uses.</summary>
    [Fact]
    public void Every_code_point_tokenizes_as_HF()
    {
        HfTokenizers.Require();
        var inputs = Enumerable.Range(0, 0x110000).Where(c => c is < 0xD800 or > 0xDFFF)
            .Select(c => new[] { "a" + char.ConvertFromUtf32(c) + "b", null }).ToArray();
        var (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(), 0, inputs);
        AssertSame(encoder, request, HfTokenizers.Encode(request), "every code point");
    }

    [Fact]
    public void The_default_corpus_tokenizes_as_HF()
    {
        HfTokenizers.Require();
        var inputs = DefaultCorpus.Documents().Select(d => new[] { d.Text, null }).ToArray();
        Assert.True(inputs.Length > 1000, $"only {inputs.Length} documents");
        var (encoder, request) = Setup(MiniLm.Vocab, new BertNormalizer(), 0, inputs);
        AssertSame(encoder, request, HfTokenizers.Encode(request), "default corpus");
    }

    [Fact]
    public void The_cases_that_used_to_be_wrong()
    {
        var encoder = BertTextEncoder.FromVocab(MiniLm.Vocab);
        string Pieces(string text) => string.Join(" ", encoder.Tokenize(text).Select(t => encoder.Vocabulary[t.Id]));
        Assert.Equal("cafe naive resume sao ecole", Pieces("café naïve résumé São ÉCOLE"));                // accents stripped
        Assert.Equal("list < t > . add ( t ) = a + b | $ 5", Pieces("List<T>.Add(T) = a + b | $5"));      // symbols kept
        Assert.Equal("columns separated", Pieces("Columns\tseparated"));                                    // tab is whitespace
        Assert.Equal("a b c", Pieces("a\r\nb\rc"));
        Assert.StartsWith("ᄒ ##ᅡ ##ᆫ", Pieces("한국어"));                                                   // Hangul → jamo
        Assert.Equal("paris is the [MASK] of france .", Pieces("Paris is the [MASK] of France."));          // special tokens whole
        var tokens = encoder.Tokenize("café 😀 naïve");
        Assert.Equal([(0, 4), (5, 7), (8, 13)], tokens.Select(t => (t.Start, t.End)));                    // UTF-16 offsets
        Assert.Equal(encoder.UnknownId, tokens[1].Id);
    }
}
