// What a user does with a trained model, in three calls: Embed (sentence vectors as
// sentence-transformers computes them: the folder's own modules.json — pooling, Dense, Normalize,
// prompts, max_seq_length — or, for a folder without one, the mean of the last hidden states over
// the attention mask, then L2 normalisation; SentenceTransformer.cs), FillMask (HF's fill-mask pipeline: the softmax over the vocabulary at the [MASK]),
// Classify (a fine-tuned head's label and probability). Any model folder embeds; fill-mask needs
// the masked-language-model head of a pretraining folder, classify a fine-tuned classifier.
// Inference only: nothing is recorded on the tape.
using System.Security.Cryptography;
using System.Text;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Pipelines;

/// <summary>A pooling that overrides a folder's own: the mean over the attention mask, or the [CLS] vector.</summary>
public enum EmbeddingPooling
{
    /// <summary>The mean of the token vectors where the attention mask is 1.</summary>
    Mean,
    /// <summary>The first token's ([CLS]) vector.</summary>
    Cls,
}

/// <summary>A candidate for the [MASK]: the token, its probability and the text with it filled in.</summary>
public sealed record FillMaskCandidate(int TokenId, string Token, float Probability, string Sequence);

/// <summary>A corpus line by its index and cosine similarity to the query.</summary>
public sealed record SearchHit(int Index, float Score);

/// <summary>A fine-tuned classifier's answer for one text.</summary>
public sealed record Classification(string Label, float Probability);

/// <summary>
/// A model folder ready to use: sentence embeddings and search (as the folder's modules.json says),
/// fill-mask on a pretraining folder, classification on a fine-tuned one. Load with <see cref="Load"/>.
/// </summary>
public sealed class BertPipeline : IDisposable
{
    private readonly BertForPreTraining? pretraining; // a folder with a masked-language-model head (fill-mask)
    private readonly BertForTask? task;               // a fine-tuned folder (classify)
    private readonly BertModel? body;                 // any other folder: the encoder alone, its weights only
    private readonly string dir;
    private readonly PackedLinears linears = new(); // the weights never change here: pack each once

    private BertPipeline(string dir, SentenceTransformer sentence, BertTextEncoder encoder, BertForPreTraining? pretraining, BertForTask? task, BertModel? body)
    {
        this.dir = dir;
        Sentence = sentence;
        Encoder = encoder;
        this.pretraining = pretraining;
        this.task = task;
        this.body = body;
    }

    /// <summary>The folder's tokenizer (vocab.txt or tokenizer.json).</summary>
    public BertTextEncoder Encoder { get; }

    /// <summary>How <see cref="Embed"/> makes a sentence vector by default: the folder's modules.json, or mean pooling and L2 normalisation.</summary>
    public SentenceTransformer Sentence { get; }

    /// <summary>The model's config.json.</summary>
    public BertConfig Config => Body.Config;
    private BertModel Body => pretraining?.Bert ?? task?.Bert ?? body!;

    /// <summary>
    /// Loads a model folder: a fine-tuned one with its head, one with a masked-language-model head
    /// with it, any other as the encoder alone (no head is made up for a file that has none).
    /// </summary>
    public static BertPipeline Load(BertDevice device, string folder)
    {
        if (!Directory.Exists(folder)) throw new CheckpointException($"{folder}: no such model folder");
        var sentence = SentenceTransformer.Read(folder);
        string dir = sentence.TransformerDir;
        var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
        if (Compression.Int8Model.IsQuantized(config))
            throw new CheckpointException($"{dir}: an int8 model; embed and fill-mask run float models (predict and evaluate run int8)");
        var encoder = BertTextEncoder.Load(dir);
        if (TaskSpec.FromConfig(config, Path.Combine(dir, BertFolder.ConfigFile)) is not null)
            return new BertPipeline(dir, sentence, encoder, null, BertForTask.Load(device, dir), null);
        if (BertFolder.Heads(dir).MlmHead)
            return new BertPipeline(dir, sentence, encoder, BertFolder.Load(device, dir), null, null);
        var pipeline = new BertPipeline(dir, sentence, encoder, null, null, BertFolder.LoadBody(device, dir, addPoolingLayer: false));
        // The encoder alone runs only through the packed Linears here: their packed copies replace the weights.
        pipeline.linears.Pack(pipeline.Body.LinearWeights, release: true);
        return pipeline;
    }

