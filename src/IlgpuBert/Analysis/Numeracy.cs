// Does BERT know numbers? Wallace et al. (2019, "Do NLP models know numbers?"; the Primer §3.3:
// BERT struggles with representing floating point numbers and fails to generalise): two probes on
// generated integers, per layer, on a number's representation (the mean of its word pieces' hidden
// states in "[CLS] n [SEP]"):
// - decoding: ridge regression from the representation to the value; RMSE on held-out numbers of the
//   training range (interpolation) and on numbers beyond it (extrapolation), beside predicting the
//   training mean;
// - list maximum: a linear score per number, softmax over lists of five, trained by gradient descent;
//   accuracy of picking the largest on lists of held-out numbers (chance 0.2).
// The numbers: a seeded random 80% of [0, range) to train on, the other 20% held out, and `range`
// numbers drawn from [range, 2·range) for extrapolation.
using IlgpuBert.Model;

namespace IlgpuBert.Analysis;

/// <summary>One layer's numeracy: decoding RMSE (interpolation, extrapolation, and the mean predictor's) and list-maximum accuracy.</summary>
public sealed record NumeracyLayer(int Layer, double InterpolationRmse, double ExtrapolationRmse, double MeanPredictorRmse, double MeanPredictorExtrapolationRmse, double ListMaxAccuracy);

/// <summary>Wallace et al.'s numeracy probes: decoding a value and the list maximum, per layer.</summary>
public static class Numeracy
{
    /// <summary>The ridge penalty λ of the decoding probe (on standardised features, scaled by the number of examples).</summary>
    public const double Ridge = 1e-2;

    /// <summary>Numbers per list in the list-maximum probe.</summary>
    public const int ListLength = 5;

    /// <summary>The integers: training (80% of [0, range)), held out (the rest), extrapolation (range of them from [range, 2·range)).</summary>
    public static (int[] Train, int[] HeldOut, int[] Beyond) Numbers(int range, int seed)
    {
        if (range < 20) throw new ArgumentException($"the number range must be at least 20, got {range}");
        var rng = new Random(seed);
        var all = Enumerable.Range(0, range).OrderBy(_ => rng.Next()).ToArray();
        int train = range * 4 / 5;
        var beyond = Enumerable.Range(range, range).OrderBy(_ => rng.Next()).Take(Math.Min(range, 500)).ToArray();
        return (all[..train], all[train..], beyond);
    }

    /// <summary>Per layer (0 = embeddings … L): both probes on <paramref name="analyzer"/>'s model.</summary>
    public static List<NumeracyLayer> Run(Analyzer analyzer, Text.BertTextEncoder encoder, int range = 1000, int seed = 0)
    {
        var (train, heldOut, beyond) = Numbers(range, seed);
        var features = Representations(analyzer, encoder, [.. train, .. heldOut, .. beyond]);
        var result = new List<NumeracyLayer>();
        for (int layer = 0; layer < features.Length; layer++)
        {
            var x = features[layer];
            var trainX = x[..train.Length];
            var heldX = x[train.Length..(train.Length + heldOut.Length)];
            var beyondX = x[(train.Length + heldOut.Length)..];
            var (mean, scale) = Standardiser(trainX);
            double[][] S(double[][] rows) => rows.Select(r => r.Select((v, j) => (v - mean[j]) / scale[j]).ToArray()).ToArray();
            var (sTrain, sHeld, sBeyond) = (S(trainX), S(heldX), S(beyondX));
            var w = FitRidge(sTrain, train.Select(v => (double)v).ToArray(), out double bias);
            double yMean = train.Average();
            double Rmse(double[][] rows, int[] values, Func<double[], double> predict) =>
                Math.Sqrt(rows.Select((r, i) => Math.Pow(predict(r) - values[i], 2)).Average());
            double Predict(double[] r) => bias + r.Select((v, j) => v * w[j]).Sum();
            double listMax = ListMaximum(sTrain, train, sHeld, heldOut, seed + layer);
            result.Add(new NumeracyLayer(layer, Rmse(sHeld, heldOut, Predict), Rmse(sBeyond, beyond, Predict),
                Rmse(sHeld, heldOut, _ => yMean), Rmse(sBeyond, beyond, _ => yMean), listMax));
        }
        return result;
    }

    /// <summary>Each number's representation per layer: the mean of its word pieces' hidden states in "[CLS] n [SEP]".</summary>
    public static double[][][] Representations(Analyzer analyzer, Text.BertTextEncoder encoder, IReadOnlyList<int> numbers)
    {
        var items = numbers.Select(n =>
        {
            var (ids, _) = encoder.EncodeRow(n.ToString(System.Globalization.CultureInfo.InvariantCulture), null);
            return new ProbeItem(BertInputs.FromRows([ids]), Enumerable.Range(1, ids.Length - 2).ToArray(), new int[ids.Length - 2]);
        }).ToList();
        var perLayer = analyzer.Features(items);
        return perLayer.Select(vectors =>
        {
            var result = new double[items.Count][];
            int at = 0;
            for (int i = 0; i < items.Count; i++)
            {
                int pieces = items[i].Positions.Length;
                var mean = new double[vectors[at].Length];
                for (int p = 0; p < pieces; p++, at++)
                    for (int j = 0; j < mean.Length; j++) mean[j] += vectors[at][j] / (double)pieces;
                result[i] = mean;
            }
            return result;
        }).ToArray();
    }

