using System.Globalization;
using System.Text.Json.Nodes;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

/// <summary>The distill / quantize / prune / compare commands, and the issue's acceptance run on the embedded default task.</summary>
public class CompressionCliTests
{
    private static (string Model, Dictionary<string, double> Value) Row(string csvLine)
    {
        var cells = csvLine.Split(',');
        return (cells[0].Trim('"'), new Dictionary<string, double> { ["heads"] = double.Parse(cells[3], CultureInfo.InvariantCulture), ["value"] = double.Parse(cells[^1], CultureInfo.InvariantCulture) });
    }

    /// <summary>
    /// The acceptance run: the default-task model (pretrained 40 steps, fine-tuned with defaults)
    /// distilled into a student with half its layers, quantized to int8, and pruned of half its
    /// heads by importance and at random, all through the CLI, then compared in one table.
    /// </summary>
    [Fact]
    public void On_the_default_task_distillation_quantization_and_pruning_meet_their_targets_and_the_table_is_written()
    {
        var teacher = FineTuningTests.DefaultTaskModel.Value;
        using var dir = new TempDir();
        string T(string name) => dir.File(name);
        void Cli(params string[] args)
        {
            var (code, stdout, err) = CliRunner.Run([.. args, "--device", "cpu"]);
            Assert.True(code == 0, $"{string.Join(" ", args)}\n{err}\n{stdout}");
        }
        Cli("distill", "--teacher", teacher.Dir, "--out", T("student"));
        Cli("quantize", "--model", teacher.Dir, "--out", T("int8"));
        Cli("prune", "--model", teacher.Dir, "--out", T("importance"), "--heads-fraction", "0.5");
        Cli("prune", "--model", teacher.Dir, "--out", T("random"), "--heads-fraction", "0.5", "--method", "random");
        Cli("compare", "--models", teacher.Dir, T("student"), T("int8"), T("importance"), T("random"), "--out", T("compare.md"), "--latency-examples", "3");

        Assert.Contains("| examples/s |", File.ReadAllText(T("compare.md")));
        var (code, printed, err) = CliRunner.Run("compare", "--models", teacher.Dir, T("int8"), "--latency-examples", "1", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("| examples/s |", printed); // without --out the table is printed, and no file lands in the current folder
        Assert.False(File.Exists("compare.md") || File.Exists("compare.csv"));
        var rows = File.ReadAllLines(T("compare.csv")).Skip(1).Select(Row).ToList();
        Assert.Equal(5, rows.Count);
        double original = rows[0].Value["value"], student = rows[1].Value["value"], int8 = rows[2].Value["value"], importance = rows[3].Value["value"];
        Assert.Equal(Metric(teacher.Eval, "accuracy"), original, 6); // compare scores what fine-tuning reported
        Assert.Equal(rows[0].Value["heads"] / 2, rows[3].Value["heads"]);

        // "At random" as an expectation, not one draw's luck: every way of removing the same number
        // of heads (one kept per layer) is equally likely, so average them all.
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var randomAccuracies = new List<double>();
        using (var t = BertForTask.Load(device, teacher.Dir))
        {
            var (_, heldOut) = DefaultTask.Build();
            var featurizer = new Featurizer(Text.BertTextEncoder.Load(teacher.Dir), t.Task, 128);
            var features = heldOut.Select(e => featurizer.Make(e, labelled: true)).ToList();
            int removed = (int)(rows[0].Value["heads"] - rows[3].Value["heads"]);
            foreach (var choice in Prunings(t.Bert.Layers.Select(l => l.Heads).ToArray(), removed))
            {
                using var pruned = Pruning.PruneHeads(t, choice);
                randomAccuracies.Add(Predictor.Metrics(pruned.Task, Predictor.Predict(pruned, featurizer, features, 64))["accuracy"]!.GetValue<double>());
            }
        }
        double random = randomAccuracies.Average();
        string report = $"teacher {original:F4}, student {student:F4}, int8 {int8:F4}, importance-pruned {importance:F4}, "
            + $"random-pruned mean {random:F4} over {randomAccuracies.Count} choices ({string.Join(" ", randomAccuracies.Select(a => a.ToString("F4", CultureInfo.InvariantCulture)))})";
        Assert.True(student >= 0.9 * original, report);
        Assert.True(Math.Abs(int8 - original) <= 0.01, report);
        Assert.True(original - importance < original - random, report);
        using (var s = BertForTask.Load(device, T("student")))
        using (var t = BertForTask.Load(device, teacher.Dir))
            Assert.Equal(t.Config.NumHiddenLayers / 2, s.Config.NumHiddenLayers);
    }

    private static double Metric(JsonObject m, string key) => m[key]!.GetValue<double>();

    /// <summary>Every way to remove <paramref name="count"/> heads from layers of these sizes, keeping one per layer.</summary>
    private static IEnumerable<Dictionary<int, int[]>> Prunings(int[] heads, int count, int layer = 0)
    {
        if (layer == heads.Length)
        {
            if (count == 0) yield return new Dictionary<int, int[]>();
            yield break;
        }
        for (int k = 0; k <= Math.Min(count, heads[layer] - 1); k++)
            foreach (var subset in Subsets(heads[layer], k))
                foreach (var rest in Prunings(heads, count - k, layer + 1))
                {
                    if (subset.Length > 0) rest[layer] = subset;
                    yield return rest;
                }
    }

    private static IEnumerable<int[]> Subsets(int n, int k) =>
        k == 0 ? [[]] : Enumerable.Range(0, n).SelectMany(first => Subsets(n - first - 1, k - 1).Select(rest => new[] { first }.Concat(rest.Select(r => r + first + 1)).ToArray()));

    [Fact]
    public void Compression_commands_work_on_a_small_model_and_refuse_bad_requests_clearly()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var dir = new TempDir();
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("train.tsv"), 48, 1);
        FineTuningTests.WriteClassification(dir.File("dev.tsv"), 24, 2);
        (int, string, string) Cli(params string[] args) => CliRunner.Run([.. args, "--device", "cpu"]);
        (int, string, string) CliText(params string[] args) => Cli([.. args, "--text-column", "sentence"]); // the toy files' text column
        var (code, _, err) = CliText("finetune", "--model", pretrained, "--train", dir.File("train.tsv"), "--eval", dir.File("dev.tsv"), "--out", dir.File("teacher"), "--epochs", "1", "--batch-size", "16");
        Assert.True(code == 0, err);

