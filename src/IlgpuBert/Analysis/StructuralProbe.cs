// Is syntax in BERT's representations? Hewitt & Manning (2019)'s structural probes ("A Primer in
// BERTology" §3.1: syntactic trees are recoverable from token representations):
// - distance probe: a rank-k linear map B such that ‖B(hᵢ − hⱼ)‖² fits the number of tree edges
//   between words i and j; trained on L1 loss over every pair, divided by n² per sentence;
// - depth probe: ‖B hᵢ‖² fits word i's depth in the tree; L1 loss divided by n.
// Scored as the paper scores them: UUAS (the minimum spanning tree of the predicted distances against
// the gold tree's undirected edges), distance Spearman (per word, its predicted against its gold
// distances to the others; averaged per sentence, then per sentence length 5–50, then over lengths),
// root accuracy (the shallowest predicted word is the root) and depth Spearman (same averaging).
// Punctuation is scored by default (every word of the tree counts); ExcludePunctuation scores as the
// paper does, without words whose UPOS is PUNCT (the minimum spanning tree over the other words,
// against the gold edges between them).
//
// A word's representation is the mean of its word pieces' hidden states, the sentence read alone as
// "[CLS] pieces [SEP]". Each feature is divided by its standard deviation over the training words (a
// diagonal linear map: neither probe's capacity changes) so that one learning rate fits every layer;
// the distance probe's features are also centred (distances do not see a common offset), the depth
// probe's are not (it has no offset in the paper, and an offset would change what it can fit).

using System.Numerics;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Analysis;

/// <summary>How a structural probe is trained: its rank, Adam's epochs and step, sentences per step, and the seed of B and of the order.</summary>
public sealed record StructuralProbeOptions(int Rank = 64, int Epochs = 30, int BatchSentences = 20, double LearningRate = 2e-3, int Seed = 0)
{
    /// <summary>Score only words whose UPOS is not PUNCT, as Hewitt and Manning do (the probes still train on every word).</summary>
    public bool ExcludePunctuation { get; init; }
}

/// <summary>The four scores of the two probes on the evaluation trees (NaN where no sentence qualifies).</summary>
public sealed record StructuralScores(double Uuas, double DistanceSpearman, double RootAccuracy, double DepthSpearman)
{
    public static readonly string[] Names = ["uuas", "distance_spearman", "root_accuracy", "depth_spearman"];

    public double[] Values => [Uuas, DistanceSpearman, RootAccuracy, DepthSpearman];
}

public static class StructuralProbe
{
    /// <summary>Spearman averages count sentences of these lengths only, as Hewitt and Manning's do.</summary>
    public const int MinSpearmanLength = 5, MaxSpearmanLength = 50;

    /// <summary>
    /// Each word's representation per layer (0 = embeddings): [layer][tree][word] → vector. Trees
    /// whose pieces do not fit the model's positions are left out; <paramref name="kept"/> says which stayed.
    /// </summary>
    public static float[][][][] WordFeatures(Analyzer analyzer, BertTextEncoder encoder, IReadOnlyList<DependencyTree> trees, out List<int> kept)
    {
        int limit = analyzer.Model.Config.MaxPositionEmbeddings;
        var items = new List<ProbeItem>();
        var wordOf = new List<int[]>();
        kept = [];
        for (int t = 0; t < trees.Count; t++)
        {
            var ids = new List<int> { encoder.ClsId };
            var owner = new List<int>();
            for (int w = 0; w < trees[t].Words.Length; w++)
            {
                var pieces = encoder.Encode(trees[t].Words[w]);
                if (pieces.Length == 0) pieces = [encoder.UnknownId];
                foreach (int p in pieces) { ids.Add(p); owner.Add(w); }
            }
            ids.Add(encoder.SepId);
            if (ids.Count > limit) continue;
            kept.Add(t);
            items.Add(new ProbeItem(BertInputs.FromRows([ids.ToArray()]), Enumerable.Range(1, owner.Count).ToArray(), new int[owner.Count]));
            wordOf.Add([.. owner]);
        }
        var perLayer = analyzer.Features(items);
        var keptTrees = kept.Select(t => trees[t]).ToList();
        return perLayer.Select(vectors =>
        {
            int at = 0;
            var result = new float[items.Count][][];
            for (int i = 0; i < items.Count; i++)
            {
                int words = keptTrees[i].Words.Length, h = vectors[at].Length;
                var sum = new float[words][];
                var count = new int[words];
                for (int w = 0; w < words; w++) sum[w] = new float[h];
                foreach (int w in wordOf[i])
                {
                    var v = vectors[at++];
                    for (int j = 0; j < h; j++) sum[w][j] += v[j];
                    count[w]++;
                }
                for (int w = 0; w < words; w++) for (int j = 0; j < h; j++) sum[w][j] /= count[w];
                result[i] = sum;
            }
            return result;
        }).ToArray();
    }