    private static (double[] Mean, double[] Scale) Standardiser(double[][] rows)
    {
        int h = rows[0].Length;
        var mean = Enumerable.Range(0, h).Select(j => rows.Average(r => r[j])).ToArray();
        var scale = Enumerable.Range(0, h).Select(j => Math.Sqrt(rows.Average(r => (r[j] - mean[j]) * (r[j] - mean[j])))).Select(s => s > 1e-12 ? s : 1).ToArray();
        return (mean, scale);
    }

    /// <summary>Ridge regression on centred targets: w = (XᵀX + λ·n·I)⁻¹ Xᵀ(y − ȳ), bias ȳ (X is standardised, so centred).</summary>
    public static double[] FitRidge(double[][] x, double[] y, out double bias)
    {
        int n = x.Length, h = x[0].Length;
        bias = y.Average();
        var a = new double[h, h];
        var b = new double[h];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < h; j++)
            {
                b[j] += x[i][j] * (y[i] - bias);
                for (int k = 0; k <= j; k++) a[j, k] += x[i][j] * x[i][k];
            }
        for (int j = 0; j < h; j++) a[j, j] += Ridge * n;
        // Cholesky: A = L·Lᵀ (A is symmetric positive definite with the ridge), then two triangular solves.
        for (int j = 0; j < h; j++)
        {
            for (int k = 0; k < j; k++) a[j, j] -= a[j, k] * a[j, k];
            a[j, j] = Math.Sqrt(a[j, j]);
            for (int i = j + 1; i < h; i++)
            {
                for (int k = 0; k < j; k++) a[i, j] -= a[i, k] * a[j, k];
                a[i, j] /= a[j, j];
            }
        }
        var z = new double[h];
        for (int i = 0; i < h; i++)
        {
            double s = b[i];
            for (int k = 0; k < i; k++) s -= a[i, k] * z[k];
            z[i] = s / a[i, i];
        }
        var w = new double[h];
        for (int i = h - 1; i >= 0; i--)
        {
            double s = z[i];
            for (int k = i + 1; k < h; k++) s -= a[k, i] * w[k];
            w[i] = s / a[i, i];
        }
        return w;
    }

    /// <summary>
    /// List maximum: 1,000 training lists of five distinct training numbers and 500 test lists of
    /// held-out ones; a linear score w·x per number, softmax cross-entropy over the list, 200 steps of
    /// gradient descent (step 0.1, L2 1e-3). The accuracy of the highest score being the largest number.
    /// </summary>
    internal static double ListMaximum(double[][] trainX, int[] train, double[][] testX, int[] test, int seed)
    {
        var rng = new Random(seed);
        int[][] Lists(int count, int pool) => Enumerable.Range(0, count).Select(_ =>
        {
            var picked = new HashSet<int>();
            while (picked.Count < ListLength) picked.Add(rng.Next(pool));
            return picked.ToArray();
        }).ToArray();
        var trainLists = Lists(1000, train.Length);
        var testLists = Lists(500, test.Length);
        int h = trainX[0].Length;
        var w = new double[h];
        var scores = new double[ListLength];
        for (int step = 0; step < 200; step++)
        {
            var grad = new double[h];
            foreach (var list in trainLists)
            {
                double max = double.NegativeInfinity;
                for (int i = 0; i < ListLength; i++) max = Math.Max(max, scores[i] = Dot(w, trainX[list[i]]));
                double sum = 0;
                for (int i = 0; i < ListLength; i++) sum += scores[i] = Math.Exp(scores[i] - max);
                int target = Enumerable.Range(0, ListLength).MaxBy(i => train[list[i]]);
                for (int i = 0; i < ListLength; i++)
                {
                    double g = scores[i] / sum - (i == target ? 1 : 0);
                    var xi = trainX[list[i]];
                    for (int j = 0; j < h; j++) grad[j] += g * xi[j];
                }
            }
            for (int j = 0; j < h; j++) w[j] -= 0.1 * (grad[j] / trainLists.Length + 1e-3 * w[j]);
        }
        return testLists.Average(list => Enumerable.Range(0, ListLength).MaxBy(i => Dot(w, testX[list[i]])) == Enumerable.Range(0, ListLength).MaxBy(i => test[list[i]]) ? 1.0 : 0.0);
    }

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
