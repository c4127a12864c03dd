// BERT's text normalisation and word splitting exactly as Hugging Face's tokenizers library does it
// (BertNormalizer and BertPreTokenizer, the Rust code behind BertTokenizerFast), with every output
// character remembering the span of the input it came from (offsets for QA and fill-mask):
//
//   clean text     drop NUL, U+FFFD and control characters (Cc, Cf, Co; not \t \n \r); every
//                  whitespace character (Unicode White_Space, \t \n \r) becomes a space
//   CJK            a space on each side of every CJK ideograph, so each becomes its own word
//   strip accents  canonical decomposition (NFD), then drop non-spacing marks (Mn)
//   lowercase      full Unicode lower-casing (İ → i̇)
//   pre-tokenize   split on whitespace; every punctuation character (ASCII punctuation, or
//                  Unicode P*) becomes a word of its own
//
// The character classes and decompositions are those of the Unicode versions HF's library ships
// (8.0 for categories, 9.0 for NFD; UnicodeTables.g.cs); whitespace and case use .NET's current
// tables, as HF uses Rust's. .NET's own string.Normalize is not used: it needs ICU, and this
// project runs with invariant globalization.
using System.Text;

namespace IlgpuBert.Text;

/// <summary>One normalised character and the UTF-16 span [Start, End) of the original text it came from.</summary>
public readonly record struct AlignedChar(int CodePoint, int Start, int End);

/// <param name="Lowercase">HF's do_lower_case.</param>
/// <param name="StripAccents">HF's strip_accents; null follows <paramref name="Lowercase"/>, as HF does.</param>
/// <param name="HandleChineseChars">HF's tokenize_chinese_chars.</param>
public sealed record BertNormalizer(bool Lowercase = true, bool? StripAccents = null, bool HandleChineseChars = true)
{
    private bool Strip => StripAccents ?? Lowercase;

    /// <summary>The normalised characters of text[start..end), each aligned to its source.</summary>
    public List<AlignedChar> Normalize(string text, int start, int end)
    {
        var chars = new List<AlignedChar>(end - start + 8);
        for (int i = start; i < end;)
        {
            int width = char.IsSurrogatePair(text, i) ? 2 : 1;
            int cp = width == 2 ? char.ConvertToUtf32(text[i], text[i + 1]) : char.IsSurrogate(text[i]) ? 0xFFFD : text[i];
            // Clean text.
            if (cp != 0 && cp != 0xFFFD && !IsControl(cp))
            {
                if (IsWhitespace(cp)) cp = ' ';
                if (HandleChineseChars && IsChinese(cp))
                {
                    chars.Add(new AlignedChar(' ', i, i + width));
                    chars.Add(new AlignedChar(cp, i, i + width));
                    chars.Add(new AlignedChar(' ', i, i + width));
                }
                else
                    chars.Add(new AlignedChar(cp, i, i + width));
            }
            i += width;
        }
        if (Strip)
            chars = StripMarks(Nfd(chars));
        if (Lowercase)
            chars = ToLower(chars);
        return chars;
    }

    /// <summary>BertPreTokenizer: words as [start, end) ranges of <paramref name="chars"/>.</summary>
    public static List<(int Start, int End)> Words(List<AlignedChar> chars)
    {
        var words = new List<(int, int)>();
        int wordStart = -1;
        for (int i = 0; i < chars.Count; i++)
        {
            int cp = chars[i].CodePoint;
            bool space = IsWhitespace(cp), punct = IsPunctuation(cp);
            if (space || punct)
            {
                if (wordStart >= 0) words.Add((wordStart, i));
                wordStart = -1;
                if (punct) words.Add((i, i + 1));
            }
            else if (wordStart < 0)
                wordStart = i;
        }
        if (wordStart >= 0) words.Add((wordStart, chars.Count));
        return words;
    }

    /// <summary>The words of a text as strings (normalised), e.g. for building a vocabulary.</summary>
    public IEnumerable<string> WordStrings(string text)
    {
        var chars = Normalize(text, 0, text.Length);
        var sb = new StringBuilder();
        foreach (var (s, e) in Words(chars))
        {
            sb.Clear();
            for (int i = s; i < e; i++) sb.Append(char.ConvertFromUtf32(chars[i].CodePoint));
            yield return sb.ToString();
        }
    }

    /// <summary>Rust's char::is_whitespace (Unicode White_Space), which .NET's IsWhiteSpace matches; \t \n \r included.</summary>
    public static bool IsWhitespace(int cp) => cp < 0x10000 && char.IsWhiteSpace((char)cp);