    /// <summary>The position-only baseline's features: word i is the one-hot vector of i (<paramref name="dims"/> ≥ the longest sentence).</summary>
    public static float[][][] PositionFeatures(IReadOnlyList<DependencyTree> trees, int dims) =>
        trees.Select(t =>
        {
            if (t.Words.Length > dims) throw new ArgumentException($"position features of {dims} dimensions cannot hold a sentence of {t.Words.Length} words");
            return Enumerable.Range(0, t.Words.Length).Select(i => { var f = new float[dims]; f[i] = 1; return f; }).ToArray();
        }).ToArray();

    /// <summary>Hewitt and Manning's linear baseline: the chain of adjacent words as the tree, |i − j| as the distance, the first word as the root.</summary>
    public static StructuralScores Linear(IReadOnlyList<DependencyTree> eval, bool excludePunctuation = false) =>
        Score(eval, t => Enumerable.Range(0, eval[t].Words.Length).Select(i => Enumerable.Range(0, eval[t].Words.Length).Select(j => (double)Math.Abs(i - j)).ToArray()).ToArray(),
            t => Enumerable.Range(0, eval[t].Words.Length).Select(i => (double)i).ToArray(), excludePunctuation);

    /// <summary>Trains both probes on the training trees' features and scores them on the evaluation trees'.</summary>
    public static StructuralScores TrainAndEvaluate(IReadOnlyList<float[][]> trainX, IReadOnlyList<DependencyTree> train,
        IReadOnlyList<float[][]> evalX, IReadOnlyList<DependencyTree> eval, StructuralProbeOptions? options = null)
    {
        options ??= new();
        if (trainX.Count != train.Count || evalX.Count != eval.Count) throw new ArgumentException("one feature matrix per tree");
        if (train.Count == 0 || eval.Count == 0) throw new ArgumentException("the probes need training and evaluation sentences");
        if (options.Rank < 1 || options.Epochs < 1 || options.BatchSentences < 1) throw new ArgumentException("rank, epochs and sentences per step must be positive");
        var (mean, scale) = Moments(trainX);
        var zero = new float[mean.Length];
        float[][][] Prepare(IReadOnlyList<float[][]> xs, float[] centre) => xs.Select(x => Standardise(x, centre, scale)).ToArray();
        int h = scale.Length, k = Math.Min(options.Rank, h);
        var distances = train.Select(t => t.Distances()).ToArray();
        var depths = train.Select(t => t.Depths()).ToArray();
        var (centredTrain, centredEval) = (Prepare(trainX, mean), Prepare(evalX, mean));
        var distanceProbe = Fit(centredTrain, h, k, options, (s, p, dp) => DistanceLoss(p, distances[s], dp));
        var (scaledTrain, scaledEval) = (Prepare(trainX, zero), Prepare(evalX, zero));
        var depthProbe = Fit(scaledTrain, h, k, options, (s, p, dp) => DepthLoss(p, depths[s], dp));
        return Score(eval,
            t => PredictedDistances(Project(centredEval[t], distanceProbe, h, k)),
            t => Project(scaledEval[t], depthProbe, h, k).Select(p => p.Sum(v => (double)v * v)).ToArray(), options.ExcludePunctuation);
    }

    /// <summary>The minimum spanning tree of a distance matrix (Prim's), as (smaller, larger) index pairs.</summary>
    public static HashSet<(int, int)> MinimumSpanningTree(double[][] d)
    {
        int n = d.Length;
        var edges = new HashSet<(int, int)>();
        if (n == 0) return edges;
        var inTree = new bool[n];
        var best = Enumerable.Repeat(double.PositiveInfinity, n).ToArray();
        var from = new int[n];
        inTree[0] = true;
        for (int j = 1; j < n; j++) { best[j] = d[0][j]; from[j] = 0; }
        for (int step = 1; step < n; step++)
        {
            int next = -1;
            for (int j = 0; j < n; j++) if (!inTree[j] && (next < 0 || best[j] < best[next])) next = j;
            inTree[next] = true;
            edges.Add((Math.Min(next, from[next]), Math.Max(next, from[next])));
            for (int j = 0; j < n; j++) if (!inTree[j] && d[next][j] < best[j]) { best[j] = d[next][j]; from[j] = next; }
        }
        return edges;
    }

