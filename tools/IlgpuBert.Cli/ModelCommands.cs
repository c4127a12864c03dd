// Model verbs: init, forward, grad (the contract scripts rely on, see the model issue), vocab,
// tokenize and convert (a folder's weights in another dtype). Every failure is an exception the entry point turns into one line and exit code 2;
// outputs are written only after everything succeeded, atomically.
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Cli;

public static class ModelCommands
{
    public static IEnumerable<Command> Create(TextWriter stdout, TextWriter stderr)
    {
        yield return Init(stdout, stderr);
        yield return Forward(stderr);
        yield return Grad(stderr);
        yield return Vocab(stdout);
        yield return Tokenize(stdout);
        yield return Convert(stdout);
    }

    private static Command Convert(TextWriter stdout)
    {
        var model = Required("--model", "float model folder");
        var dtype = Required("--dtype", "bf16, f16 or f32: how the copy stores its weights (rounded to nearest, ties to even)");
        var output = Required("--out", "folder for the copy");
        var command = new Command("convert", "Copy a model folder with its weights stored as bf16, f16 or f32 (HF keeps many models in F16/BF16; every dtype loads).") { model, dtype, output };
        Cli.ProtectModelOutput(command, output);
        command.SetAction(parse =>
        {
            string d = parse.GetValue(dtype)!.ToLowerInvariant() switch
            {
                "bf16" or "bfloat16" => "BF16",
                "f16" or "fp16" or "float16" => "F16",
                "f32" or "fp32" or "float32" => "F32",
                var v => throw new ArgumentException($"--dtype must be bf16, f16 or f32, got {v}"),
            };
            string dir = parse.GetValue(model)!, outDir = parse.GetValue(output)!;
            int n = BertFolder.Convert(dir, d, outDir);
            long before = new FileInfo(BertFolder.WeightsPath(dir)).Length, after = new FileInfo(Path.Combine(outDir, BertFolder.WeightsFile)).Length;
            stdout.WriteLine($"wrote {outDir}: {n} tensors as {d}, {after / 1e6:F1} MB (from {before / 1e6:F1} MB)");
            return 0;
        });
        return command;
    }

    private static Option<string> Required(string name, string description) => Cli.Required(name, description);

