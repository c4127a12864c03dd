// Text → BERT inputs exactly as Hugging Face's BertTokenizerFast makes them from a model folder's
// vocab.txt and tokenizer_config.json: special tokens written in the text ([CLS], [SEP], [PAD],
// [MASK], [UNK]) are kept whole, the rest is normalised and split into words (BertNormalizer.cs)
// and cut into WordPiece pieces (WordPiece.cs); [CLS] a [SEP] (b [SEP]) with token_type_ids 0/1,
// HF's longest-first truncation and padding to the longest row with attention_mask 0. Every token
// keeps the span of the text it came from. TokenizerTests compare ids and offsets with HF's own
// tokenizers library on thousands of generated strings and the whole default corpus.
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;

namespace IlgpuBert.Text;

/// <summary>HF's BertTokenizerFast exactly: BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] B [SEP], with offsets.</summary>
public sealed class BertTextEncoder
{
    /// <summary>Changes whenever tokenization changes, so caches keyed by it (pretraining shards) are rebuilt.</summary>
    public const int Version = 2;

    private readonly WordPiece wordPiece;
    private readonly (string Text, int Id)[] specials;

    private BertTextEncoder(WordPiece wordPiece, BertNormalizer normalizer)
    {
        this.wordPiece = wordPiece;
        Normalizer = normalizer;
        int Id(string token) => wordPiece.TryGetId(token, out int id) ? id
            : throw new CheckpointException($"the vocabulary has no {token} token (a BERT vocab.txt starts with [PAD] [UNK] [CLS] [SEP] [MASK] or has them somewhere)");
        PadId = Id("[PAD]");
        UnknownId = Id("[UNK]");
        ClsId = Id("[CLS]");
        SepId = Id("[SEP]");
        MaskId = Id("[MASK]");
        specials = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Select(t => (t, Id(t))).ToArray();
    }

    /// <summary>Tokens in the vocabulary (ids run from 0 to this − 1).</summary>
    public int VocabSize => wordPiece.Tokens.Count;

    /// <summary>The id of [CLS].</summary>
    public int ClsId { get; }
    /// <summary>The id of [SEP].</summary>
    public int SepId { get; }
    /// <summary>The id of [PAD].</summary>
    public int PadId { get; }
    /// <summary>The id of [MASK].</summary>
    public int MaskId { get; }
    /// <summary>The id of [UNK].</summary>
    public int UnknownId { get; }
    /// <summary>How text is cleaned, lower-cased and split before WordPiece.</summary>
    public BertNormalizer Normalizer { get; }
    /// <summary>The tokens, by id.</summary>
    public IReadOnlyList<string> Vocabulary => wordPiece.Tokens;

    /// <summary>
    /// From a folder with vocab.txt or tokenizer.json (HF's tokenizers file, read by
    /// <see cref="TokenizerJson"/>; used when the folder has it, as transformers does). do_lower_case,
    /// strip_accents and tokenize_chinese_chars come from tokenizer_config.json where it gives them,
    /// else from tokenizer.json's normaliser, else HF's defaults (true, as do_lower_case, true).
    /// </summary>
    public static BertTextEncoder Load(string dir)
    {
        string vocab = Path.Combine(dir, BertFolder.VocabFile), json = Path.Combine(dir, TokenizerJson.FileName);
        bool fromJson = File.Exists(json);
        if (!fromJson && !File.Exists(vocab)) throw new CheckpointException($"{vocab}: no such file (the tokenizer needs vocab.txt or {TokenizerJson.FileName})");
        var (tokens, normalizer) = fromJson ? TokenizerJson.Read(json) : (WordPiece.ReadVocabulary(vocab), new BertNormalizer());
        string cfg = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(cfg))
        {
            try
            {
                var config = StrictJson.Parse(BoundedFile.ReadAllText(cfg, BoundedFile.ConfigBytes, "tokenizer_config.json"), cfg);
                bool lower = config?["do_lower_case"]?.GetValue<bool>() ?? normalizer.Lowercase;
                normalizer = new BertNormalizer(lower,
                    config?["strip_accents"] is { } strip ? strip.GetValue<bool?>() : config?["do_lower_case"] is null ? normalizer.StripAccents : null,
                    config?["tokenize_chinese_chars"]?.GetValue<bool>() ?? normalizer.HandleChineseChars);
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
            {
                throw new CheckpointException($"{cfg}: invalid ({e.Message})");
            }
        }
        string source = fromJson ? json : vocab;
        BertTextEncoder encoder;
        try
        {
            encoder = new BertTextEncoder(new WordPiece(tokens), normalizer);
        }
        catch (Exception e) when (e is ArgumentException or CheckpointException)
        {
            throw new CheckpointException($"{source}: {e.Message}");
        }
        // A vocabulary longer than the model's embedding table yields ids the model cannot look up;
        // refused here, naming the file, rather than at the first such token of some later batch.
        string configPath = Path.Combine(dir, BertFolder.ConfigFile);
        if (File.Exists(configPath) && BertConfig.Read(configPath).VocabSize is var size && encoder.VocabSize > size)
            throw new CheckpointException($"{source}: {encoder.VocabSize} tokens, more than {BertFolder.ConfigFile}'s vocab_size {size} (ids from {size} on have no embedding)");
        return encoder;
    }

