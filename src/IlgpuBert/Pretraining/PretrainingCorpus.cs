// Raw text → tokenized documents for pretraining. Documents are separated by blank lines;
// sentences are split after . ! ? followed by white space and an upper-case letter, digit or
// quote. Each token keeps two facts the masking strategies need: whether it starts a word
// (WordPiece continuations begin with "##") and whether its word was capitalised in the raw text
// (ERNIE-style entity masking looks for capitalised runs).
using System.Text.RegularExpressions;
using IlgpuBert.Text;

namespace IlgpuBert.Pretraining;

/// <summary>One sentence: token ids with, per token, word-start and capitalised-word flags.</summary>
public sealed record Sentence(int[] Ids, bool[] WordStart, bool[] Capitalized)
{
    public int Length => Ids.Length;
}

public sealed record Document(Sentence[] Sentences);

public static partial class PretrainingCorpus
{
    /// <summary>Splits raw text into documents (blank-line separated) of sentences.</summary>
    public static IEnumerable<string[]> SplitDocuments(IEnumerable<string> lines)
    {
        var current = new List<string>();
        foreach (var line in lines)
        {
            if (string.IsNullOrWhiteSpace(line))
            {
                if (current.Count > 0) yield return SplitSentences(string.Join(" ", current));
                current.Clear();
            }
            else current.Add(line.Trim());
        }
        if (current.Count > 0) yield return SplitSentences(string.Join(" ", current));
    }

    public static string[] SplitSentences(string text) =>
        SentenceEnd().Split(text.Trim()).Select(s => s.Trim()).Where(s => s.Length > 0).ToArray();

    /// <summary>Tokenizes one sentence word by word, so word boundaries and casing are known.</summary>
    public static Sentence Tokenize(BertTextEncoder encoder, string sentence)
    {
        var ids = new List<int>();
        var starts = new List<bool>();
        var caps = new List<bool>();
        foreach (var word in encoder.TokenizeWords(sentence))
        {
            bool cap = char.IsUpper(sentence[word.Start]);
            for (int i = 0; i < word.Pieces.Count; i++)
            {
                ids.Add(word.Pieces[i].Id);
                starts.Add(i == 0);
                caps.Add(cap);
            }
        }
        return new Sentence(ids.ToArray(), starts.ToArray(), caps.ToArray());
    }

    public static List<Document> Tokenize(BertTextEncoder encoder, IEnumerable<string[]> documents) =>
        documents.Select(d => new Document(d.Select(s => Tokenize(encoder, s)).Where(s => s.Length > 0).ToArray()))
            .Where(d => d.Sentences.Length > 0).ToList();

    [GeneratedRegex(@"(?<=[.!?])\s+(?=[A-Z0-9""'(\[])")]
    private static partial Regex SentenceEnd();
}