    /// <summary>Cc, Cf or Co (Unicode 8.0), except \t \n \r, which count as whitespace.</summary>
    public static bool IsControl(int cp) => cp is not ('\t' or '\n' or '\r') && InRanges(UnicodeTables.Other, cp);

    /// <summary>ASCII punctuation, or Unicode P* (Unicode 8.0).</summary>
    public static bool IsPunctuation(int cp) =>
        cp < 0x80 ? cp is (>= 33 and <= 47) or (>= 58 and <= 64) or (>= 91 and <= 96) or (>= 123 and <= 126)
        : InRanges(UnicodeTables.Punctuation, cp);

    /// <summary>The CJK ideograph blocks HF puts spaces around (its ranges, not BERT's Python ones).</summary>
    public static bool IsChinese(int cp) => cp is (>= 0x4E00 and <= 0x9FFF) or (>= 0x3400 and <= 0x4DBF) or (>= 0x20000 and <= 0x2A6DF)
        or (>= 0x2A700 and <= 0x2B73F) or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B920 and <= 0x2CEAF) or (>= 0xF900 and <= 0xFAFF)
        or (>= 0x2F800 and <= 0x2FA1F);

    private static bool InRanges(int[] ranges, int cp)
    {
        // Inclusive [first, last] pairs, sorted: find the last pair starting at or before cp.
        int lo = 0, hi = ranges.Length / 2 - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (ranges[2 * mid] <= cp) { found = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        return found >= 0 && cp <= ranges[2 * found + 1];
    }

    /// <summary>Canonical decomposition (Unicode 9.0), then canonical ordering of combining marks.</summary>
    private static List<AlignedChar> Nfd(List<AlignedChar> chars)
    {
        var result = new List<AlignedChar>(chars.Count + 8);
        foreach (var c in chars)
            Decompose(c.CodePoint, c, result);
        // Canonical ordering: a stable sort by combining class within each run of non-starters.
        for (int i = 1; i < result.Count; i++)
        {
            int cc = CombiningClass(result[i].CodePoint);
            if (cc == 0) continue;
            int j = i;
            while (j > 0 && CombiningClass(result[j - 1].CodePoint) > cc)
            {
                (result[j - 1], result[j]) = (result[j], result[j - 1]);
                j--;
            }
        }
        return result;
    }

    private static void Decompose(int cp, AlignedChar source, List<AlignedChar> into)
    {
        const int sBase = 0xAC00, lBase = 0x1100, vBase = 0x1161, tBase = 0x11A7, tCount = 28, nCount = 588, sCount = 11172;
        if (cp >= sBase && cp < sBase + sCount)
        {
            // Hangul syllables decompose algorithmically into conjoining jamo.
            int s = cp - sBase;
            into.Add(source with { CodePoint = lBase + s / nCount });
            into.Add(source with { CodePoint = vBase + s % nCount / tCount });
            if (s % tCount != 0) into.Add(source with { CodePoint = tBase + s % tCount });
            return;
        }
        int k = Array.BinarySearch(UnicodeTables.DecomposedChars, cp);
        if (k < 0)
        {
            into.Add(source with { CodePoint = cp });
            return;
        }
        Decompose(UnicodeTables.Decompositions[2 * k], source, into);
        int second = UnicodeTables.Decompositions[2 * k + 1];
        if (second != 0) Decompose(second, source, into);
    }

    private static int CombiningClass(int cp)
    {
        int k = Array.BinarySearch(UnicodeTables.CombiningChars, cp);
        return k < 0 ? 0 : UnicodeTables.CombiningClasses[k];
    }

    private static List<AlignedChar> StripMarks(List<AlignedChar> chars) =>
        chars.Where(c => !InRanges(UnicodeTables.NonspacingMark, c.CodePoint)).ToList();

    private static List<AlignedChar> ToLower(List<AlignedChar> chars)
    {
        var result = new List<AlignedChar>(chars.Count);
        foreach (var c in chars)
        {
            if (c.CodePoint == 0x130)
            {
                // The one unconditional multi-character lower-case mapping (SpecialCasing.txt).
                result.Add(c with { CodePoint = 'i' });
                result.Add(c with { CodePoint = 0x307 });
            }
            else
                result.Add(c with { CodePoint = Rune.ToLowerInvariant(new Rune(c.CodePoint)).Value });
        }
        return result;
    }
}