    /// <summary>From a vocab.txt, lower-cased (and accents stripped) or not.</summary>
    public static BertTextEncoder FromVocab(string vocabPath, bool lowerCase = true) => FromVocab(vocabPath, new BertNormalizer(lowerCase));

    /// <summary>From a vocab.txt with the given normaliser.</summary>
    public static BertTextEncoder FromVocab(string vocabPath, BertNormalizer normalizer)
    {
        var vocabulary = WordPiece.ReadVocabulary(vocabPath); // its own errors name the file
        try
        {
            return new BertTextEncoder(new WordPiece(vocabulary), normalizer);
        }
        catch (Exception e) when (e is ArgumentException or CheckpointException)
        {
            throw new CheckpointException($"{vocabPath}: {e.Message}");
        }
    }

    /// <summary>Word-piece ids of a text, without [CLS]/[SEP] added.</summary>
    public int[] Encode(string text) => Tokenize(text).Select(t => t.Id).ToArray();

    /// <summary>The tokens of a text (no [CLS]/[SEP] added), each with the span of the text it covers.</summary>
    public List<TextToken> Tokenize(string text) => TokenizeWords(text).SelectMany(w => w.Pieces).ToList();

    /// <summary>
    /// The words of a text as the tokenizer splits them (a special token is a word), each with its
    /// span in the text and its pieces; with <paramref name="stopAt"/>, no more words once that many
    /// pieces are there (what HF's tokenizer does before truncating, which its pair truncation shows).
    /// </summary>
    public List<TextWord> TokenizeWords(string text, int stopAt = int.MaxValue)
    {
        var words = new List<TextWord>();
        int from = 0, pieces = 0;
        while (pieces < stopAt)
        {
            // Special tokens are found in the raw text first (leftmost, longest) and never normalised.
            var (at, length, id) = NextSpecial(text, from);
            pieces = TokenizeSegment(text, from, at, words, pieces, stopAt);
            if (length == 0 || pieces >= stopAt) break;
            words.Add(new TextWord(at, at + length, [new TextToken(id, at, at + length)]));
            pieces++;
            from = at + length;
        }
        return words;
    }

    private (int At, int Length, int Id) NextSpecial(string text, int from)
    {
        for (int i = text.IndexOf('[', from); i >= 0; i = text.IndexOf('[', i + 1))
        {
            (int Length, int Id) best = (0, 0);
            foreach (var (s, id) in specials)
                if (s.Length > best.Length && string.CompareOrdinal(text, i, s, 0, s.Length) == 0) best = (s.Length, id);
            if (best.Length > 0) return (i, best.Length, best.Id);
        }
        return (text.Length, 0, 0);
    }

    /// <summary>Appends the words of text[start..end) until <paramref name="stopAt"/> pieces; returns the pieces so far.</summary>
    private int TokenizeSegment(string text, int start, int end, List<TextWord> into, int pieces, int stopAt)
    {
        if (start >= end) return pieces;
        var chars = Normalizer.Normalize(text, start, end);
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(chars);
        foreach (var (s, e) in BertNormalizer.Words(chars))
        {
            if (pieces >= stopAt) break;
            var word = new List<TextToken>();
            wordPiece.Tokenize(span[s..e], word);
            into.Add(new TextWord(chars[s].Start, chars[e - 1].End, word));
            pieces += word.Count;
        }
        return pieces;
    }

