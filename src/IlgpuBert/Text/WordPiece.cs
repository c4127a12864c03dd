// WordPiece (Schuster & Nakajima 2012, as BERT uses it): each word is cut greedily into the longest
// vocabulary entries from the left, continuation pieces carrying the "##" prefix; a word with a
// part no entry covers, or longer than 100 characters (code points), becomes a single [UNK]. This is
// HF's WordPiece model; vocab.txt's line number is the id (a repeated line: the last one wins, and
// trailing whitespace is trimmed, as HF reads the file).
using IlgpuBert.Checkpoints;

namespace IlgpuBert.Text;

/// <summary>A token id and the UTF-16 span [Start, End) of the original text it covers.</summary>
public readonly record struct TextToken(int Id, int Start, int End);

/// <summary>A word as the tokenizer splits text, its UTF-16 span [Start, End) in the text, and its pieces.</summary>
public sealed record TextWord(int Start, int End, List<TextToken> Pieces);

public sealed class WordPiece
{
    public const string Prefix = "##";
    public const int MaxCharsPerWord = 100;

    private readonly Dictionary<string, int> ids;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> lookup;

    public WordPiece(IReadOnlyList<string> vocabulary, string unknownToken = "[UNK]")
    {
        Tokens = vocabulary;
        ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < vocabulary.Count; i++) ids[vocabulary[i]] = i;
        lookup = ids.GetAlternateLookup<ReadOnlySpan<char>>();
        UnknownId = ids.TryGetValue(unknownToken, out int unk) ? unk : throw new ArgumentException($"the vocabulary has no {unknownToken}");
    }

    public IReadOnlyList<string> Tokens { get; }
    public int UnknownId { get; }

    public bool TryGetId(string token, out int id) => ids.TryGetValue(token, out id);

    /// <summary>Reads vocab.txt (one token per line).</summary>
    public static string[] ReadVocabulary(string path) => BoundedFile.ReadAllLines(path, BoundedFile.VocabularyBytes, "vocabulary").Select(l => l.TrimEnd()).ToArray();

    /// <summary>Appends the pieces of one word (normalised characters with their source spans).</summary>
    public void Tokenize(ReadOnlySpan<AlignedChar> word, List<TextToken> into)
    {
        if (word.Length == 0) return;
        if (word.Length > MaxCharsPerWord)
        {
            into.Add(new TextToken(UnknownId, word[0].Start, word[^1].End));
            return;
        }
        // The word as UTF-16, where each character starts in it, and room for "##" + a part.
        Span<char> text = stackalloc char[2 * word.Length];
        Span<char> candidate = stackalloc char[Prefix.Length + 2 * word.Length];
        Span<int> at = stackalloc int[word.Length + 1];
        Prefix.AsSpan().CopyTo(candidate);
        int n = 0;
        for (int i = 0; i < word.Length; i++)
        {
            at[i] = n;
            n += new System.Text.Rune(word[i].CodePoint).EncodeToUtf16(text[n..]);
        }
        at[word.Length] = n;

        int count = into.Count;
        for (int start = 0; start < word.Length;)
        {
            int end = word.Length, id = -1;
            for (; end > start; end--)
            {
                // The longest part from here that the vocabulary has, "##"-prefixed after the first.
                var part = text[at[start]..at[end]];
                if (start > 0)
                {
                    part.CopyTo(candidate[Prefix.Length..]);
                    part = candidate[..(Prefix.Length + part.Length)];
                }
                if (lookup.TryGetValue(part, out id)) break;
            }
            if (end == start)
            {
                // Some part matches no entry: the whole word is unknown.
                into.RemoveRange(count, into.Count - count);
                into.Add(new TextToken(UnknownId, word[0].Start, word[^1].End));
                return;
            }
            into.Add(new TextToken(id, word[start].Start, word[end - 1].End));
            start = end;
        }
    }
}
