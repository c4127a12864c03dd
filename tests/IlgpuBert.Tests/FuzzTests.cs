using System.Text;
using CsCheck;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using Xunit.Sdk;

namespace IlgpuBert.Tests;

/// <summary>
/// Small valid inputs of every format the tool reads: a pretrained model and three fine-tuned ones
/// (classification, tagging, QA) with their vocabulary, a batch, and labelled TSV/CSV/JSONL/CoNLL/SQuAD files.
/// </summary>
public sealed class FuzzInputs : IDisposable
{
    private static readonly string[] Words = ["the", "value", "of", "a", "property", "returns", "gets", "##s", "sky", "is", "blue", "what", "color", "?", ".", ","];

    public FuzzInputs()
    {
        string vocab = Dir.File("vocab.txt");
        File.WriteAllLines(vocab, Text.WordPieceTrainer.SpecialTokens.Concat(Words));
        var config = new BertConfig
        {
            VocabSize = File.ReadAllLines(vocab).Length, HiddenSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2,
            IntermediateSize = 32, MaxPositionEmbeddings = 64,
        };
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using (var bert = new BertForPreTraining(device, config))
        {
            bert.Parameters.Initialize(1);
            BertFolder.Save(bert, Pretrained, vocab);
        }
        foreach (var (dir, legacy) in new[] { (Torch, false), (TorchLegacy, true) })
            PyTorchCheckpointTests.Twin(Pretrained, dir, legacy);
        foreach (var (dir, spec) in new[]
                 {
                     (Classifier, new TaskSpec(TaskKind.Classification, ["neg", "pos"])),
                     (Tagger, new TaskSpec(TaskKind.TokenClassification, ["O", "B-X", "I-X"])),
                     (Reader, new TaskSpec(TaskKind.QuestionAnswering, [])),
                 })
        {
            using var model = new BertForTask(device, config, spec);
            model.Parameters.Initialize(2);
            model.Save(dir, vocab);
        }
        File.WriteAllText(Path.Combine(Classifier, "tokenizer_config.json"), "{\"do_lower_case\": true, \"strip_accents\": null, \"tokenize_chinese_chars\": true}\n");
        File.WriteAllText(Batch, """
            {"input_ids": [[2, 5, 9, 3, 6, 3], [2, 7, 3, 0, 0, 0]], "token_type_ids": [[0,0,0,0,1,1],[0,0,0,0,0,0]],
             "attention_mask": [[1,1,1,1,1,1],[1,1,1,0,0,0]], "labels": [[-100, 5, -100, -100, 11, -100], [-100, 9, -100, -100, -100, -100]],
             "next_sentence_label": [1, 0]}
            """);
        File.WriteAllText(Tsv, "text\tlabel\nthe value returns\tpos\nthe sky is blue\tneg\ngets a property .\tpos\nwhat color ?\tneg\n");
        File.WriteAllText(Csv, "text,label\n\"the value, of\",pos\n\"the sky \"\"is\"\" blue\",neg\ngets a property,pos\nwhat color ?,neg\n");
        File.WriteAllText(Jsonl, "{\"text\": \"the value returns\", \"label\": \"pos\"}\n{\"text\": \"the sky is blue\", \"label\": \"neg\"}\n{\"text\": \"what color ?\", \"label\": \"neg\"}\n");
        File.WriteAllText(Conll, "-DOCSTART- O\n\nthe O\nsky B-X\nis O\nblue B-X\n. O\n\nwhat O\ncolor B-X\nvalue I-X\n");
        File.WriteAllText(Squad, """
            {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "The sky is blue. What value returns?",
              "qas": [{"id": "q1", "question": "What color?", "answers": [{"text": "blue", "answer_start": 11}]},
                      {"id": "q2", "question": "what returns?", "answers": [{"text": "value", "answer_start": 22}]}]}]}]}
            """);
    }