    /// <summary>Pieces joined back into text: "##" continuations glued to the piece before, special tokens kept.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var sb = new System.Text.StringBuilder();
        foreach (int id in ids)
        {
            string piece = id >= 0 && id < wordPiece.Tokens.Count ? wordPiece.Tokens[id] : "[UNK]";
            if (piece.StartsWith(WordPiece.Prefix, StringComparison.Ordinal)) sb.Append(piece, WordPiece.Prefix.Length, piece.Length - WordPiece.Prefix.Length);
            else
            {
                if (sb.Length > 0) sb.Append(' ');
                sb.Append(piece);
            }
        }
        return sb.ToString();
    }

    /// <summary>
    /// A batch of single texts, or of pairs when <paramref name="second"/> is given, truncated
    /// longest-first to <paramref name="maxLength"/> tokens (specials included) and padded.
    /// </summary>
    public BertInputs Batch(IReadOnlyList<string> first, IReadOnlyList<string>? second = null, int maxLength = 512)
    {
        if (second is not null && second.Count != first.Count) throw new ArgumentException($"{first.Count} first texts but {second.Count} second texts");
        return Pad(Enumerable.Range(0, first.Count).Select(r => EncodeRow(first[r], second?[r], maxLength)).ToList());
    }

    /// <summary>[CLS] a [SEP] (b [SEP]) with token types, truncated longest-first to <paramref name="maxLength"/>.</summary>
    public (int[] Ids, int[] Types) EncodeRow(string first, string? second, int maxLength = 512)
    {
        var (ids, types, _) = EncodeRowWithOffsets(first, second, maxLength);
        return (ids, types);
    }

    /// <summary>
    /// As <see cref="EncodeRow"/>, with each token's span in its own text ((0, 0) for [CLS] and
    /// [SEP]); spans of the second text index the second text.
    /// </summary>
    public (int[] Ids, int[] Types, (int Start, int End)[] Offsets) EncodeRowWithOffsets(string first, string? second, int maxLength = 512)
    {
        int specialCount = second is null ? 2 : 3;
        if (maxLength < specialCount) throw new ArgumentException($"max length {maxLength} leaves no room for the special tokens");
        var a = TokenizeWords(first, maxLength).SelectMany(w => w.Pieces).ToList();
        var b = second is null ? null : TokenizeWords(second, maxLength).SelectMany(w => w.Pieces).ToList();
        Truncate(a, b, maxLength, specialCount);
        var ids = new List<int> { ClsId };
        var offsets = new List<(int, int)> { (0, 0) };
        ids.AddRange(a.Select(t => t.Id));
        offsets.AddRange(a.Select(t => (t.Start, t.End)));
        ids.Add(SepId);
        offsets.Add((0, 0));
        var types = Enumerable.Repeat(0, ids.Count).ToList();
        if (b is not null)
        {
            ids.AddRange(b.Select(t => t.Id));
            offsets.AddRange(b.Select(t => (t.Start, t.End)));
            ids.Add(SepId);
            offsets.Add((0, 0));
            types.AddRange(Enumerable.Repeat(1, b.Count + 1));
        }
        return (ids.ToArray(), types.ToArray(), offsets.ToArray());
    }

    /// <summary>
    /// HF's longest-first truncation to <paramref name="maxLength"/> tokens, <paramref name="specialCount"/>
    /// of them taken by [CLS]/[SEP]: a pair keeps the shorter text whole when it fits in half of the
    /// room, else the shorter gets ⌊room/2⌋ and the longer the rest (the second text when both are
    /// equally long). Each text arrives cut after the word that reached maxLength pieces
    /// (TokenizeWords' stopAt), which decides which one counts as longer, as in HF's library.
    /// </summary>
    private static void Truncate(List<TextToken> a, List<TextToken>? b, int maxLength, int specialCount)
    {
        int max = maxLength - specialCount;
        static void Cut(List<TextToken> t, int n)
        {
            if (t.Count > n) t.RemoveRange(n, t.Count - n);
        }
        if (b is null)
        {
            Cut(a, max);
            return;
        }
        if (a.Count + b.Count <= max) return;
        int n1 = a.Count, n2 = b.Count;
        bool swap = n1 > n2;
        if (swap) (n1, n2) = (n2, n1);
        n2 = n1 > max ? n1 : Math.Max(n1, max - n1);
        if (n1 + n2 > max)
        {
            n1 = max / 2;
            n2 = n1 + max % 2;
        }
        if (swap) (n1, n2) = (n2, n1);
        Cut(a, n1);
        Cut(b, n2);
    }

    /// <summary>Rows padded to the longest with [PAD] and attention_mask 0.</summary>
    public BertInputs Pad(IReadOnlyList<(int[] Ids, int[] Types)> rows)
    {
        if (rows.Count == 0) throw new ArgumentException("no rows to batch");
        int s = rows.Max(r => r.Ids.Length);
        int[][] Fill(Func<(int[] Ids, int[] Types), int[]> pick, int fill) =>
            rows.Select(r => pick(r).Concat(Enumerable.Repeat(fill, s - r.Ids.Length)).ToArray()).ToArray();
        return BertInputs.FromRows(Fill(r => r.Ids, PadId), Fill(r => r.Types, 0),
            rows.Select(r => Enumerable.Repeat(1, r.Ids.Length).Concat(Enumerable.Repeat(0, s - r.Ids.Length)).ToArray()).ToArray());
    }
}
