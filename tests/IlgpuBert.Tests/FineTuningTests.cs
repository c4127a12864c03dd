using System.Text;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

/// <summary>
/// Small synthetic tasks written as real files in each format, a small randomly initialised
/// "pretrained" model, and fine-tuning runs that must end clearly better than chance; then each
/// fine-tuning improvement against its neutral setting.
/// </summary>
public class FineTuningTests
{
    private static readonly string[] Positive = ["good", "great", "fine", "nice"], Negative = ["bad", "awful", "poor", "sad"],
        Neutral = ["table", "chair", "door", "wall"], Filler = ["the", "a", "it", "was", "is", "very", "so", "and", "then", "we"],
        People = ["alice", "bob", "carol"], Cities = ["paris", "rome"], Colors = ["red", "blue", "green", "yellow"];

    /// <summary>A model folder with a word-level vocabulary of the toy words and random weights.</summary>
    internal static string PretrainedModel(TempDir dir, BertDevice device, int seed = 1)
    {
        string path = Path.Combine(dir.Path, "pretrained");
        Directory.CreateDirectory(path);
        var words = Positive.Concat(Negative).Concat(Neutral).Concat(Filler).Concat(People).Concat(Cities).Concat(Colors)
            .Concat(["new", "york", "what", "color", "?", ".", ","]);
        File.WriteAllLines(Path.Combine(path, BertFolder.VocabFile), WordPieceTrainer.SpecialTokens.Concat(words));
        int vocab = File.ReadAllLines(Path.Combine(path, BertFolder.VocabFile)).Length;
        var config = new BertConfig
        {
            VocabSize = vocab, HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 64,
        };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(seed);
        BertFolder.Save(model, path);
        return path;
    }

    private static string Sentence(Random rng, string key)
    {
        var words = Enumerable.Range(0, rng.Next(3, 6)).Select(_ => Filler[rng.Next(Filler.Length)]).ToList();
        words.Insert(rng.Next(words.Count + 1), key);
        return string.Join(" ", words);
    }

    private static (string Label, string[] Pool) Pool(Random rng) =>
        rng.Next(3) switch { 0 => ("positive", Positive), 1 => ("negative", Negative), _ => ("neutral", Neutral) };

    /// <summary>Sentiment by key word, as TSV with the text in a "sentence" column.</summary>
    internal static void WriteClassification(string path, int n, int seed)
    {
        var rng = new Random(seed);
        var sb = new StringBuilder("idx\tsentence\tlabel\n");
        for (int i = 0; i < n; i++)
        {
            var (label, pool) = Pool(rng);
            sb.Append($"{i}\t{Sentence(rng, pool[rng.Next(pool.Length)])}\t{label}\n");
        }
        File.WriteAllText(path, sb.ToString());
    }

    private static FineTuneOptions Options(string model, string train, string eval, TaskKind task) => new()
    {
        Model = model, Train = train, Eval = eval, Task = task, Epochs = 4, LearningRate = 2e-3f, BatchSize = 16, MaxLength = 32, Seed = 3,
    };

    private static JsonObject Run(BertDevice device, FineTuneOptions o, string outDir) => new FineTuner(device, TextWriter.Null).Run(o, outDir);

    private static double Metric(JsonObject m, string key) => m[key]!.GetValue<double>();