    private static Command Init(TextWriter stdout, TextWriter stderr)
    {
        var size = new Option<string>("--size") { Description = "tiny, mini, small, medium, base or large (Turc et al. 2019)", DefaultValueFactory = _ => "tiny" };
        var vocab = new Option<string?>("--vocab") { Description = "vocab.txt to use (default: built from the embedded default corpus)" };
        var vocabSize = new Option<int>("--vocab-size") { Description = "size of the vocabulary built when --vocab is absent", DefaultValueFactory = _ => 8192 };
        var seed = new Option<int>("--seed") { Description = "initialisation seed", DefaultValueFactory = _ => 0 };
        var output = Required("--out", "model folder to write");
        var albert = new Option<bool>("--albert") { Description = "an ALBERT (AlbertForPreTraining): embedding_size min(128, H/2), one shared layer group" };
        var command = new Command("init", "Write a freshly initialised BertForPreTraining (or AlbertForPreTraining) in HF layout.") { size, vocab, vocabSize, seed, albert, output };
        Cli.ProtectModelOutput(command, output);
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(output)!;
            string? vocabPath = parse.GetValue(vocab);
            string? built = null;
            if (vocabPath is null)
            {
                stderr.WriteLine("building a vocabulary from the embedded default corpus (.NET SDK reference docs)...");
                built = Path.Combine(Path.GetTempPath(), $"ilgpu-bert-vocab-{Guid.NewGuid():N}.txt");
                WriteVocab(WordPieceTrainer.Train(DefaultCorpus.Documents().Select(d => d.Text), parse.GetValue(vocabSize)), built);
                vocabPath = built;
            }
            try
            {
                int vocabCount = ReadVocab(vocabPath).Length;
                var config = BertConfig.ForSize(parse.GetValue(size)!, vocabCount);
                if (parse.GetValue(albert)) config = config.AsAlbert();
                _ = BertTextEncoder.FromVocab(vocabPath); // a vocabulary every later verb would refuse is refused now, before anything is written
                using var device = Cli.OpenDevice(parse);
                using var model = new BertForPreTraining(device, config);
                model.Parameters.Initialize(parse.GetValue(seed));
                BertFolder.Save(model, dir, vocabPath);
                stdout.WriteLine($"wrote {dir}: {parse.GetValue(size)}{(config.Albert ? $" ALBERT (E={config.EmbeddingSize}, {config.NumHiddenGroups} layer group)" : "")} (L={config.NumHiddenLayers}, H={config.HiddenSize}, A={config.NumAttentionHeads}), vocabulary {vocabCount}");
            }
            finally
            {
                if (built is not null) File.Delete(built);
            }
            return 0;
        });
        return command;
    }

    /// <summary>What forward can write, in this order.</summary>
    private static readonly string[] ForwardOutputs = ["last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits", "loss", "hidden_states", "attentions"];

    private static Command Forward(TextWriter stderr)
    {
        var model = Required("--model", "model folder (config.json, model.safetensors)");
        var input = Required("--input", "BATCH.json with input_ids, token_type_ids, attention_mask, optional labels and next_sentence_label");
        var output = Required("--out", "OUT.safetensors to write");
        var outputs = new Option<string?>("--outputs")
        {
            Description = $"comma-separated, of {string.Join(", ", ForwardOutputs)} (default: what the checkpoint has: last_hidden_state, and pooler_output, prediction_logits, "
                + "seq_relationship_logits where its file holds that part, loss when the batch has labels for them); a part the file lacks is refused, never made up",
        };
        var hidden = new Option<bool>("--hidden-states") { Description = "also write hidden_states.{0..L} (as --outputs …,hidden_states)" };
        var attentions = new Option<bool>("--attentions") { Description = "also write attentions.{0..L-1} [B, NH, S, S] (as --outputs …,attentions)" };
        var command = new Command("forward", "Run the model on a batch (dropout off) and write its outputs: the encoder's, and its heads' where the checkpoint has them.") { model, input, output, outputs, hidden, attentions };
        command.SetAction(parse =>
        {
            var inputs = ReadBatch(parse.GetValue(input)!);
            string dir = parse.GetValue(model)!;
            BertFolder.Require(dir);
            var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
            var (pooler, mlm, nsp) = BertFolder.Heads(dir);
            string Lacks(string name) => name switch
            {
                "pooler_output" => "bert.pooler.*",
                "prediction_logits" => "the masked-language-model head (cls.predictions.*)",
                _ => "the next-sentence head (cls.seq_relationship.*)",
            };
            bool has(string name) => name switch { "pooler_output" => pooler, "prediction_logits" => mlm, "seq_relationship_logits" => nsp, _ => true };
            bool lossPossible = (inputs.Labels is not null || inputs.NextSentenceLabel is not null)
                && (inputs.Labels is null || mlm) && (inputs.NextSentenceLabel is null || nsp);
            List<string> wanted;
            if (parse.GetValue(outputs) is { } list)
            {
                wanted = list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Distinct().ToList();
                if (wanted.Count == 0) throw new ArgumentException("--outputs names no output");
                if (wanted.FirstOrDefault(w => !ForwardOutputs.Contains(w)) is { } unknown)
                    throw new ArgumentException($"--outputs: no output {unknown} (there are {string.Join(", ", ForwardOutputs)})");
                if (wanted.FirstOrDefault(w => !has(w)) is { } absent)
                    throw new ArgumentException($"--outputs: {absent} needs {Lacks(absent)}, which {dir} does not have (it has {string.Join(", ", ForwardOutputs.Where(has).Where(o => o != "loss"))})");
                if (wanted.Contains("loss") && !lossPossible)
                    throw new ArgumentException(inputs.Labels is null && inputs.NextSentenceLabel is null
                        ? "--outputs: loss needs labels or next_sentence_label in the batch"
                        : $"--outputs: loss needs {(inputs.Labels is not null && !mlm ? Lacks("prediction_logits") : Lacks("seq_relationship_logits"))} for the batch's labels, which {dir} does not have");
            }
            else
            {
                wanted = ForwardOutputs.Take(4).Where(has).ToList();
                if (lossPossible) wanted.Add("loss");
            }
            if (parse.GetValue(hidden)) wanted.Add("hidden_states");
            if (parse.GetValue(attentions)) wanted.Add("attentions");
            bool heads = wanted.Any(w => w is "prediction_logits" or "seq_relationship_logits" or "loss");

            using var device = Cli.OpenDevice(parse);
            using var tape = new Tape(recording: false);
            bool wantAttentions = wanted.Contains("attentions");
            int b = inputs.Batch, s = inputs.SeqLen, h = config.HiddenSize;
            var result = new Dictionary<string, HostTensor>();
            BertEncoderOutputs encoded;
            // Only the parts asked for are computed: the vocabulary-wide logits alone are [B, S, V].
            using var full = heads ? BertFolder.Load(device, dir, stderr) : null;
            using var body = heads ? null : BertFolder.LoadBody(device, dir, addPoolingLayer: wanted.Contains("pooler_output"));
            // After the model: a config that does not describe its weights is the model folder's fault, not the batch's.
            CheckBatch(inputs, config, parse.GetValue(input)!);
            if (full is not null)
            {
                var o = full.Forward(tape, inputs, Dropouts.Off, outputAttentions: wantAttentions);
                encoded = new BertEncoderOutputs { LastHiddenState = o.LastHiddenState, PoolerOutput = o.PoolerOutput, HiddenStates = o.HiddenStates, Attentions = o.Attentions };
                if (wanted.Contains("prediction_logits")) result["prediction_logits"] = new([b, s, config.VocabSize], o.PredictionLogits.Value.ToHost());
                if (wanted.Contains("seq_relationship_logits")) result["seq_relationship_logits"] = new([b, config.SentenceClasses], o.SeqRelationshipLogits.Value.ToHost());
                if (wanted.Contains("loss") && o.ReadLoss() is { } loss) result["loss"] = new([], [loss]);
            }
            else encoded = body!.Forward(tape, inputs, Dropouts.Off, outputAttentions: wantAttentions);
            if (wanted.Contains("last_hidden_state")) result["last_hidden_state"] = new([b, s, h], encoded.LastHiddenState.Value.ToHost());
            if (wanted.Contains("pooler_output")) result["pooler_output"] = new([b, h], encoded.PoolerOutput!.Value.ToHost());
            if (wanted.Contains("hidden_states"))
                for (int i = 0; i < encoded.HiddenStates.Count; i++) result[$"hidden_states.{i}"] = new([b, s, h], encoded.HiddenStates[i].Value.ToHost());
            if (wantAttentions)
                for (int i = 0; i < encoded.Attentions!.Count; i++)
                    result[$"attentions.{i}"] = new(encoded.Attentions[i].Shape, encoded.Attentions[i].ToHost());
            SafeTensors.Write(parse.GetValue(output)!, result);
            return 0;
        });
        return command;
    }

    private static Command Grad(TextWriter stderr)
    {
        var model = Required("--model", "model folder (config.json, model.safetensors)");
        var input = Required("--input", "BATCH.json with labels and/or next_sentence_label");
        var output = Required("--out", "GRADS.safetensors to write");
        var command = new Command("grad", "Write the loss and dLoss/dParameter under HF names (dropout off).") { model, input, output };
        command.SetAction(parse =>
        {
            var inputs = ReadBatch(parse.GetValue(input)!);
            using var device = Cli.OpenDevice(parse);
            using var bert = BertFolder.Load(device, parse.GetValue(model)!, stderr);
            CheckBatch(inputs, bert.Config, parse.GetValue(input)!);
            if (inputs.Labels is null && inputs.NextSentenceLabel is null)
                throw new ArgumentException("grad needs labels and/or next_sentence_label in the batch");
            var result = new Dictionary<string, HostTensor>();
            using (var tape = new Tape())
            {
                var o = bert.Forward(tape, inputs, Dropouts.Off, maskedOnly: inputs.Labels is not null);
                result["loss"] = new([], [o.ReadLoss()!.Value]);
                tape.Backward();
            }
            foreach (var name in bert.Parameters.Names)
                result[name] = new(bert.Parameters[name].Shape, bert.Parameters.GetGrad(name));
            SafeTensors.Write(parse.GetValue(output)!, result);
            return 0;
        });
        return command;
    }

    private static Command Vocab(TextWriter stdout)
    {
        var corpus = new Option<string[]>("--corpus") { Description = "text files (default: the embedded default corpus)", AllowMultipleArgumentsPerToken = true };
        var size = new Option<int>("--size") { Description = "vocabulary size, special tokens included", DefaultValueFactory = _ => 8192 };
        var output = Required("--out", "vocab.txt to write");
        var command = new Command("vocab", "Build a WordPiece vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK] first) from raw text.") { corpus, size, output };
        command.SetAction(parse =>
        {
            var files = parse.GetValue(corpus) ?? [];
            foreach (var f in files)
                if (!File.Exists(f)) throw new ArgumentException($"{f}: no such corpus file");
            var texts = files.Length > 0 ? files.SelectMany(File.ReadLines) : DefaultCorpus.Documents().Select(d => d.Text);
            var vocab = WordPieceTrainer.Train(texts, parse.GetValue(size));
            WriteVocab(vocab, parse.GetValue(output)!);
            stdout.WriteLine($"wrote {parse.GetValue(output)}: {vocab.Count} tokens");
            return 0;
        });
        return command;
    }

    private static Command Tokenize(TextWriter stdout)
    {
        var model = Required("--model", "model folder with vocab.txt");
        var pair = new Option<bool>("--pair") { Description = "each input line is two texts separated by a tab" };
        var command = new Command("tokenize", "Read lines from standard input; print input_ids and token_type_ids as one JSON object per line.") { model, pair };
        command.SetAction(parse =>
        {
            var encoder = BertTextEncoder.Load(parse.GetValue(model)!);
            bool pairs = parse.GetValue(pair);
            string? line;
            while ((line = Console.In.ReadLine()) is not null)
            {
                string[] parts = pairs ? line.Split('\t', 2) : [line];
                if (pairs && parts.Length != 2) throw new ArgumentException("--pair expects two texts separated by a tab on each line");
                var x = encoder.Batch([parts[0]], pairs ? [parts[1]] : null);
                stdout.WriteLine(JsonSerializer.Serialize(new { input_ids = x.InputIds, token_type_ids = x.TokenTypeIds }));
            }
            return 0;
        });
        return command;
    }

    public static string[] ReadVocab(string path)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: no such vocabulary file");
        var lines = File.ReadAllLines(path);
        if (lines.Length == 0) throw new ArgumentException($"{path}: empty vocabulary");
        return lines;
    }

    private static void WriteVocab(IEnumerable<string> tokens, string path) =>
        AtomicFile.WriteText(path, string.Join("\n", tokens) + "\n");

    /// <summary>BATCH.json: HF's keys, each a list of equal-length rows (next_sentence_label a flat list).</summary>
    /// <summary>The batch against the model (ids in the vocabulary, lengths within the positions), errors naming the batch file.</summary>
    private static void CheckBatch(BertInputs inputs, BertConfig config, string path)
    {
        try { inputs.Validate(config); }
        catch (ArgumentException e) { throw new ArgumentException($"{path}: {e.Message}"); }
    }

    public static BertInputs ReadBatch(string path)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: no such batch file");
        var obj = StrictJson.Parse(BoundedFile.ReadAllText(path, BoundedFile.DataBytes, "batch JSON"), path, m => new ArgumentException(m)) as JsonObject ?? throw new ArgumentException($"{path}: not a JSON object");
        int[][]? Rows(string key)
        {
            if (!obj.TryGetPropertyValue(key, out var node) || node is null) return null;
            try { return node.AsArray().Select(r => r!.AsArray().Select(v => v!.GetValue<int>()).ToArray()).ToArray(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
            {
                throw new ArgumentException($"{path}: {key} must be a list of rows of integers");
            }
        }
        var ids = Rows("input_ids") ?? throw new ArgumentException($"{path}: input_ids is missing");
        int[]? nsp = null;
        if (obj.TryGetPropertyValue("next_sentence_label", out var n) && n is not null)
        {
            try { nsp = n.AsArray().Select(v => v!.GetValue<int>()).ToArray(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
            {
                throw new ArgumentException($"{path}: next_sentence_label must be a list of integers");
            }
        }
        var (types, mask, labels) = (Rows("token_type_ids"), Rows("attention_mask"), Rows("labels"));
        try
        {
            return BertInputs.FromRows(ids, types, mask, labels, nsp);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{path}: {e.Message}");
        }
    }
}