    /// <summary>The encoder's last hidden states [B, S, H] for a batch (dropout off, no tape bookkeeping).</summary>
    public float[] Encode(BertInputs inputs)
    {
        using var tape = new Tape(recording: false);
        return Body.Forward(tape, inputs, Dropouts.Off, hooks: linears.Hooks).LastHiddenState.Value.ToHost();
    }

    /// <summary>Tokens per forward pass <see cref="Embed"/> batches up to (rows × the batch's longest row).</summary>
    public const int DefaultBatchTokens = 2048;

    /// <summary>Where warnings go (texts cut at the model's length, blank texts); nothing is said when null.</summary>
    public Action<string>? Warn { get; set; }

    /// <summary>
    /// One vector per text, as <see cref="Sentence"/> says (the folder's modules.json, or mean pooling
    /// and L2 normalisation); <paramref name="pooling"/> and <paramref name="normalize"/>, when given,
    /// override it. <paramref name="prompt"/>: the name of one of the folder's prompts (default: its
    /// default_prompt_name, if any), prepended to every text; <paramref name="promptText"/> a prompt of
    /// the caller's own. <paramref name="maxLength"/> 0: the folder's max_seq_length, else the model's
    /// maximum; a longer text is cut there (said once through <see cref="Warn"/>, with the count), or
    /// with <paramref name="truncate"/> false refused. A blank text (empty or white space only) has
    /// nothing to embed: its vector is all zeros (cosine 0 with anything), said through <see cref="Warn"/>.
    /// Texts are embedded in order of length, in batches of up to <paramref name="batchTokens"/> tokens
    /// (rows × the longest row) and, when <paramref name="batchSize"/> is positive, at most that many rows.
    /// </summary>
    public List<float[]> Embed(IReadOnlyList<string> texts, EmbeddingPooling? pooling = null, bool? normalize = null,
        int batchSize = 0, int maxLength = 0, string? prompt = null, string? promptText = null, int batchTokens = DefaultBatchTokens, bool truncate = true)
    {
        if (batchSize < 0) throw new ArgumentException($"batch size must be positive (or 0: by tokens only), got {batchSize}");
        if (batchTokens < 1) throw new ArgumentException($"tokens per batch must be positive, got {batchTokens}");
        if (prompt is not null && promptText is not null) throw new ArgumentException("a prompt by name or a prompt text, not both");
        var sentence = Resolve(pooling, normalize);
        promptText ??= PromptText(prompt);
        int limit = Limit(sentence, maxLength);
        string Prepare(string text) => sentence.LowerCase ? (promptText + text).ToLowerInvariant() : promptText + text;
        // sentence-transformers' prompt_length: the prompt's tokens with [CLS], without [SEP].
        int promptLength = promptText.Length == 0 ? 0 : Encoder.EncodeRow(Prepare(""), null, limit).Ids.Length - 1;
        int h = Config.HiddenSize;
        var result = new float[texts.Count][];
        var rows = new (int[] Ids, int[] Types)[texts.Count];
        var todo = new List<int>(texts.Count);
        int blank = 0, cut = 0, longest = 0;
        for (int i = 0; i < texts.Count; i++)
        {
            if (string.IsNullOrWhiteSpace(texts[i]))
            {
                result[i] = sentence.ZeroVector(h);
                blank++;
                continue;
            }
            var row = Encoder.EncodeRow(Prepare(texts[i]), null, int.MaxValue);
            if (row.Ids.Length > limit)
            {
                if (!truncate) throw new ArgumentException($"text {i + 1} has {row.Ids.Length} tokens, more than the {limit} this model takes here");
                cut++;
                longest = Math.Max(longest, row.Ids.Length);
                // HF's truncation of one text: its first limit − 2 pieces between [CLS] and [SEP].
                row = ([.. row.Ids.AsSpan(0, limit - 1), Encoder.SepId], row.Types[..limit]);
            }
            rows[i] = row;
            todo.Add(i);
        }
        if (cut > 0) Warn?.Invoke($"{cut} of {texts.Count} texts are longer than {limit} tokens (the longest {longest}) and were cut to {limit}, as sentence-transformers does");
        if (blank > 0) Warn?.Invoke($"{blank} of {texts.Count} texts are blank: their vectors are zeros (no text to embed)");
        // Batches of similar lengths (as sentence-transformers does), so little of each is padding,
        // sized by tokens: short texts go in large batches, long ones in small.
        var order = todo.OrderBy(i => rows[i].Ids.Length).ToArray();
        for (int at = 0; at < order.Length;)
        {
            int count = 1;
            while (at + count < order.Length && (batchSize == 0 || count < batchSize) && (count + 1) * rows[order[at + count]].Ids.Length <= batchTokens)
                count++;
            var chunk = order.AsSpan(at, count).ToArray();
            var inputs = Encoder.Pad(chunk.Select(i => rows[i]).ToList());
            var hidden = Encode(inputs); // [B, S, H]
            for (int b = 0; b < chunk.Length; b++)
                result[chunk[b]] = sentence.Pool(hidden, inputs.AttentionMask, b, inputs.SeqLen, h, promptLength);
            at += count;
        }
        return [.. result];
    }