    /// <summary>Spearman's rank correlation (TaskMetrics', ties given their mean rank), NaN when either side is constant: no ranking to agree with.</summary>
    public static double Spearman(IReadOnlyList<double> a, IReadOnlyList<double> b) =>
        a.Distinct().Count() < 2 || b.Distinct().Count() < 2 ? double.NaN : TaskMetrics.Spearman(a, b);

    /// <summary>The four scores of predicted distances and depths (by evaluation tree index) against the trees.</summary>
    private static StructuralScores Score(IReadOnlyList<DependencyTree> eval, Func<int, double[][]> distances, Func<int, double[]> depths, bool excludePunctuation = false)
    {
        int correct = 0, gold = 0, rootsRight = 0;
        var distanceByLength = new Dictionary<int, List<double>>();
        var depthByLength = new Dictionary<int, List<double>>();
        for (int t = 0; t < eval.Count; t++)
        {
            var tree = eval[t];
            // The words scored: all, or (as Hewitt and Manning score) those whose UPOS is not PUNCT.
            var kept = Enumerable.Range(0, tree.Words.Length).Where(i => !excludePunctuation || tree.Upos?[i] != "PUNCT").ToArray();
            int n = kept.Length;
            if (n == 0) continue;
            var all = distances(t);
            var d = kept.Select(i => kept.Select(j => all[i][j]).ToArray()).ToArray();
            var allDepth = depths(t);
            var depth = kept.Select(i => allDepth[i]).ToArray();
            var index = kept.Select((w, k) => (w, k)).ToDictionary(x => x.w, x => x.k);
            var goldEdges = tree.Edges().Where(e => index.ContainsKey(e.Item1) && index.ContainsKey(e.Item2))
                .Select(e => (index[e.Item1], index[e.Item2])).ToHashSet();
            correct += MinimumSpanningTree(d).Count(goldEdges.Contains);
            gold += goldEdges.Count;
            if (kept[Enumerable.Range(0, n).MinBy(i => depth[i])] == tree.Root) rootsRight++;
            if (n < MinSpearmanLength || n > MaxSpearmanLength) continue;
            var allGold = tree.Distances();
            var goldDepth = tree.Depths();
            var perWord = Enumerable.Range(0, n).Select(i =>
            {
                var others = Enumerable.Range(0, n).Where(j => j != i).ToArray();
                return Spearman(others.Select(j => d[i][j]).ToArray(), others.Select(j => (double)allGold[kept[i], kept[j]]).ToArray());
            }).Where(double.IsFinite).ToList();
            if (perWord.Count > 0) Add(distanceByLength, n, perWord.Average());
            double rho = Spearman(depth, kept.Select(i => (double)goldDepth[i]).ToArray());
            if (double.IsFinite(rho)) Add(depthByLength, n, rho);
        }
        static void Add(Dictionary<int, List<double>> byLength, int n, double v)
        {
            if (!byLength.TryGetValue(n, out var list)) byLength[n] = list = [];
            list.Add(v);
        }
        static double MacroAverage(Dictionary<int, List<double>> byLength) => byLength.Count == 0 ? double.NaN : byLength.Values.Average(l => l.Average());
        return new StructuralScores(gold == 0 ? double.NaN : correct / (double)gold, MacroAverage(distanceByLength),
            rootsRight / (double)eval.Count, MacroAverage(depthByLength));
    }

    private delegate double LossGrad(int sentence, float[][] p, float[][] dp);

