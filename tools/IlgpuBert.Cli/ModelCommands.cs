// Model verbs: init, forward, grad (the contract scripts rely on, see the model issue), vocab and
// tokenize. Every failure is an exception the entry point turns into one line and exit code 2;
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
    }

    private static Option<string> Required(string name, string description) => Cli.Required(name, description);

    private static Command Init(TextWriter stdout, TextWriter stderr)
    {
        var size = new Option<string>("--size") { Description = "tiny, mini, small, medium, base or large (Turc et al. 2019)", DefaultValueFactory = _ => "tiny" };
        var vocab = new Option<string?>("--vocab") { Description = "vocab.txt to use (default: built from the embedded default corpus)" };
        var vocabSize = new Option<int>("--vocab-size") { Description = "size of the vocabulary built when --vocab is absent", DefaultValueFactory = _ => 8192 };
        var seed = new Option<int>("--seed") { Description = "initialisation seed", DefaultValueFactory = _ => 0 };
        var output = Required("--out", "model folder to write");
        var command = new Command("init", "Write a freshly initialised BertForPreTraining in HF layout.") { size, vocab, vocabSize, seed, output };
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
                _ = BertTextEncoder.FromVocab(vocabPath); // a vocabulary every later verb would refuse is refused now, before anything is written
                using var device = Cli.OpenDevice(parse);
                using var model = new BertForPreTraining(device, config);
                model.Parameters.Initialize(parse.GetValue(seed));
                BertFolder.Save(model, dir, vocabPath);
                stdout.WriteLine($"wrote {dir}: {parse.GetValue(size)} (L={config.NumHiddenLayers}, H={config.HiddenSize}, A={config.NumAttentionHeads}), vocabulary {vocabCount}");
            }
            finally
            {
                if (built is not null) File.Delete(built);
            }
            return 0;
        });
        return command;
    }

    private static Command Forward(TextWriter stderr)
    {
        var model = Required("--model", "model folder (config.json, model.safetensors)");
        var input = Required("--input", "BATCH.json with input_ids, token_type_ids, attention_mask, optional labels and next_sentence_label");
        var output = Required("--out", "OUT.safetensors to write");
        var hidden = new Option<bool>("--hidden-states") { Description = "also write hidden_states.{0..L}" };
        var attentions = new Option<bool>("--attentions") { Description = "also write attentions.{0..L-1} [B, NH, S, S]" };
        var command = new Command("forward", "Run BertForPreTraining on a batch (dropout off) and write its outputs.") { model, input, output, hidden, attentions };
        command.SetAction(parse =>
        {
            var inputs = ReadBatch(parse.GetValue(input)!);
            using var device = Cli.OpenDevice(parse);
            using var bert = BertFolder.Load(device, parse.GetValue(model)!, stderr);
            CheckBatch(inputs, bert.Config, parse.GetValue(input)!);
            using var tape = new Tape(recording: false);
            bool wantAttentions = parse.GetValue(attentions);
            var o = bert.Forward(tape, inputs, Dropouts.Off, outputAttentions: wantAttentions);
            int b = inputs.Batch, s = inputs.SeqLen, h = bert.Config.HiddenSize;
            var result = new Dictionary<string, HostTensor>
            {
                ["last_hidden_state"] = new([b, s, h], o.LastHiddenState.Value.ToHost()),
                ["pooler_output"] = new([b, h], o.PoolerOutput.Value.ToHost()),
                ["prediction_logits"] = new([b, s, bert.Config.VocabSize], o.PredictionLogits.Value.ToHost()),
                ["seq_relationship_logits"] = new([b, bert.Config.SentenceClasses], o.SeqRelationshipLogits.Value.ToHost()),
            };
            if (o.ReadLoss() is { } loss) result["loss"] = new([], [loss]);
            if (parse.GetValue(hidden))
                for (int i = 0; i < o.HiddenStates.Count; i++) result[$"hidden_states.{i}"] = new([b, s, h], o.HiddenStates[i].Value.ToHost());
            if (wantAttentions)
                for (int i = 0; i < o.Attentions!.Count; i++)
                    result[$"attentions.{i}"] = new(o.Attentions[i].Shape, o.Attentions[i].ToHost());
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
