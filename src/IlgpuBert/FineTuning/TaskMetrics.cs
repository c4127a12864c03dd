// The metrics GLUE, CoNLL-2003 and SQuAD report, computed as their reference scripts do:
// accuracy, macro-F1 (sklearn: mean over every label seen in gold or predictions), Matthews
// correlation (sklearn's multi-class form), Pearson and Spearman (average ranks for ties),
// entity-level F1 over BIO spans (conlleval/seqeval: an I- tag that does not continue an entity of
// its type starts one), and SQuAD v1.1's exact match and token F1 after its answer normalisation.
using System.Text;
using System.Text.RegularExpressions;

namespace IlgpuBert.FineTuning;

public static partial class TaskMetrics
{
    public static double Accuracy(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        Same(gold.Count, predicted.Count);
        return gold.Count == 0 ? 0 : gold.Zip(predicted).Count(p => p.First == p.Second) / (double)gold.Count;
    }

    public static double MacroF1(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        Same(gold.Count, predicted.Count);
        var labels = gold.Concat(predicted).Distinct().ToList();
        if (labels.Count == 0) return 0;
        double sum = 0;
        foreach (int l in labels)
        {
            int tp = 0, fp = 0, fn = 0;
            for (int i = 0; i < gold.Count; i++)
            {
                if (predicted[i] == l && gold[i] == l) tp++;
                else if (predicted[i] == l) fp++;
                else if (gold[i] == l) fn++;
            }
            sum += tp == 0 ? 0 : 2.0 * tp / (2.0 * tp + fp + fn);
        }
        return sum / labels.Count;
    }

    /// <summary>Matthews correlation for any number of classes (Gorodkin 2004), 0 when undefined.</summary>
    public static double Mcc(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        Same(gold.Count, predicted.Count);
        var labels = gold.Concat(predicted).Distinct().ToList();
        double n = gold.Count, correct = gold.Zip(predicted).Count(p => p.First == p.Second);
        double sumTP = 0, sumT2 = 0, sumP2 = 0;
        foreach (int l in labels)
        {
            double t = gold.Count(g => g == l), p = predicted.Count(q => q == l);
            sumTP += t * p;
            sumT2 += t * t;
            sumP2 += p * p;
        }
        double denominator = Math.Sqrt(n * n - sumP2) * Math.Sqrt(n * n - sumT2);
        return denominator == 0 ? 0 : (correct * n - sumTP) / denominator;
    }

    /// <summary>The label most frequent in <paramref name="train"/> (ties: the smallest id) and its accuracy on <paramref name="eval"/>.</summary>
    public static (int Label, double Accuracy) MajorityBaseline(IEnumerable<int> train, IReadOnlyList<int> eval)
    {
        int label = train.GroupBy(l => l).OrderByDescending(g => g.Count()).ThenBy(g => g.Key).First().Key;
        return (label, eval.Count == 0 ? 0 : eval.Count(l => l == label) / (double)eval.Count);
    }

    public static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        Same(x.Count, y.Count);
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Count; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }
        return sxx == 0 || syy == 0 ? 0 : sxy / Math.Sqrt(sxx * syy);
    }

    public static double Spearman(IReadOnlyList<double> x, IReadOnlyList<double> y) => Pearson(Ranks(x), Ranks(y));

    private static double[] Ranks(IReadOnlyList<double> v)
    {
        var order = Enumerable.Range(0, v.Count).OrderBy(i => v[i]).ToArray();
        var ranks = new double[v.Count];
        for (int i = 0; i < order.Length;)
        {
            int j = i;
            while (j + 1 < order.Length && v[order[j + 1]] == v[order[i]]) j++;
            for (int k = i; k <= j; k++) ranks[order[k]] = (i + j) / 2.0 + 1;
            i = j + 1;
        }
        return ranks;
    }

    /// <summary>Entities of a BIO sequence as (type, first, last) token indices.</summary>
    public static List<(string Type, int Start, int End)> Entities(IReadOnlyList<string> tags)
    {
        var result = new List<(string, int, int)>();
        string? type = null;
        int start = 0;
        for (int i = 0; i <= tags.Count; i++)
        {
            string tag = i < tags.Count ? tags[i] : "O";
            string prefix = tag.Length > 1 && tag[1] == '-' ? tag[..1] : "O";
            string t = prefix == "O" ? "" : tag[2..];
            bool continues = prefix == "I" && type == t;
            if (type is not null && !continues)
            {
                result.Add((type, start, i - 1));
                type = null;
            }
            if (prefix is "B" or "I" && !continues)
            {
                type = t;
                start = i;
            }
        }
        return result;
    }

    /// <summary>Micro precision, recall and F1 over exact entity matches across sentences.</summary>
    public static (double Precision, double Recall, double F1) EntityF1(IReadOnlyList<IReadOnlyList<string>> gold, IReadOnlyList<IReadOnlyList<string>> predicted)
    {
        Same(gold.Count, predicted.Count);
        int tp = 0, nGold = 0, nPred = 0;
        for (int s = 0; s < gold.Count; s++)
        {
            var g = Entities(gold[s]).ToHashSet();
            var p = Entities(predicted[s]);
            nGold += g.Count;
            nPred += p.Count;
            tp += p.Count(g.Contains);
        }
        double precision = nPred == 0 ? 0 : tp / (double)nPred, recall = nGold == 0 ? 0 : tp / (double)nGold;
        return (precision, recall, precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall));
    }

    /// <summary>SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed.</summary>
    public static string NormalizeAnswer(string s)
    {
        var sb = new StringBuilder();
        foreach (char c in s.ToLowerInvariant())
            if (!char.IsPunctuation(c) && !char.IsSymbol(c)) sb.Append(c);
        return string.Join(" ", Articles().Replace(sb.ToString(), " ").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
    }

    public static double ExactMatch(string predicted, IEnumerable<string> gold) =>
        gold.Any(g => NormalizeAnswer(g) == NormalizeAnswer(predicted)) ? 1 : 0;

    public static double TokenF1(string predicted, IEnumerable<string> gold) => gold.Select(g => TokenF1(predicted, g)).DefaultIfEmpty(0).Max();

    private static double TokenF1(string predicted, string gold)
    {
        var p = NormalizeAnswer(predicted).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var g = NormalizeAnswer(gold).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var counts = g.GroupBy(t => t).ToDictionary(x => x.Key, x => x.Count());
        int common = 0;
        foreach (var t in p)
            if (counts.TryGetValue(t, out int c) && c > 0)
            {
                common++;
                counts[t] = c - 1;
            }
        if (common == 0) return 0;
        double precision = common / (double)p.Length, recall = common / (double)g.Length;
        return 2 * precision * recall / (precision + recall);
    }

    [GeneratedRegex(@"\b(a|an|the)\b")]
    private static partial Regex Articles();

    private static void Same(int a, int b)
    {
        if (a != b) throw new ArgumentException($"{a} gold values but {b} predictions");
    }
}