    /// <summary><see cref="Sentence"/> with the caller's overrides applied.</summary>
    public SentenceTransformer Resolve(EmbeddingPooling? pooling, bool? normalize) => Sentence.With(pooling, normalize);

    /// <summary>The text of a named prompt (null: the folder's default prompt, or none).</summary>
    public string PromptText(string? name)
    {
        name ??= Sentence.DefaultPromptName;
        if (name is null) return "";
        return Sentence.Prompts.TryGetValue(name, out var text) ? text
            : throw new ArgumentException(Sentence.Prompts.Count == 0 ? $"{dir} defines no prompts (config_sentence_transformers.json), so there is no prompt \"{name}\""
                : $"no prompt \"{name}\" in {dir} (it has {string.Join(", ", Sentence.Prompts.Keys)})");
    }

    /// <summary>The cosine similarity of two vectors (0 when either is all zeros).</summary>
    public static float Cosine(float[] a, float[] b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"vectors of {a.Length} and {b.Length} dimensions");
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            dot += (double)a[i] * b[i];
            na += (double)a[i] * a[i];
            nb += (double)b[i] * b[i];
        }
        return (float)(dot / Math.Max(Math.Sqrt(na * nb), 1e-12));
    }

    /// <summary>
    /// The <paramref name="topK"/> corpus texts most similar to the query (cosine of embeddings); the
    /// prompt, when given, is put before the query only (as a retrieval model's "query: " is). Blank
    /// corpus texts never match. With <paramref name="indexPath"/> the corpus vectors come from that
    /// index when it exists (refused unless made from these texts with this embedding), else they are
    /// computed and saved there (<see cref="EmbeddingIndex"/>).
    /// </summary>
    public List<SearchHit> Search(string query, IReadOnlyList<string> corpus, int topK = 5, EmbeddingPooling? pooling = null,
        string? prompt = null, string? promptText = null, string? indexPath = null)
    {
        if (string.IsNullOrWhiteSpace(query)) throw new ArgumentException("the query is blank: there is nothing to search for");
        if (topK < 1) throw new ArgumentException($"top-k must be positive, got {topK}");
        var q = Embed([query], pooling, prompt: prompt, promptText: promptText)[0];
        string corpusPrompt = prompt is null && promptText is null && Sentence.DefaultPromptName is not null ? PromptText(null) : "";
        IReadOnlyList<float[]> vectors;
        if (indexPath is null) vectors = Embed(corpus, pooling, promptText: corpusPrompt);
        else if (File.Exists(indexPath))
        {
            var index = EmbeddingIndex.Load(indexPath);
            index.Check(indexPath, corpus, EmbeddingHash(pooling, null, 0, corpusPrompt), DescribeEmbedding(pooling, null, corpusPrompt));
            vectors = index.Vectors;
        }
        else
        {
            var index = Index(corpus, pooling, null, 0, corpusPrompt);
            index.Save(indexPath);
            vectors = index.Vectors;
        }
        return vectors.Select((v, i) => (v, i)).Where(p => p.v.Any(x => x != 0))
            .Select(p => new SearchHit(p.i, Cosine(q, p.v))).OrderByDescending(h => h.Score).ThenBy(h => h.Index).Take(topK).ToList();
    }

    /// <summary>The corpus embedded as <see cref="Embed"/> does it, with what <see cref="EmbeddingIndex"/> records of it.</summary>
    public EmbeddingIndex Index(IReadOnlyList<string> texts, EmbeddingPooling? pooling = null, bool? normalize = null, int maxLength = 0,
        string? promptText = null, int batchSize = 0, int batchTokens = DefaultBatchTokens, bool truncate = true)
    {
        promptText ??= PromptText(null);
        var vectors = Embed(texts, pooling, normalize, batchSize, maxLength, promptText: promptText, batchTokens: batchTokens, truncate: truncate);
        return new EmbeddingIndex(vectors, EmbeddingIndex.HashTexts(texts), EmbeddingHash(pooling, normalize, maxLength, promptText),
            DescribeEmbedding(pooling, normalize, promptText));
    }

    private string? filesHash;

    /// <summary>
    /// SHA-256 (hex) of what a vector depends on: the model's files (config.json, the weights, the
    /// tokenizer's files) and the settings (pooling, Dense weights, normalisation, case, maximum length, prompt).
    /// </summary>
    public string EmbeddingHash(EmbeddingPooling? pooling, bool? normalize, int maxLength, string promptText)
    {
        var sentence = Resolve(pooling, normalize);
        if (filesHash is null)
        {
            using var files = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[1 << 20];
            foreach (var name in new[] { BertFolder.ConfigFile, Path.GetFileName(BertFolder.WeightsPath(dir)), BertFolder.VocabFile, BertFolder.TokenizerFile, "tokenizer_config.json" })
            {
                string path = Path.Combine(dir, name);
                if (!File.Exists(path)) continue;
                files.AppendData(Encoding.UTF8.GetBytes(name + "\0"));
                using var stream = File.OpenRead(path);
                for (int n; (n = stream.Read(buffer)) > 0;) files.AppendData(buffer, 0, n);
            }
            filesHash = Convert.ToHexStringLower(files.GetHashAndReset());
        }
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{filesHash}\0{sentence.Summary}\0lower={sentence.LowerCase}\0max={Limit(sentence, maxLength)}\0prompt={promptText}\0"));
        foreach (var d in sentence.Dense)
        {
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(d.Weight.AsSpan()));
            if (d.Bias is not null) sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(d.Bias.AsSpan()));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private string DescribeEmbedding(EmbeddingPooling? pooling, bool? normalize, string promptText) =>
        $"{dir}: {Resolve(pooling, normalize).Summary}{(promptText.Length > 0 ? $", prompt \"{promptText}\"" : "")}";

    private int Limit(SentenceTransformer sentence, int maxLength) => maxLength > 0 ? Math.Min(maxLength, Config.MaxPositionEmbeddings)
        : sentence.MaxSeqLength > 0 ? Math.Min(sentence.MaxSeqLength, Config.MaxPositionEmbeddings) : Config.MaxPositionEmbeddings;

    /// <summary>
    /// The corpus `search --corpus default` searches: the first summary sentence of every documented
    /// .NET SDK type (<see cref="DefaultCorpus"/>), each once, in the documentation's order.
    /// </summary>
    public static IEnumerable<string> DefaultSearchCorpus() =>
        DefaultCorpus.TypeSummaries().Select(d => DefaultTask.FirstSentence(d.Text))
            .Where(l => l.Trim().Length > 0).Distinct();

    /// <summary>The <paramref name="topK"/> most probable tokens at the text's one [MASK].</summary>
    public List<FillMaskCandidate> FillMask(string text, int topK = 5)
    {
        if (pretraining is null)
            throw new ArgumentException($"{dir} has no masked-language-model head (cls.predictions.*): fill-mask needs a pretraining model folder");
        var (ids, types) = Encoder.EncodeRow(text, null, Config.MaxPositionEmbeddings);
        int[] masks = ids.Select((id, i) => (id, i)).Where(p => p.id == Encoder.MaskId).Select(p => p.i).ToArray();
        if (masks.Length != 1)
            throw new ArgumentException(masks.Length == 0 ? "the text has no [MASK] (or it was cut at the model's maximum length)" : $"the text has {masks.Length} [MASK] tokens; fill-mask fills one");
        var inputs = Encoder.Pad([(ids, types)]);
        using var tape = new Tape(recording: false);
        var logits = pretraining.Forward(tape, inputs, Dropouts.Off).PredictionLogits.Value.ToHost(); // [1, S, V]
        int v = Config.VocabSize, at = masks[0];
        double max = double.NegativeInfinity;
        for (int j = 0; j < v; j++) max = Math.Max(max, logits[(long)at * v + j]);
        double sum = 0;
        for (int j = 0; j < v; j++) sum += Math.Exp(logits[(long)at * v + j] - max);
        int k = Math.Min(topK, v);
        int maskStart = text.IndexOf("[MASK]", StringComparison.Ordinal);
        return Enumerable.Range(0, v).OrderByDescending(j => logits[(long)at * v + j]).ThenBy(j => j).Take(k).Select(j =>
        {
            string token = Encoder.Vocabulary[j];
            string word = token.StartsWith(WordPiece.Prefix, StringComparison.Ordinal) ? token[WordPiece.Prefix.Length..] : token;
            string sequence = maskStart >= 0 ? text[..maskStart] + word + text[(maskStart + "[MASK]".Length)..] : text;
            return new FillMaskCandidate(j, token, (float)(Math.Exp(logits[(long)at * v + j] - max) / sum), sequence);
        }).ToList();
    }

    /// <summary>A fine-tuned classifier's label and probability for each text (pairs: first TAB second).</summary>
    public List<Classification> Classify(IReadOnlyList<string> texts, int batchSize = 32)
    {
        if (task is null || task.Task.Kind is not (TaskKind.Classification or TaskKind.PairClassification))
            throw new ArgumentException($"{dir} is not a fine-tuned classifier (finetune --task classification)");
        var examples = texts.Select(t => t.Split('\t', 2) is var parts && task.Task.Kind == TaskKind.PairClassification
            ? new TaskExample { Text = parts[0], TextPair = parts.Length > 1 ? parts[1] : "" } : new TaskExample { Text = t }).ToList();
        var featurizer = new Featurizer(Encoder, task.Task, Config.MaxPositionEmbeddings);
        var features = examples.Select(e => featurizer.Make(e, labelled: false)).ToList();
        return Predictor.Predict(task, featurizer, features, batchSize, linears.Hooks).Select(p => new Classification(task.Task.Labels[p.Label], p.Probability)).ToList();
    }

    /// <summary>Frees the model's device memory.</summary>
    public void Dispose()
    {
        pretraining?.Dispose();
        task?.Dispose();
        body?.Dispose();
    }
}