    [Fact]
    public void Classification_from_tsv_beats_chance_and_writes_a_loadable_model_and_eval_json()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        WriteClassification(dir.File("train.tsv"), 240, 1);
        WriteClassification(dir.File("dev.tsv"), 90, 2);
        // cls pooling reads the pooler's tanh of [CLS], which sits on a plateau for a few epochs from a random start: eight epochs.
        var o = Options(model, dir.File("train.tsv"), dir.File("dev.tsv"), TaskKind.Classification) with { Columns = new ColumnSpec(Text: "sentence"), Epochs = 8 };
        var m = Run(device, o, dir.File("out"));
        Assert.True(Metric(m, "accuracy") > 0.8, m.ToJsonString());
        Assert.True(Metric(m, "majority_baseline") < 0.5);
        var saved = JsonNode.Parse(File.ReadAllText(dir.File("out/eval.json")))!;
        Assert.Equal(Metric(m, "accuracy"), saved["accuracy"]!.GetValue<double>());
        Assert.Equal(8, saved["epochs"]!.AsArray().Count);
        Assert.Equal(8 * 15 + 1, File.ReadAllLines(dir.File("out/metrics.csv")).Length); // 240 / 16 steps per epoch, plus the header
        using var loaded = BertForTask.Load(device, dir.File("out"));
        Assert.Equal(["negative", "neutral", "positive"], loaded.Task.Labels);
    }

    [Fact]
    public void Pair_classification_from_csv_reads_the_second_text()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        // The label is the second text's sentiment; the first text holds a random distractor, so only a model that reads the pair can beat chance.
        void Write(string path, int n, int seed)
        {
            var rng = new Random(seed);
            var sb = new StringBuilder("text,text_pair,label\n");
            for (int i = 0; i < n; i++)
            {
                var (_, distractor) = Pool(rng);
                var (label, pool) = Pool(rng);
                sb.Append($"\"{Sentence(rng, distractor[rng.Next(4)])} ,\",\"{Sentence(rng, pool[rng.Next(4)])}\",{label}\n");
            }
            File.WriteAllText(path, sb.ToString());
        }
        Write(dir.File("train.csv"), 240, 3);
        Write(dir.File("dev.csv"), 90, 4);
        var o = Options(model, dir.File("train.csv"), dir.File("dev.csv"), TaskKind.PairClassification) with { Pooling = Pooling.ConcatLast4, Epochs = 8 };
        var m = Run(device, o, dir.File("out"));
        Assert.True(Metric(m, "accuracy") > 0.75, m.ToJsonString());
    }

    [Fact]
    public void Regression_from_jsonl_correlates_with_the_targets()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        // Target: positive key words minus negative ones.
        void Write(string path, int n, int seed)
        {
            var rng = new Random(seed);
            var sb = new StringBuilder();
            for (int i = 0; i < n; i++)
            {
                int pos = rng.Next(3), neg = rng.Next(3);
                var words = Enumerable.Range(0, pos).Select(_ => Positive[rng.Next(4)]).Concat(Enumerable.Range(0, neg).Select(_ => Negative[rng.Next(4)]))
                    .Concat(Enumerable.Range(0, 2).Select(_ => Filler[rng.Next(Filler.Length)])).OrderBy(_ => rng.Next()).ToList();
                sb.Append(new JsonObject { ["text"] = string.Join(" ", words), ["label"] = pos - neg }.ToJsonString()).Append('\n');
            }
            File.WriteAllText(path, sb.ToString());
        }
        Write(dir.File("train.jsonl"), 320, 5);
        Write(dir.File("dev.jsonl"), 90, 6);
        var m = Run(device, Options(model, dir.File("train.jsonl"), dir.File("dev.jsonl"), TaskKind.Regression), dir.File("out"));
        Assert.True(Metric(m, "pearson") > 0.8, m.ToJsonString());
        Assert.True(Metric(m, "spearman") > 0.75, m.ToJsonString());
        Assert.True(Metric(m, "mse") < Metric(m, "mean_baseline_mse") / 2, m.ToJsonString());
    }

    private static void WriteConll(string path, int n, int seed)
    {
        var rng = new Random(seed);
        var sb = new StringBuilder("-DOCSTART- O\n\n");
        for (int i = 0; i < n; i++)
        {
            var tokens = new List<(string, string)>();
            for (int k = rng.Next(4, 8); k > 0; k--)
            {
                switch (rng.Next(5))
                {
                    case 0: tokens.Add((People[rng.Next(3)], "B-PER")); break;
                    case 1: tokens.Add((Cities[rng.Next(2)], "B-LOC")); break;
                    case 2: tokens.Add(("New", "B-LOC")); tokens.Add(("York", "I-LOC")); break;
                    default: tokens.Add((Filler[rng.Next(Filler.Length)], "O")); break;
                }
            }
            foreach (var (w, t) in tokens) sb.Append($"{w} X {t}\n");
            sb.Append('\n');
        }
        File.WriteAllText(path, sb.ToString());
    }

    [Fact]
    public void Token_classification_from_conll_finds_the_entities()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        WriteConll(dir.File("train.conll"), 160, 7);
        WriteConll(dir.File("dev.conll"), 60, 8);
        var m = Run(device, Options(model, dir.File("train.conll"), dir.File("dev.conll"), TaskKind.TokenClassification), dir.File("out"));
        Assert.True(Metric(m, "entity_f1") > 0.8, m.ToJsonString());
        Assert.True(Metric(m, "accuracy") > Metric(m, "majority_baseline"), m.ToJsonString());
    }

    private static void WriteSquad(string path, int n, int seed)
    {
        var rng = new Random(seed);
        var paragraphs = new JsonArray();
        for (int i = 0; i < n; i++)
        {
            string color = Colors[rng.Next(4)];
            string before = string.Join(" ", Enumerable.Range(0, rng.Next(2, 6)).Select(_ => Filler[rng.Next(Filler.Length)]));
            string after = string.Join(" ", Enumerable.Range(0, rng.Next(2, 6)).Select(_ => Filler[rng.Next(Filler.Length)]));
            string context = $"{before} {color}, {after}.";
            paragraphs.Add(new JsonObject
            {
                ["context"] = context,
                ["qas"] = new JsonArray(new JsonObject
                {
                    ["id"] = $"q{i}", ["question"] = "What color?",
                    ["answers"] = new JsonArray(new JsonObject { ["text"] = color, ["answer_start"] = before.Length + 1 }),
                }),
            });
        }
        var root = new JsonObject { ["version"] = "1.1", ["data"] = new JsonArray(new JsonObject { ["title"] = "toy", ["paragraphs"] = paragraphs }) };
        File.WriteAllText(path, root.ToJsonString());
    }

    [Fact]
    public void Question_answering_from_squad_points_at_the_answer_span()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        WriteSquad(dir.File("train.json"), 200, 9);
        WriteSquad(dir.File("dev.json"), 60, 10);
        var m = Run(device, Options(model, dir.File("train.json"), dir.File("dev.json"), TaskKind.QuestionAnswering), dir.File("out"));
        Assert.True(Metric(m, "exact_match") > 0.7, m.ToJsonString());
        Assert.True(Metric(m, "f1") >= Metric(m, "exact_match"));
    }

    [Fact]
    public void Qa_features_map_pieces_back_to_exact_characters()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        var encoder = BertTextEncoder.Load(model);
        var featurizer = new Featurizer(encoder, new TaskSpec(TaskKind.QuestionAnswering, []), 32);
        var e = new TaskExample { Text = "what color ?", TextPair = "it was  blue, then red.", Answers = [new QaAnswer("red", 19)] };
        var f = featurizer.Make(e, labelled: true);
        Assert.Equal(encoder.Encode("red")[0], f.Ids[f.Start]);
        Assert.Equal(f.Start, f.End);
        Assert.Equal("red", e.TextPair![f.WordSpans![f.PieceWord![f.Start - f.ContextOffset]].Start..f.WordSpans[f.PieceWord[f.End - f.ContextOffset]].End]);
        // A window too short for the answer: it points at [CLS] and says so.
        var cut = new Featurizer(encoder, new TaskSpec(TaskKind.QuestionAnswering, []), 10).Make(e, labelled: true);
        Assert.True(cut.AnswerTruncated);
        Assert.Equal((0, 0), (cut.Start, cut.End));
    }

    [Fact]
    public void Cli_finetune_evaluate_and_predict_work_together()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        WriteClassification(dir.File("train.tsv"), 96, 15);
        WriteClassification(dir.File("dev.tsv"), 30, 16);
        var (code, stdout, err) = CliRunner.Run("finetune", "--model", model, "--train", dir.File("train.tsv"), "--eval", dir.File("dev.tsv"),
            "--text-column", "sentence", "--out", dir.File("out"), "--epochs", "2", "--batch-size", "16", "--max-length", "32", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("epoch 2:", stdout);
        var eval = JsonNode.Parse(File.ReadAllText(dir.File("out/eval.json")))!;
        Assert.NotNull(eval["accuracy"]);
        Assert.NotNull(eval["majority_baseline"]);
        Assert.NotNull(eval["macro_f1"]);
        Assert.NotNull(eval["mcc"]);

        (code, stdout, err) = CliRunner.Run("evaluate", "--model", dir.File("out"), "--eval", dir.File("dev.tsv"), "--text-column", "sentence",
            "--out", dir.File("again.json"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal(eval["accuracy"]!.GetValue<double>(), JsonNode.Parse(stdout)!["accuracy"]!.GetValue<double>(), 12);
        Assert.True(File.Exists(dir.File("again.json")));

        File.WriteAllText(dir.File("texts.txt"), "it was very good\n\nthe door is so sad\n");
        (code, stdout, err) = CliRunner.Run("predict", "--model", dir.File("out"), "--input", dir.File("texts.txt"), "--device", "cpu");
        Assert.True(code == 0, err);
        var answered = stdout.TrimEnd('\n').Split('\n');
        Assert.Equal(3, answered.Length); // one output line per input line, the blank one kept blank
        Assert.Equal("", answered[1]);
        var lines = answered.Where(l => l.Length > 0).ToArray();
        Assert.Equal(2, lines.Length);
        Assert.All(lines, l =>
        {
            var parts = l.Split('\t');
            Assert.Contains(parts[0], new[] { "negative", "neutral", "positive" });
            Assert.InRange(double.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture), 1 / 3.0 - 1e-4, 1);
        });

        var stdin = Console.In;
        try
        {
            Console.SetIn(new StringReader("a nice table\n"));
            (code, stdout, err) = CliRunner.Run("predict", "--model", dir.File("out"), "--device", "cpu");
        }
        finally { Console.SetIn(stdin); }
        Assert.True(code == 0, err);
        Assert.Single(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void Cli_reports_bad_input_in_one_line()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        File.WriteAllText(dir.File("bad.tsv"), "text\tlabel\nfine\tpos\nno label here\n");
        var (code, _, err) = CliRunner.Run("finetune", "--model", model, "--train", dir.File("bad.tsv"), "--out", dir.File("out"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("bad.tsv:3", err);
        (code, _, err) = CliRunner.Run("finetune", "--model", model, "--task", "qa", "--out", dir.File("out"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("needs --train", err);
        (code, _, err) = CliRunner.Run("predict", "--model", model, "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("not a fine-tuned model", err);
        (code, _, err) = CliRunner.Run("finetune", "--model", model, "--pooling", "max", "--out", dir.File("out"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("unknown pooling", err);
    }

    [Fact]
    public void Token_classification_and_qa_predictions_print_tags_and_spans()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string model = PretrainedModel(dir, device);
        WriteConll(dir.File("train.conll"), 32, 17);
        var o = Options(model, dir.File("train.conll"), dir.File("train.conll"), TaskKind.TokenClassification) with { Epochs = 1 };
        Run(device, o, dir.File("ner"));
        File.WriteAllText(dir.File("s.txt"), "alice went to new york\n");
        var (code, stdout, err) = CliRunner.Run("predict", "--model", dir.File("ner"), "--input", dir.File("s.txt"), "--device", "cpu");
        Assert.True(code == 0, err);
        var tagged = stdout.Trim().Split(' ');
        Assert.Equal(5, tagged.Length);
        Assert.All(tagged, t => Assert.Matches("^[a-z]+/(O|[BI]-(PER|LOC))$", t));

        WriteSquad(dir.File("qa.json"), 32, 18);
        Run(device, Options(model, dir.File("qa.json"), dir.File("qa.json"), TaskKind.QuestionAnswering) with { Epochs = 1 }, dir.File("qa"));
        File.WriteAllText(dir.File("q.txt"), "what color?\tthe wall was red, then we\n");
        (code, stdout, err) = CliRunner.Run("predict", "--model", dir.File("qa"), "--input", dir.File("q.txt"), "--device", "cpu");
        Assert.True(code == 0, err);
        var answer = stdout.Split('\t')[0];
        Assert.Contains(answer, "the wall was red, then we"); // a span of the context, characters as written
        Assert.NotEmpty(answer);
    }

    /// <summary>
    /// The acceptance run: a tiny model pretrained for 40 steps on the embedded corpus,
    /// then fine-tuned with every default on the embedded default task, beats the majority
    /// baseline on the held-out sentences by at least 15 points of accuracy.
    /// </summary>
    [Fact]
    public void Pretrained_40_steps_then_fine_tuned_with_defaults_beats_the_majority_baseline_by_15_points()
    {
        var teacher = DefaultTaskModel.Value;
        double accuracy = Metric(teacher.Eval, "accuracy"), baseline = Metric(teacher.Eval, "majority_baseline");
        Assert.True(accuracy >= baseline + 0.15, $"accuracy {accuracy:F4}, majority baseline {baseline:F4}\n{teacher.Log}");
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var model = BertForTask.Load(device, teacher.Dir);
        Assert.Equal(DefaultTask.Families, model.Task.Labels.Count);
    }

    /// <summary>The acceptance run's model (pretrained 40 steps, fine-tuned with defaults), made once per test run and shared with the compression tests.</summary>
    internal sealed record TrainedModel(string Dir, JsonObject Eval, string Log);

    internal static readonly Lazy<TrainedModel> DefaultTaskModel = new(() =>
    {
        var dir = Directory.CreateTempSubdirectory("ilgpu-bert-acceptance").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        new Pretraining.Trainer(device, TextWriter.Null).Run(new Pretraining.PretrainingOptions { Steps = 40, EvalEvery = 0 }, Path.Combine(dir, "pretrained"));
        var log = new StringWriter();
        var m = new FineTuner(device, log).Run(new FineTuneOptions { Model = Path.Combine(dir, "pretrained") }, Path.Combine(dir, "families"));
        return new TrainedModel(Path.Combine(dir, "families"), m, log.ToString());
    });
}
