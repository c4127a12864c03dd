// tokenizer.json, the file HF's tokenizers library saves (and the hub serves, often without
// vocab.txt). Only what BertTokenizerFast builds is accepted: a WordPiece model ("##" prefix, 100
// characters per word, [UNK]), BertNormalizer (clean_text on), BertPreTokenizer, and a post-processor
// that makes [CLS] A [SEP] and [CLS] A [SEP] B [SEP] with type ids 0/0/1 (TemplateProcessing as
// transformers writes it today, or the older BertProcessing). Anything else — BPE, Unigram, other
// normalizers or pre-tokenizers, added tokens beyond BERT's five specials — is refused naming the
// component: tokenizing such a model as BERT would give other ids without a word of warning.
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;

namespace IlgpuBert.Text;

/// <summary>Reads HF tokenizers' tokenizer.json when it describes BERT's tokenizer; refuses any other.</summary>
public static class TokenizerJson
{
    /// <summary>tokenizer.json.</summary>
    public const string FileName = Model.BertFolder.TokenizerFile;

    private static readonly string[] Specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

    /// <summary>The vocabulary (index = id) and the normaliser the file describes.</summary>
    public static (string[] Vocabulary, BertNormalizer Normalizer) Read(string path)
    {
        var root = StrictJson.Parse(BoundedFile.ReadAllText(path, BoundedFile.VocabularyBytes, FileName), path) as JsonObject
            ?? throw new CheckpointException($"{path}: expected a JSON object");
        CheckpointException Refuse(string what) => new($"{path}: {what}; only BERT's WordPiece tokenizer is supported");
        string? Type(string key) => root[key] is JsonObject o ? o["type"]?.GetValue<string>() : null;
        try
        {
            var model = root["model"] as JsonObject ?? throw Refuse("no \"model\"");
            string modelType = model["type"]?.GetValue<string>() ?? (model["vocab"] is JsonObject && model["continuing_subword_prefix"] is not null ? "WordPiece" : "unknown");
            if (modelType != "WordPiece") throw Refuse($"model type {modelType}");
            if ((model["continuing_subword_prefix"]?.GetValue<string>() ?? WordPiece.Prefix) != WordPiece.Prefix)
                throw Refuse($"continuing_subword_prefix \"{model["continuing_subword_prefix"]}\" (BERT's is \"{WordPiece.Prefix}\")");
            if ((model["max_input_chars_per_word"]?.GetValue<int>() ?? WordPiece.MaxCharsPerWord) != WordPiece.MaxCharsPerWord)
                throw Refuse($"max_input_chars_per_word {model["max_input_chars_per_word"]} (BERT's is {WordPiece.MaxCharsPerWord})");
            if ((model["unk_token"]?.GetValue<string>() ?? "[UNK]") != "[UNK]") throw Refuse($"unk_token {model["unk_token"]}");

            var vocab = model["vocab"] as JsonObject ?? throw Refuse("a WordPiece model without \"vocab\"");
            var tokens = new string?[vocab.Count];
            foreach (var (token, idNode) in vocab)
            {
                int id = idNode?.GetValue<int>() ?? -1;
                if (id < 0 || id >= tokens.Length) throw new CheckpointException($"{path}: token \"{StrictJson.Short(token)}\" has id {id}, outside 0…{tokens.Length - 1} (ids must number the vocabulary from 0)");
                if (tokens[id] is not null) throw new CheckpointException($"{path}: id {id} is given to both \"{StrictJson.Short(tokens[id]!)}\" and \"{StrictJson.Short(token)}\"");
                tokens[id] = token;
            }

            foreach (var added in root["added_tokens"] as JsonArray ?? [])
            {
                string content = added?["content"]?.GetValue<string>() ?? "";
                int id = added?["id"]?.GetValue<int>() ?? -1;
                if (!Specials.Contains(content)) throw Refuse($"added token \"{StrictJson.Short(content)}\" (BERT adds only {string.Join(" ", Specials)})");
                if (id < 0 || id >= tokens.Length || tokens[id] != content) throw new CheckpointException($"{path}: added token {content} has id {id}, which the vocabulary gives to another token");
            }

            var normalizerNode = root["normalizer"] as JsonObject ?? throw Refuse("no normalizer");
            if (Type("normalizer") != "BertNormalizer") throw Refuse($"normalizer {Type("normalizer")}");
            if (normalizerNode["clean_text"]?.GetValue<bool>() == false) throw Refuse("BertNormalizer with clean_text false");
            var normalizer = new BertNormalizer(normalizerNode["lowercase"]?.GetValue<bool>() ?? true,
                normalizerNode["strip_accents"]?.GetValue<bool?>(), normalizerNode["handle_chinese_chars"]?.GetValue<bool>() ?? true);

            if (Type("pre_tokenizer") != "BertPreTokenizer") throw Refuse($"pre-tokenizer {Type("pre_tokenizer") ?? "none"}");
            CheckPostProcessor(root["post_processor"] as JsonObject, tokens, Refuse);
            return (tokens.Select((t, i) => t ?? throw new CheckpointException($"{path}: no token has id {i}")).ToArray(), normalizer);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new CheckpointException($"{path}: a field of the wrong type ({e.Message})");
        }
    }

    /// <summary>[CLS] $A [SEP] (and [CLS] $A [SEP] $B:1 [SEP]:1), whichever way the file spells it.</summary>
    private static void CheckPostProcessor(JsonObject? processor, string?[] tokens, Func<string, CheckpointException> refuse)
    {
        string? type = processor?["type"]?.GetValue<string>();
        if (type == "BertProcessing")
        {
            foreach (var (key, token) in new[] { ("cls", "[CLS]"), ("sep", "[SEP]") })
                if (processor![key] is not JsonArray { Count: 2 } pair || pair[0]?.GetValue<string>() != token || pair[1]?.GetValue<int>() is not int id
                    || id < 0 || id >= tokens.Length || tokens[id] != token)
                    throw refuse($"BertProcessing whose {key} is not {token} with its vocabulary id");
            return;
        }
        if (type != "TemplateProcessing") throw refuse($"post-processor {type ?? "none"} (BERT's adds [CLS] and [SEP])");
        string Template(string key) => string.Join(" ", (processor![key] as JsonArray ?? throw refuse($"TemplateProcessing without \"{key}\"")).Select(piece =>
            piece?["SpecialToken"] is JsonObject s ? $"{s["id"]?.GetValue<string>()}:{s["type_id"]?.GetValue<int>()}"
            : piece?["Sequence"] is JsonObject q ? $"${q["id"]?.GetValue<string>()}:{q["type_id"]?.GetValue<int>()}"
            : throw refuse("a TemplateProcessing piece that is neither SpecialToken nor Sequence")));
        if (Template("single") != "[CLS]:0 $A:0 [SEP]:0" || Template("pair") != "[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1")
            throw refuse($"the template \"{Template("single")}\" / \"{Template("pair")}\" (BERT's is [CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP]:1)");
        foreach (var token in new[] { "[CLS]", "[SEP]" })
            if (processor!["special_tokens"]?[token]?["ids"] is not JsonArray { Count: 1 } ids || ids[0]?.GetValue<int>() is not int id
                || id < 0 || id >= tokens.Length || tokens[id] != token)
                throw refuse($"TemplateProcessing whose {token} is not the vocabulary's {token}");
    }
}