        (code, _, err) = CliText("distill", "--teacher", dir.File("teacher"), "--train", dir.File("train.tsv"), "--eval", dir.File("dev.tsv"), "--out", dir.File("student"),
            "--epochs", "1", "--batch-size", "16", "--student-size", "half", "--hidden-weight", "1", "--attention-weight", "1");
        Assert.True(code == 0, err);
        Assert.True(File.Exists(dir.File("student/eval.json")));
        (code, _, err) = CliText("quantize", "--model", dir.File("teacher"), "--calibrate", dir.File("train.tsv"), "--out", dir.File("int8"));
        Assert.True(code == 0, err);
        (code, var stdout, err) = CliText("evaluate", "--model", dir.File("int8"), "--eval", dir.File("dev.tsv"));
        Assert.True(code == 0, err);
        Assert.Contains("accuracy", stdout);
        (code, _, err) = CliText("prune", "--model", dir.File("teacher"), "--train", dir.File("train.tsv"), "--heads", "1", "--drop-layers", "1", "--magnitude", "0.3", "--out", dir.File("pruned"));
        Assert.True(code == 0, err);
        var pruning = JsonNode.Parse(File.ReadAllText(dir.File("pruned/pruning.json")))!;
        Assert.NotNull(pruning["importance"]);
        (code, _, err) = Cli("prune", "--model", pretrained, "--magnitude", "0.5", "--out", dir.File("sparse"));
        Assert.True(code == 0, err);
        (code, stdout, err) = CliText("finetune", "--model", dir.File("sparse"), "--train", dir.File("train.tsv"), "--out", dir.File("sparse-tuned"), "--epochs", "1", "--batch-size", "16");
        Assert.True(code == 0, err);
        Assert.Contains("kept at zero", stdout);
        using (var sparse = BertForTask.Load(device, dir.File("sparse-tuned")))
        {
            var weights = Pruning.MagnitudeTargets(sparse.Bert).SelectMany(w => w.Value.ToHost()).ToArray();
            Assert.Equal(0.5, weights.Count(v => v == 0f) / (double)weights.Length, 3);
        }
        (code, stdout, err) = CliText("compare", "--models", dir.File("teacher"), dir.File("int8"), dir.File("pruned"), "--eval", dir.File("dev.tsv"), "--out", dir.File("t/compare.md"), "--latency-examples", "2");
        Assert.True(code == 0, err);
        Assert.Contains("int8", File.ReadAllText(dir.File("t/compare.md")));
        Assert.Equal(4, File.ReadAllLines(dir.File("t/compare.csv")).Length);

        // Bad requests: one line, exit 2, nothing written.
        foreach (var args in new[]
        {
            new[] { "prune", "--model", dir.File("teacher"), "--out", dir.File("x") },
            ["prune", "--model", dir.File("teacher"), "--heads", "9", "--train", dir.File("train.tsv"), "--out", dir.File("x")],
            ["prune", "--model", pretrained, "--heads", "1", "--out", dir.File("x")],
            ["distill", "--teacher", pretrained, "--out", dir.File("x")],
            ["distill", "--teacher", dir.File("teacher"), "--alpha", "2", "--out", dir.File("x")],
            ["quantize", "--model", dir.File("teacher"), "--out", dir.File("x")], // not a default-task model: needs --calibrate
            ["compare", "--models", dir.File("nowhere"), "--out", dir.File("x.md")],
        })
        {
            (code, _, err) = Cli(args);
            Assert.True(code == 2, $"{string.Join(" ", args)}: exit {code}\n{err}");
            Assert.StartsWith("error: ", err);
            Assert.False(Directory.Exists(dir.File("x")) || File.Exists(dir.File("x.md")), string.Join(" ", args));
        }
    }
}