    /// <summary>B [k, h] by Adam on the loss, over shuffled batches of sentences; B starts uniform in ±0.05 as the paper's.</summary>
    private static float[] Fit(float[][][] xs, int h, int k, StructuralProbeOptions options, LossGrad loss)
    {
        var rng = new Random(options.Seed);
        var b = new float[k * h];
        for (int i = 0; i < b.Length; i++) b[i] = (float)((rng.NextDouble() - 0.5) * 0.1);
        var m = new double[b.Length];
        var v = new double[b.Length];
        var grad = new float[b.Length];
        var order = Enumerable.Range(0, xs.Length).ToArray();
        int step = 0;
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            rng.Shuffle(order);
            foreach (var batch in order.Chunk(options.BatchSentences))
            {
                Array.Clear(grad);
                foreach (int s in batch)
                {
                    var x = xs[s];
                    var p = Project(x, b, h, k);
                    var dp = p.Select(r => new float[k]).ToArray();
                    double l = loss(s, p, dp);
                    if (!double.IsFinite(l)) throw new InvalidOperationException($"the structural probe's loss became {l}");
                    for (int i = 0; i < x.Length; i++)
                        for (int a = 0; a < k; a++)
                            if (dp[i][a] != 0) Axpy(dp[i][a] / batch.Length, x[i], grad.AsSpan(a * h, h));
                }
                step++;
                double c1 = 1 - Math.Pow(0.9, step), c2 = 1 - Math.Pow(0.999, step);
                for (int i = 0; i < b.Length; i++)
                {
                    m[i] = 0.9 * m[i] + 0.1 * grad[i];
                    v[i] = 0.999 * v[i] + 0.001 * grad[i] * grad[i];
                    b[i] -= (float)(options.LearningRate * (m[i] / c1) / (Math.Sqrt(v[i] / c2) + 1e-8));
                }
            }
        }
        return b;
    }

    /// <summary>(1/n²) Σᵢⱼ |‖pᵢ − pⱼ‖² − dᵢⱼ| and its gradient in p.</summary>
    private static double DistanceLoss(float[][] p, int[,] target, float[][] dp)
    {
        int n = p.Length, k = p.Length == 0 ? 0 : p[0].Length;
        double loss = 0, norm = 1.0 / ((double)n * n);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                double d = 0;
                for (int a = 0; a < k; a++) { double e = p[i][a] - p[j][a]; d += e * e; }
                double r = d - target[i, j];
                loss += 2 * Math.Abs(r) * norm; // (i, j) and (j, i)
                float g = (float)(4 * Math.Sign(r) * norm); // ∂/∂pᵢ of both terms: 2·sign·2(pᵢ − pⱼ)
                for (int a = 0; a < k; a++)
                {
                    float e = g * (p[i][a] - p[j][a]);
                    dp[i][a] += e;
                    dp[j][a] -= e;
                }
            }
        return loss;
    }

    /// <summary>(1/n) Σᵢ |‖pᵢ‖² − depthᵢ| and its gradient in p.</summary>
    private static double DepthLoss(float[][] p, int[] depth, float[][] dp)
    {
        int n = p.Length;
        double loss = 0;
        for (int i = 0; i < n; i++)
        {
            double q = p[i].Sum(v => (double)v * v), r = q - depth[i];
            loss += Math.Abs(r) / n;
            float g = (float)(2.0 * Math.Sign(r) / n);
            for (int a = 0; a < p[i].Length; a++) dp[i][a] = g * p[i][a];
        }
        return loss;
    }

    private static float[][] Project(float[][] x, float[] b, int h, int k) =>
        x.Select(row => Enumerable.Range(0, k).Select(a => Dot(b.AsSpan(a * h, h), row)).ToArray()).ToArray();

    private static double[][] PredictedDistances(float[][] p) =>
        p.Select(pi => p.Select(pj => { double d = 0; for (int a = 0; a < pi.Length; a++) { double e = pi[a] - pj[a]; d += e * e; } return d; }).ToArray()).ToArray();

    /// <summary>Each feature's mean and standard deviation over the training words (1 where it is constant).</summary>
    private static (float[] Mean, float[] Scale) Moments(IReadOnlyList<float[][]> xs)
    {
        int h = xs.First(x => x.Length > 0)[0].Length;
        var sum = new double[h];
        long count = 0;
        foreach (var row in xs.SelectMany(x => x))
        {
            for (int j = 0; j < h; j++) sum[j] += row[j];
            count++;
        }
        var mean = sum.Select(v => v / count).ToArray();
        var sq = new double[h];
        foreach (var row in xs.SelectMany(x => x))
            for (int j = 0; j < h; j++) sq[j] += (row[j] - mean[j]) * (row[j] - mean[j]);
        var scale = sq.Select(v => Math.Sqrt(v / count)).Select(r => r > 1e-6 ? (float)r : 1f).ToArray();
        return (mean.Select(v => (float)v).ToArray(), scale);
    }

    private static float[][] Standardise(float[][] x, float[] mean, float[] scale) =>
        x.Select(row => row.Select((v, j) => (v - mean[j]) / scale[j]).ToArray()).ToArray();

    private static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        var acc = Vector<float>.Zero;
        int i = 0;
        for (; i + Vector<float>.Count <= a.Length; i += Vector<float>.Count) acc += new Vector<float>(a[i..]) * new Vector<float>(b[i..]);
        float s = Vector.Sum(acc);
        for (; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    private static void Axpy(float alpha, ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        var va = new Vector<float>(alpha);
        for (; i + Vector<float>.Count <= x.Length; i += Vector<float>.Count) (new Vector<float>(y[i..]) + va * new Vector<float>(x[i..])).CopyTo(y[i..]);
        for (; i < x.Length; i++) y[i] += alpha * x[i];
    }
}
