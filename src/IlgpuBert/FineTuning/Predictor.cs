// Inference for a fine-tuned model and the task metrics computed from its predictions: the
// predicted label and its softmax probability, the regression value, a tag per word (read from the
// word's first piece; a word left without pieces is tagged O), or the best answer span (start ≤
// end within the context, at most MaxAnswerPieces long, scored start + end logit as in BERT's
// run_squad), mapped back to the exact characters of the context.
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Model;

namespace IlgpuBert.FineTuning;

/// <summary>What the model says about one example.</summary>
public sealed record Prediction(TaskExample Example)
{
    public int Label { get; init; } = -1;
    public float Probability { get; init; }
    public double Value { get; init; }
    public string[]? Tags { get; init; }
    public string? Answer { get; init; }
    public double Score { get; init; }
}

public static class Predictor
{
    public const int MaxAnswerPieces = 30;

    /// <param name="hooks">How the model runs (an int8 model's Linear layers); plain float when null.</param>
    public static List<Prediction> Predict(BertForTask model, Featurizer featurizer, IReadOnlyList<Feature> features, int batchSize, BertHooks? hooks = null)
    {
        var result = new List<Prediction>(features.Count);
        for (int at = 0; at < features.Count; at += batchSize)
        {
            var chunk = features.Skip(at).Take(batchSize).ToList();
            var batch = featurizer.Collate(chunk, labelled: false);
            using var tape = new Tape(recording: false);
            var logits = model.Forward(tape, batch, Dropouts.Off, hooks).Logits.Value.ToHost();
            int s = batch.Inputs.SeqLen, c = model.Task.Outputs;
            for (int r = 0; r < chunk.Count; r++)
                result.Add(Read(model.Task, chunk[r], logits, r, s, c));
        }
        return result;
    }

    private static Prediction Read(TaskSpec task, Feature f, float[] logits, int row, int s, int c)
    {
        var p = new Prediction(f.Example);
        switch (task.Kind)
        {
            case TaskKind.Regression:
                return p with { Value = logits[row] };
            case TaskKind.TokenClassification:
            {
                var tags = new string[f.WordPiece!.Length];
                for (int w = 0; w < tags.Length; w++)
                    tags[w] = f.WordPiece[w] < 0 ? "O" : task.Labels[ArgMax(logits, (row * s + f.WordPiece[w]) * c, c)];
                return p with { Tags = tags };
            }
            case TaskKind.QuestionAnswering:
            {
                int first = f.ContextOffset, last = f.ContextOffset + f.PieceWord!.Length - 1;
                if (last < first) return p with { Answer = "", Score = double.NaN }; // no context piece fit the window
                double best = double.NegativeInfinity;
                int bi = first, bj = first;
                for (int i = first; i <= last; i++)
                    for (int j = i; j <= Math.Min(last, i + MaxAnswerPieces - 1); j++)
                    {
                        double score = logits[(row * s + i) * 2] + logits[(row * s + j) * 2 + 1];
                        if (score > best) (best, bi, bj) = (score, i, j);
                    }
                var spans = f.WordSpans!;
                int w0 = f.PieceWord[bi - first], w1 = f.PieceWord[bj - first];
                string context = f.Example.TextPair!;
                return p with { Answer = context[spans[w0].Start..spans[w1].End], Score = best };
            }
            default:
            {
                int o = row * c, label = ArgMax(logits, o, c);
                double max = logits[o + label], sum = 0;
                for (int j = 0; j < c; j++) sum += Math.Exp(logits[o + j] - max);
                return p with { Label = label, Probability = (float)(1 / sum) };
            }
        }
    }

    private static int ArgMax(float[] v, int offset, int count)
    {
        int best = 0;
        for (int j = 1; j < count; j++) if (v[offset + j] > v[offset + best]) best = j;
        return best;
    }

    /// <summary>
    /// The task's metrics over labelled examples and their predictions, as a JSON object. The
    /// majority baseline predicts the label most frequent in <paramref name="baselineLabels"/>
    /// (the training labels; the evaluation labels themselves when none are given).
    /// </summary>
    public static JsonObject Metrics(TaskSpec task, IReadOnlyList<Prediction> predictions, IEnumerable<string>? baselineLabels = null)
    {
        var m = new JsonObject { ["task"] = TaskSpec.Name(task.Kind), ["examples"] = predictions.Count };
        switch (task.Kind)
        {
            case TaskKind.Regression:
            {
                var gold = predictions.Select(p => (double)p.Example.Target!.Value).ToList();
                var pred = predictions.Select(p => p.Value).ToList();
                m["pearson"] = TaskMetrics.Pearson(gold, pred);
                m["spearman"] = TaskMetrics.Spearman(gold, pred);
                m["mse"] = gold.Zip(pred).Average(x => (x.First - x.Second) * (x.First - x.Second));
                double mean = gold.Average(); // predicting the mean: MSE = the targets' variance
                m["mean_baseline_mse"] = gold.Average(g => (g - mean) * (g - mean));
                break;
            }
            case TaskKind.TokenClassification:
            {
                var gold = predictions.Select(p => (IReadOnlyList<string>)p.Example.Tags!).ToList();
                var pred = predictions.Select(p => (IReadOnlyList<string>)p.Tags!).ToList();
                var (precision, recall, f1) = TaskMetrics.EntityF1(gold, pred);
                m["entity_f1"] = f1;
                m["entity_precision"] = precision;
                m["entity_recall"] = recall;
                var flatGold = gold.SelectMany(t => t).ToList();
                var flatPred = pred.SelectMany(t => t).ToList();
                m["accuracy"] = flatGold.Zip(flatPred).Count(x => x.First == x.Second) / (double)Math.Max(1, flatGold.Count);
                string majority = (baselineLabels ?? flatGold).GroupBy(t => t).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).First().Key;
                m["majority_label"] = majority;
                m["majority_baseline"] = flatGold.Count(t => t == majority) / (double)Math.Max(1, flatGold.Count);
                break;
            }
            case TaskKind.QuestionAnswering:
            {
                m["exact_match"] = predictions.Average(p => TaskMetrics.ExactMatch(p.Answer ?? "", p.Example.Answers!.Select(a => a.Text)));
                m["f1"] = predictions.Average(p => TaskMetrics.TokenF1(p.Answer ?? "", p.Example.Answers!.Select(a => a.Text)));
                break;
            }
            default:
            {
                var index = task.Labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
                var gold = predictions.Select(p => index[p.Example.Label!]).ToList();
                var pred = predictions.Select(p => p.Label).ToList();
                m["accuracy"] = TaskMetrics.Accuracy(gold, pred);
                m["macro_f1"] = TaskMetrics.MacroF1(gold, pred);
                m["mcc"] = TaskMetrics.Mcc(gold, pred);
                var (label, accuracy) = TaskMetrics.MajorityBaseline(baselineLabels?.Where(index.ContainsKey).Select(l => index[l]) ?? gold, gold);
                m["majority_label"] = task.Labels[label];
                m["majority_baseline"] = accuracy;
                break;
            }
        }
        return m;
    }
}
