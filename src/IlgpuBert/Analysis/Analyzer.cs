// BERTology analysis of a model folder, as plain arrays for C# callers (the CLI draws and writes
// them): attention maps, per-head statistics over a corpus, linear probes per layer with a
// random-model control, and layer-wise similarity / anisotropy of token representations.
using IlgpuBert.Autograd;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Analysis;

/// <summary>One probing example: a single-row input, the positions to read (−1: mean over real tokens) and their labels.</summary>
public sealed record ProbeItem(BertInputs Input, int[] Positions, int[] Labels);

public sealed class Analyzer(BertForPreTraining model, BertTextEncoder encoder, string[] vocab)
{
    public BertForPreTraining Model { get; } = model;
    public int Layers => Model.Config.NumHiddenLayers;
    public int Heads => Model.Config.NumAttentionHeads;

    public static Analyzer Load(BertDevice device, string dir)
    {
        var encoder = BertTextEncoder.Load(dir);
        return new(BertFolder.Load(device, dir), encoder, [.. encoder.Vocabulary]);
    }

    public string Token(int id) => (uint)id < (uint)vocab.Length ? vocab[id] : $"[{id}]";

    /// <summary>Word pieces of a text (or pair) and, per layer, the probabilities [NH, S, S].</summary>
    public (string[] Tokens, int[] Segments, float[][] Maps) Attention(string text, string? pair = null)
    {
        var inputs = encoder.Batch([text], pair is null ? null : [pair]);
        using var tape = new Tape(recording: false);
        var o = Model.Forward(tape, inputs, Dropouts.Off, outputAttentions: true);
        return (inputs.InputIds.Select(Token).ToArray(), inputs.TokenTypeIds, o.Attentions!.Select(a => a.ToHost()).ToArray());
    }

    /// <summary>
    /// Mean statistics per [layer, head] and each head's pattern, over inputs made of consecutive
    /// texts paired as segment A and B (as BERT sees them, and as Clark et al. measured), so that
    /// block (within-segment) attention is observable.
    /// </summary>
    public (HeadStats[,] Stats, HeadPattern[,] Patterns) HeadsOver(IEnumerable<string> texts)
    {
        int l = Layers, nh = Heads, count = 0;
        var sums = new double[l, nh, HeadStats.Names.Length];
        var within = new double[l, nh];
        foreach (var (first, second) in texts.Chunk(2).Where(c => c.Length == 2).Select(c => (c[0], c[1])))
        {
            var (tokens, segments, maps) = Attention(first, second);
            var kinds = HeadStatistics.Kinds(tokens);
            for (int layer = 0; layer < l; layer++)
                for (int h = 0; h < nh; h++)
                {
                    var st = HeadStatistics.Compute(maps[layer], tokens.Length, h, kinds).Values;
                    for (int k = 0; k < st.Length; k++) sums[layer, h, k] += st[k];
                    within[layer, h] += HeadStatistics.WithinSegment(maps[layer], tokens.Length, h, segments);
                }
            count++;
        }
        if (count == 0) throw new ArgumentException("head statistics need at least two texts (they are paired as segments A and B)");
        var stats = new HeadStats[l, nh];
        var patterns = new HeadPattern[l, nh];
        for (int layer = 0; layer < l; layer++)
            for (int h = 0; h < nh; h++)
            {
                double M(int k) => sums[layer, h, k] / count;
                stats[layer, h] = new HeadStats(M(0), M(1), M(2), M(3), M(4), M(5), M(6));
                patterns[layer, h] = HeadStatistics.Classify(stats[layer, h], within[layer, h] / count);
            }
        return (stats, patterns);
    }

    /// <summary>Features of every probe item at every layer (0 = embeddings): [layer][item] → vectors.</summary>
    public List<float[]>[] Features(IReadOnlyList<ProbeItem> items)
    {
        int h = Model.Config.HiddenSize;
        var perLayer = Enumerable.Range(0, Layers + 1).Select(_ => new List<float[]>()).ToArray();
        foreach (var item in items)
        {
            using var tape = new Tape(recording: false);
            var o = Model.Forward(tape, item.Input, Dropouts.Off);
            int real = item.Input.AttentionMask.Sum();
            for (int layer = 0; layer <= Layers; layer++)
            {
                var hidden = o.HiddenStates[layer].Value.ToHost();
                foreach (int p in item.Positions)
                {
                    var f = new float[h];
                    if (p >= 0) Array.Copy(hidden, p * h, f, 0, h);
                    else
                    {
                        for (int t = 0; t < real; t++) for (int j = 0; j < h; j++) f[j] += hidden[t * h + j];
                        for (int j = 0; j < h; j++) f[j] /= real;
                    }
                    perLayer[layer].Add(f);
                }
            }
        }
        return perLayer;
    }

