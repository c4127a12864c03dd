// Verbs for using real pretrained models: import-onnx and export-onnx (in and out of the format
// .NET deploys BERT in), embed, similarity and search (sentence embeddings with
// sentence-transformers' semantics), fill-mask. The work is in the library (OnnxImport,
// OnnxExport, BertPipeline); these parse, check and print.
using System.CommandLine;
using System.Text.Json;
using IlgpuBert.Checkpoints;
using IlgpuBert.Interop;
using IlgpuBert.Pipelines;
using IlgpuBert.Text;

namespace IlgpuBert.Cli;

public static class RealModelCommands
{
    public static IEnumerable<Command> Create(TextWriter stdout, TextWriter stderr)
    {
        yield return ImportOnnx(stdout);
        yield return ExportOnnx(stdout);
        yield return Export(stdout);
        yield return Embed(stdout, stderr);
        yield return Similarity(stdout, stderr);
        yield return Search(stdout, stderr);
        yield return FillMask(stdout);
    }

    private static Command ImportOnnx(TextWriter stdout)
    {
        var model = new Argument<string>("model") { Description = "the ONNX file (a BERT-family export: encoder, with or without pooler or heads)" };
        var vocab = new Option<string?>("--vocab") { Description = "vocab.txt to put beside it (default: a vocab.txt next to the ONNX file, if any)" };
        var lower = new Option<bool?>("--do-lower-case") { Description = "tokenizer casing (default: guessed from the vocabulary)" };
        var output = Cli.Required("--out", "model folder to write (config.json, model.safetensors, vocab.txt, tokenizer_config.json)");
        var command = new Command("import-onnx", "Turn a BERT ONNX export into an HF model folder.") { model, vocab, lower, output };
        Cli.ProtectModelOutput(command, output);
        command.SetAction(parse =>
        {
            string path = parse.GetValue(model)!;
            string? vocabPath = parse.GetValue(vocab);
            if (vocabPath is null)
            {
                string beside = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "vocab.txt");
                if (File.Exists(beside)) vocabPath = beside;
            }
            else if (!File.Exists(vocabPath)) throw new ArgumentException($"{vocabPath}: no such file");
            var result = OnnxImport.Read(path);
            string dir = parse.GetValue(output)!;
            OnnxImport.WriteFolder(result, dir, vocabPath, parse.GetValue(lower));
            var c = result.Config;
            stdout.WriteLine($"wrote {dir}: {result.Architecture} L={c.NumHiddenLayers} H={c.HiddenSize} A={c.NumAttentionHeads} I={c.IntermediateSize} " +
                $"vocab={c.VocabSize} act={c.HiddenAct} eps={c.LayerNormEps:G3}, {result.Tensors.Count} tensors" +
                (vocabPath is null ? "; no vocab.txt given: add one before tokenizing" : ""));
            return 0;
        });
        return command;
    }

    private static Command ExportOnnx(TextWriter stdout)
    {
        var model = Cli.Required("--model", "model folder (pretraining, or fine-tuned with any head)");
        var output = Cli.Required("--out", "the ONNX file to write");
        var command = new Command("export-onnx", "Write a model folder as an ONNX graph (FP32, dynamic batch and sequence) that ONNX Runtime runs.") { model, output };
        command.SetAction(parse =>
        {
            var export = OnnxExport.Write(parse.GetValue(model)!, parse.GetValue(output)!);
            stdout.WriteLine($"wrote {parse.GetValue(output)}: {export.Architecture}, inputs {string.Join(", ", export.Inputs)}; outputs {string.Join(", ", export.Outputs)}");
            return 0;
        });
        return command;
    }

    private static Command Export(TextWriter stdout)
    {
        var model = Cli.Required("--model", "model folder (an HF folder, or a sentence-transformers folder)");
        var output = Cli.Required("--out", "the folder to write");
        var st = new Option<bool>("--sentence-transformers") { Description = "write a sentence-transformers folder (modules.json, 1_Pooling, Dense, Normalize) that SentenceTransformer(path) loads" };
        var flags = new EmbeddingFlags();
        var command = new Command("export", "Write a model folder in another library's layout (ONNX: export-onnx).") { model, output, st, flags.Pooling, flags.Normalize, flags.NoNormalize };
        Cli.ProtectModelOutput(command, output);
        command.SetAction(parse =>
        {
            if (!parse.GetValue(st)) throw new ArgumentException("say which layout to write: --sentence-transformers (for ONNX, use export-onnx)");
            var (pooling, normalize, _, _) = flags.Parse(parse);
            string source = parse.GetValue(model)!, dir = parse.GetValue(output)!;
            if (!File.Exists(Path.Combine(source, Model.BertFolder.ConfigFile)) && !File.Exists(Path.Combine(source, SentenceTransformer.ModulesFile)))
                throw new ArgumentException($"{source}: not a model folder (no {Model.BertFolder.ConfigFile})");
            var sentence = SentenceTransformer.Read(source).With(pooling, normalize);
            if (Path.GetFullPath(source) == Path.GetFullPath(dir)) throw new ArgumentException("--out must be another folder than --model");
            sentence.Save(dir);
            stdout.WriteLine($"wrote {dir}: a sentence-transformers folder, {sentence.Summary}");
            return 0;
        });
        return command;
    }

    /// <summary>
    /// The embedding flags embed, similarity and search share. Without them a model folder embeds as
    /// its modules.json says (pooling, Dense, Normalize, prompts), and a folder without one by mean
    /// pooling and L2 normalisation; a flag that overrides the folder is said on standard error.
    /// </summary>
    private sealed class EmbeddingFlags
    {
        public readonly Option<string?> Pooling = new("--pooling") { Description = "mean (over the attention mask) or cls, instead of the model folder's own pooling (modules.json; mean without one)" };
        public readonly Option<bool> Normalize = new("--normalize") { Description = "L2-normalise each vector even where the folder's modules.json has no Normalize" };
        public readonly Option<bool> NoNormalize = new("--no-normalize") { Description = "do not L2-normalise (the default without modules.json, and with a Normalize module, is to normalise)" };
        public readonly Option<string?> Prompt = new("--prompt") { Description = "one of the folder's named prompts (config_sentence_transformers.json), prepended to each text (default: its default_prompt_name)" };
        public readonly Option<string?> PromptText = new("--prompt-text") { Description = "a text of your own prepended to each text" };

        public void AddTo(Command command, bool normalizeFlags)
        {
            command.Options.Add(Pooling);
            if (normalizeFlags)
            {
                command.Options.Add(Normalize);
                command.Options.Add(NoNormalize);
            }
            command.Options.Add(Prompt);
            command.Options.Add(PromptText);
        }

        public (EmbeddingPooling? Pooling, bool? Normalize, string? Prompt, string? PromptText) Parse(ParseResult parse)
        {
            var pooling = parse.GetValue(Pooling) switch
            {
                null => (EmbeddingPooling?)null,
                "mean" => EmbeddingPooling.Mean,
                "cls" => EmbeddingPooling.Cls,
                var other => throw new ArgumentException($"--pooling must be mean or cls, got {other}"),
            };
            if (parse.GetValue(Normalize) && parse.GetValue(NoNormalize)) throw new ArgumentException("--normalize and --no-normalize contradict each other");
            bool? normalize = parse.GetValue(Normalize) ? true : parse.GetValue(NoNormalize) ? false : null;
            if (parse.GetValue(Prompt) is not null && parse.GetValue(PromptText) is not null) throw new ArgumentException("--prompt names one of the folder's prompts, --prompt-text gives one: not both");
            return (pooling, normalize, parse.GetValue(Prompt), parse.GetValue(PromptText));
        }

        /// <summary>Says on standard error what the vector is when a flag changed what the folder asks for.</summary>
        public static void Report(BertPipeline pipeline, EmbeddingPooling? pooling, bool? normalize, TextWriter stderr)
        {
            if (pooling is null && normalize is null) return;
            var used = pipeline.Resolve(pooling, normalize);
            if (used != pipeline.Sentence) stderr.WriteLine($"embedding: {used.Summary} (flags override the folder's {pipeline.Sentence.Describe()})");
        }
    }

    private static IReadOnlyList<string> ReadLines(string? path)
    {
        var lines = (path is null ? ReadAll(Console.In) : File.ReadAllLines(path)).ToList();
        if (lines.Count == 0) throw new ArgumentException($"{path ?? "standard input"}: no lines to embed");
        return lines;
    }

    private static IEnumerable<string> ReadAll(TextReader reader)
    {
        for (string? line = reader.ReadLine(); line is not null; line = reader.ReadLine()) yield return line;
    }

    /// <summary>How embed and search batch and cut texts.</summary>
    private sealed class BatchingFlags
    {
        public readonly Option<int> BatchSize = Cli.Opt("--batch-size", "at most this many texts per forward pass (default: as many as --batch-tokens allows)", 0);
        public readonly Option<int> BatchTokens = Cli.Opt("--batch-tokens", "tokens per forward pass: texts sorted by length, each batch as many rows as fit (rows × its longest row)", BertPipeline.DefaultBatchTokens);
        public readonly Option<string> Truncate = Cli.Opt("--truncate", "a text longer than the model takes: cut (warned once, with the count) or error", "cut");

        public void AddTo(Command command)
        {
            command.Options.Add(BatchSize);
            command.Options.Add(BatchTokens);
            command.Options.Add(Truncate);
        }

        public (int BatchSize, int BatchTokens, bool Truncate) Parse(ParseResult parse) => (parse.GetValue(BatchSize), parse.GetValue(BatchTokens), parse.GetValue(Truncate) switch
        {
            "cut" => true,
            "error" => false,
            var other => throw new ArgumentException($"--truncate must be cut or error, got {other}"),
        });
    }

    private static Command Embed(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.Required("--model", "model folder (an HF folder, or a sentence-transformers folder with modules.json)");
        var input = new Option<string?>("--input") { Description = "one text per line (default: standard input); a blank line's vector is zeros" };
        var flags = new EmbeddingFlags();
        var batching = new BatchingFlags();
        var output = new Option<string?>("--out") { Description = "write .npy, or .safetensors (tensor \"embeddings\", with what it was made from: `search --index` reads it), instead of JSON lines on standard output" };
        var maxLength = Cli.Opt("--max-length", "tokens per text, [CLS] and [SEP] included (default: the folder's max_seq_length, else the model's maximum)", 0);
        var command = new Command("embed", "Sentence embeddings: one vector per input line.") { model, input, output, maxLength };
        flags.AddTo(command, normalizeFlags: true);
        batching.AddTo(command);
        command.SetAction(parse =>
        {
            string? path = parse.GetValue(input);
            if (path is not null && !File.Exists(path)) throw new ArgumentException($"{path}: no such file");
            string? outPath = parse.GetValue(output);
            if (outPath is not null && !outPath.EndsWith(".npy", StringComparison.Ordinal) && !outPath.EndsWith(".safetensors", StringComparison.Ordinal))
                throw new ArgumentException($"--out must end in .npy or .safetensors, got {outPath}");
            var (pooling, normalize, prompt, promptText) = flags.Parse(parse);
            var (batchSize, batchTokens, truncate) = batching.Parse(parse);
            var texts = ReadLines(path);
            using var device = Cli.OpenDevice(parse);
            using var pipeline = BertPipeline.Load(device, parse.GetValue(model)!);
            pipeline.Warn = stderr.WriteLine;
            EmbeddingFlags.Report(pipeline, pooling, normalize, stderr);
            promptText ??= pipeline.PromptText(prompt);
            if (outPath is not null && outPath.EndsWith(".safetensors", StringComparison.Ordinal))
            {
                var index = pipeline.Index(texts, pooling, normalize, parse.GetValue(maxLength), promptText, batchSize, batchTokens, truncate);
                index.Save(outPath);
                stdout.WriteLine($"wrote {outPath}: {index.Vectors.Count} × {index.Vectors[0].Length}");
                return 0;
            }
            var vectors = pipeline.Embed(texts, pooling, normalize, batchSize, parse.GetValue(maxLength), promptText: promptText, batchTokens: batchTokens, truncate: truncate);
            if (outPath is null)
            {
                foreach (var v in vectors) stdout.WriteLine(JsonSerializer.Serialize(v));
                return 0;
            }
            var flat = vectors.SelectMany(v => v).ToArray();
            int[] shape = [vectors.Count, vectors[0].Length];
            Npy.Write(outPath, flat, shape);
            stdout.WriteLine($"wrote {outPath}: {shape[0]} × {shape[1]}");
            return 0;
        });
        return command;
    }

    private static Command Similarity(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.Required("--model", "model folder");
        var first = new Argument<string>("first") { Description = "a text" };
        var second = new Argument<string>("second") { Description = "another text" };
        var flags = new EmbeddingFlags();
        var command = new Command("similarity", "Cosine similarity of two texts' embeddings.") { model, first, second };
        flags.AddTo(command, normalizeFlags: false); // a cosine does not depend on the vectors' lengths
        command.SetAction(parse =>
        {
            var (pooling, _, prompt, promptText) = flags.Parse(parse);
            using var device = Cli.OpenDevice(parse);
            using var pipeline = BertPipeline.Load(device, parse.GetValue(model)!);
            pipeline.Warn = stderr.WriteLine;
            EmbeddingFlags.Report(pipeline, pooling, null, stderr);
            var v = pipeline.Embed([parse.GetValue(first)!, parse.GetValue(second)!], pooling, prompt: prompt, promptText: promptText);
            stdout.WriteLine(BertPipeline.Cosine(v[0], v[1]).ToString("F6", System.Globalization.CultureInfo.InvariantCulture));
            return 0;
        });
        return command;
    }

    private static Command Search(TextWriter stdout, TextWriter stderr)
    {
        var model = Cli.Required("--model", "model folder");
        var corpus = Cli.Required("--corpus", "texts to search, one per line (blank lines never match); \"default\": the first summary sentence of every documented .NET SDK type");
        var index = new Option<string?>("--index") { Description = "the corpus's vectors: read from this .safetensors file when it exists (refused unless made from these texts with this model and embedding), else computed and written there" };
        var query = new Argument<string>("query") { Description = "the query text" };
        var topK = Cli.Opt("--top-k", "results to print", 5);
        var flags = new EmbeddingFlags();
        var command = new Command("search", "The corpus lines nearest to a query by cosine similarity of embeddings.") { model, corpus, index, query, topK };
        flags.AddTo(command, normalizeFlags: false);
        command.SetAction(parse =>
        {
            string path = parse.GetValue(corpus)!;
            if (path != "default" && !File.Exists(path)) throw new ArgumentException($"{path}: no such file");
            if (parse.GetValue(topK) < 1) throw new ArgumentException("--top-k must be positive");
            string? indexPath = parse.GetValue(index);
            if (indexPath is not null && !indexPath.EndsWith(".safetensors", StringComparison.Ordinal))
                throw new ArgumentException($"--index must end in .safetensors, got {indexPath}");
            var (pooling, _, prompt, promptText) = flags.Parse(parse);
            var lines = (path == "default" ? BertPipeline.DefaultSearchCorpus() : File.ReadAllLines(path)).ToList();
            if (lines.All(string.IsNullOrWhiteSpace)) throw new ArgumentException($"{path}: no lines to search");
            using var device = Cli.OpenDevice(parse);
            using var pipeline = BertPipeline.Load(device, parse.GetValue(model)!);
            pipeline.Warn = stderr.WriteLine;
            EmbeddingFlags.Report(pipeline, pooling, null, stderr);
            bool made = indexPath is not null && !File.Exists(indexPath);
            foreach (var hit in pipeline.Search(parse.GetValue(query)!, lines, parse.GetValue(topK), pooling, prompt, promptText, indexPath))
                stdout.WriteLine($"{hit.Score:F4}\t{lines[hit.Index]}");
            if (made) stderr.WriteLine($"wrote {indexPath}: the corpus's {lines.Count} vectors (later searches read them)");
            return 0;
        });
        return command;
    }

    private static Command FillMask(TextWriter stdout)
    {
        var model = Cli.Required("--model", "model folder with a masked-language-model head (pretraining folders)");
        var text = new Argument<string>("text") { Description = "a text with one [MASK]" };
        var topK = Cli.Opt("--top-k", "candidates to print", 5);
        var command = new Command("fill-mask", "The most probable tokens for the [MASK] in a text, with their probabilities.") { model, text, topK };
        command.SetAction(parse =>
        {
            if (parse.GetValue(topK) < 1) throw new ArgumentException("--top-k must be positive");
            using var device = Cli.OpenDevice(parse);
            using var pipeline = BertPipeline.Load(device, parse.GetValue(model)!);
            foreach (var c in pipeline.FillMask(parse.GetValue(text)!, parse.GetValue(topK)))
                stdout.WriteLine($"{c.Probability:F4}\t{c.Token}\t{c.Sequence}");
            return 0;
        });
        return command;
    }
}