    public TempDir Dir { get; } = new();
    public string Pretrained => Dir.File("pretrained");
    public string Torch => Dir.File("torch");
    public string TorchLegacy => Dir.File("torch-legacy");
    public string Classifier => Dir.File("classifier");
    public string Tagger => Dir.File("tagger");
    public string Reader => Dir.File("reader");
    public string Batch => Dir.File("batch.json");
    public string Tsv => Dir.File("train.tsv");
    public string Csv => Dir.File("train.csv");
    public string Jsonl => Dir.File("train.jsonl");
    public string Conll => Dir.File("train.conll");
    public string Squad => Dir.File("squad.json");
    public string Output => Dir.File("output");

    public void Dispose() => Dir.Dispose();
}

/// <summary>
/// The fuzz suite: every file format the tool reads, mutated by <see cref="FuzzMutations"/> and run
/// through the verb that reads it. Each case must either be read (exit 0) or be refused with exit 2, one
/// line on stderr naming the file, no stack trace, nothing on stdout and no output written, within the
/// time limit. Cases are drawn from fixed seeds, so CI runs the same 2,700 every time;
/// ILGPU_BERT_FUZZ_SEED picks other ones and ILGPU_BERT_FUZZ_SCALE multiplies their number.
/// </summary>
public class FuzzTests(FuzzInputs inputs) : IClassFixture<FuzzInputs>
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private static readonly string[] ModelFiles = ["config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json"];

    private sealed record Target(string File, FileShape Shape, int Cases, string[] Args, bool InModel);

    private Target For(string name)
    {
        string[] Forward(string model) => ["forward", "--model", model, "--input", inputs.Batch, "--out", inputs.Output, "--device", "cpu"];
        string[] Evaluate(string model, string data) => ["evaluate", "--model", model, "--eval", data, "--out", inputs.Output, "--device", "cpu"];
        return name switch
        {
            "model.safetensors" => new(Path.Combine(inputs.Pretrained, "model.safetensors"), FileShape.SafeTensors, 400, Forward(inputs.Pretrained), true),
            "pytorch_model.bin" => new(Path.Combine(inputs.Torch, "pytorch_model.bin"), FileShape.TorchZip, 300, Forward(inputs.Torch), true),
            "legacy pytorch_model.bin" => new(Path.Combine(inputs.TorchLegacy, "pytorch_model.bin"), FileShape.Bytes, 300, Forward(inputs.TorchLegacy), true),
            "config.json" => new(Path.Combine(inputs.Pretrained, "config.json"), FileShape.Json, 250, Forward(inputs.Pretrained), true),
            "task config.json" => new(Path.Combine(inputs.Tagger, "config.json"), FileShape.Json, 150, Evaluate(inputs.Tagger, inputs.Conll), true),
            "vocab.txt" => new(Path.Combine(inputs.Classifier, "vocab.txt"), FileShape.Lines, 200, Evaluate(inputs.Classifier, inputs.Tsv), true),
            "tokenizer_config.json" => new(Path.Combine(inputs.Classifier, "tokenizer_config.json"), FileShape.Json, 100, Evaluate(inputs.Classifier, inputs.Tsv), true),
            "batch.json" => new(inputs.Batch, FileShape.Json, 250, Forward(inputs.Pretrained), false),
            "train.tsv" => new(inputs.Tsv, FileShape.Lines, 150, Evaluate(inputs.Classifier, inputs.Tsv), false),
            "train.csv" => new(inputs.Csv, FileShape.Lines, 150, Evaluate(inputs.Classifier, inputs.Csv), false),
            "train.jsonl" => new(inputs.Jsonl, FileShape.JsonLines, 150, Evaluate(inputs.Classifier, inputs.Jsonl), false),
            "train.conll" => new(inputs.Conll, FileShape.Lines, 150, Evaluate(inputs.Tagger, inputs.Conll), false),
            _ => new(inputs.Squad, FileShape.Json, 150, Evaluate(inputs.Reader, inputs.Squad), false),
        };
    }

    public static TheoryData<string> Files() =>
    [
        "model.safetensors", "pytorch_model.bin", "legacy pytorch_model.bin", "config.json", "task config.json", "vocab.txt", "tokenizer_config.json",
        "batch.json", "train.tsv", "train.csv", "train.jsonl", "train.conll", "squad.json",
    ];

    [Theory]
    [MemberData(nameof(Files))]
    public void Mutated_files_are_read_or_refused_with_one_line_naming_them(string name)
    {
        var target = For(name);
        byte[] original = File.ReadAllBytes(target.File);
        ulong seed = ulong.TryParse(Environment.GetEnvironmentVariable("ILGPU_BERT_FUZZ_SEED"), out var s) ? s : 0;
        int scale = int.TryParse(Environment.GetEnvironmentVariable("ILGPU_BERT_FUZZ_SCALE"), out var k) ? k : 1;
        // The unmutated inputs must be read, or every refusal below would prove nothing.
        var clean = Run(target.Args);
        Assert.True(clean.Code == 0, $"the unmutated {name} is refused: {clean.Err}");

        var failures = new List<string>();
        int refused = 0;
        var messages = new SortedSet<string>();
        try
        {
            for (int i = 0; i < target.Cases * scale && failures.Count < 10; i++)
            {
                var mutations = FuzzMutations.Gen.Generate(new PCG(Stream(name), seed + (ulong)i), null, out _);
                var mutated = FuzzMutations.Apply(target.Shape, original, mutations);
                File.WriteAllBytes(target.File, mutated);
                File.Delete(inputs.Output);
                var (code, stdout, err) = Run(target.Args);
                string? problem = code switch
                {
                    0 => File.Exists(inputs.Output) ? null : "exit 0 but no output written",
                    2 => Refusal(target, stdout, err),
                    _ => $"exit {code}",
                };
                if (code == 2) { refused++; messages.Add(err.Trim()); }
                if (problem is not null)
                    failures.Add($"case {i} (seed {seed + (ulong)i}, mutations {string.Join(" ", mutations.AsEnumerable())}): {problem}\n    stderr: {Shorten(err)}");
            }
        }
        finally
        {
            File.WriteAllBytes(target.File, original);
            File.Delete(inputs.Output);
        }
        if (Environment.GetEnvironmentVariable("ILGPU_BERT_FUZZ_LOG") is { } log)
            File.AppendAllLines(log, messages.Select(m => $"{name}\t{Shorten(m)}"));
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} of the mutated files broke the contract:\n" + string.Join("\n", failures));
        Assert.True(refused > 0, $"{name}: no mutation was refused, so the suite tested nothing");
    }

    /// <summary>What is wrong with an exit-2 answer, or null when it is the contract: one line naming the file, nothing written.</summary>
    private string? Refusal(Target target, string stdout, string err)
    {
        var lines = err.TrimEnd().Split('\n');
        if (lines.Length != 1) return $"{lines.Length} lines on stderr";
        if (err.Contains("   at ")) return "a stack trace";
        if (stdout.Length > 0) return "output on stdout";
        if (File.Exists(inputs.Output)) return "an output file was written";
        string file = Path.GetFileName(target.File);
        bool named = err.Contains(file) || (target.InModel && ModelFiles.Any(err.Contains));
        return named ? null : $"the message does not name {file}";
    }

    private static (int Code, string Out, string Err) Run(string[] args)
    {
        var run = Task.Run(() => CliRunner.Run(args));
        if (!run.Wait(Limit)) throw new XunitException($"ilgpu-bert {string.Join(' ', args)} did not finish within {Limit.TotalSeconds} s");
        return run.Result;
    }

    /// <summary>A PCG stream per file (string.GetHashCode differs between processes).</summary>
    private static uint Stream(string name) => name.Aggregate(17u, (h, c) => h * 31 + c);

    private static string Shorten(string s)
    {
        s = s.Trim().Replace("\n", "⏎");
        return s.Length <= 400 ? s : s[..400] + $"… ({s.Length} chars)";
    }
}