    /// <summary>Probe accuracy per layer (0 = embeddings … L) on the evaluation items.</summary>
    public double[] Probe(IReadOnlyList<ProbeItem> train, IReadOnlyList<ProbeItem> eval, int classes, int seed = 0)
    {
        var trainX = Features(train);
        var evalX = Features(eval);
        var trainY = train.SelectMany(i => i.Labels).ToArray();
        var evalY = eval.SelectMany(i => i.Labels).ToArray();
        return Enumerable.Range(0, Layers + 1)
            .Select(l => LinearProbe.TrainAndEvaluate(trainX[l].ToArray(), trainY, evalX[l].ToArray(), evalY, classes, seed: seed)).ToArray();
    }

    /// <summary>
    /// Per layer (0 = embeddings): anisotropy (mean cosine similarity of token vectors from different
    /// texts), intra-sentence similarity (mean cosine of each token to its text's mean vector) and
    /// self-similarity (mean cosine between occurrences of the same word piece in different texts),
    /// as Ethayarajh (2019) defines them. [CLS] and [SEP] are left out.
    /// </summary>
    public (double[] Anisotropy, double[] IntraSentence, double[] SelfSimilarity) Similarity(IReadOnlyList<string> texts, int seed = 0)
    {
        var items = texts.Select(t =>
        {
            var x = encoder.Batch([t]);
            return new ProbeItem(x, Enumerable.Range(1, x.SeqLen - 2).ToArray(), new int[x.SeqLen - 2]);
        }).Where(i => i.Positions.Length > 0).ToList();
        if (items.Count < 2) throw new ArgumentException("similarity needs at least two texts with words");
        var features = Features(items);
        var owner = items.SelectMany((item, k) => item.Positions.Select(_ => k)).ToArray();
        var ids = items.SelectMany(item => item.Positions.Select(p => item.Input.InputIds[p])).ToArray();
        var rng = new Random(seed);
        int layers = Layers + 1;
        var aniso = new double[layers];
        var intra = new double[layers];
        var self = new double[layers];
        var pairs = Enumerable.Range(0, 2000).Select(_ => (rng.Next(ids.Length), rng.Next(ids.Length))).Where(p => owner[p.Item1] != owner[p.Item2]).ToList();
        var sameWord = new List<(int, int)>();
        foreach (var g in Enumerable.Range(0, ids.Length).GroupBy(i => ids[i]))
        {
            var occ = g.ToList();
            for (int a = 0; a < occ.Count && sameWord.Count < 4000; a++)
                for (int b = a + 1; b < occ.Count; b++)
                    if (owner[occ[a]] != owner[occ[b]]) sameWord.Add((occ[a], occ[b]));
        }
        for (int l = 0; l < layers; l++)
        {
            var f = features[l];
            aniso[l] = pairs.Count > 0 ? pairs.Average(p => Cosine(f[p.Item1], f[p.Item2])) : double.NaN;
            self[l] = sameWord.Count > 0 ? sameWord.Average(p => Cosine(f[p.Item1], f[p.Item2])) : double.NaN;
            double sum = 0;
            int n = 0;
            foreach (var group in Enumerable.Range(0, ids.Length).GroupBy(i => owner[i]))
            {
                var members = group.ToList();
                var mean = new float[f[0].Length];
                foreach (int i in members) for (int j = 0; j < mean.Length; j++) mean[j] += f[i][j] / members.Count;
                foreach (int i in members) { sum += Cosine(f[i], mean); n++; }
            }
            intra[l] = sum / n;
        }
        return (aniso, intra, self);
    }

    public static double Cosine(float[] a, float[] b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
        return na == 0 || nb == 0 ? 0 : dot / Math.Sqrt(na * nb);
    }
}
