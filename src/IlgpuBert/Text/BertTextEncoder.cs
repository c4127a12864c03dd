// Text → BERT inputs through Microsoft.ML.Tokenizers' BertTokenizer over a model folder's
// vocab.txt: [CLS] a [SEP] (b [SEP]) with token_type_ids 0/1, longest-first truncation and padding
// to the longest row with attention_mask 0, as HF's BertTokenizer(Fast) does by default.
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using Microsoft.ML.Tokenizers;

namespace IlgpuBert.Text;

public sealed class BertTextEncoder
{
    private readonly BertTokenizer tokenizer;

    private BertTextEncoder(BertTokenizer tokenizer) => this.tokenizer = tokenizer;

    public int ClsId => tokenizer.ClassificationTokenId;
    public int SepId => tokenizer.SeparatorTokenId;
    public int PadId => tokenizer.PaddingTokenId;
    public int MaskId => tokenizer.MaskingTokenId;
    public int UnknownId => tokenizer.UnknownTokenId;

    /// <summary>From a folder with vocab.txt; lower-casing from tokenizer_config.json's do_lower_case (default true).</summary>
    public static BertTextEncoder Load(string dir)
    {
        string vocab = Path.Combine(dir, BertFolder.VocabFile);
        if (!File.Exists(vocab)) throw new CheckpointException($"{vocab}: no such file (the tokenizer needs vocab.txt)");
        bool lower = true;
        string cfg = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(cfg))
        {
            try { lower = JsonNode.Parse(File.ReadAllText(cfg))?["do_lower_case"]?.GetValue<bool>() ?? true; }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
            {
                throw new CheckpointException($"{cfg}: invalid ({e.Message})");
            }
        }
        return FromVocab(vocab, lower);
    }

    public static BertTextEncoder FromVocab(string vocabPath, bool lowerCase = true) =>
        new(BertTokenizer.Create(vocabPath, new BertOptions { LowerCaseBeforeTokenization = lowerCase }));

    /// <summary>Word-piece ids of a text, without special tokens.</summary>
    public int[] Encode(string text) => tokenizer.EncodeToIds(text, addSpecialTokens: false).ToArray();

    public string Decode(IEnumerable<int> ids) => tokenizer.Decode(ids) ?? "";

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
        int specials = second is null ? 2 : 3;
        if (maxLength < specials) throw new ArgumentException($"max length {maxLength} leaves no room for the special tokens");
        var a = Encode(first).ToList();
        var b = second is null ? null : Encode(second).ToList();
        while (a.Count + (b?.Count ?? 0) > maxLength - specials)
        {
            if (b is not null && b.Count >= a.Count) b.RemoveAt(b.Count - 1);
            else a.RemoveAt(a.Count - 1);
        }
        var ids = new List<int> { ClsId };
        ids.AddRange(a);
        ids.Add(SepId);
        var types = Enumerable.Repeat(0, ids.Count).ToList();
        if (b is not null)
        {
            ids.AddRange(b);
            ids.Add(SepId);
            types.AddRange(Enumerable.Repeat(1, b.Count + 1));
        }
        return (ids.ToArray(), types.ToArray());
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
