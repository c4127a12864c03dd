// A plain double-precision BertForPreTraining written from HF's modeling_bert.py (eval mode, no
// dropout), over parameters named as in HF checkpoints. It shares no code with the engine: it is
// the independent implementation the model is checked against, and what finite differences of
// the whole model's loss are taken of.
using IlgpuBert.Model;

namespace IlgpuBert.Tests;

public sealed class BertReference(BertConfig c, Dictionary<string, double[]> p)
{
    public Dictionary<string, double[]> P { get; } = p;

    public sealed record Outputs(double[] LastHidden, double[] Pooled, double[] Logits, double[] Nsp, double Loss, List<double[]> Hidden, List<double[]> Attentions);

    private double Act(double x) => c.HiddenAct switch
    {
        "gelu" => Reference.GeluErf(x),
        "relu" => Math.Max(0, x),
        _ => Reference.GeluTanh(x),
    };

    /// <summary>y[n, out] = x[n, in]·Wᵀ + b.</summary>
    private static double[] Linear(double[] x, int n, int inDim, double[] w, double[] b, int outDim)
    {
        var y = new double[n * outDim];
        for (int r = 0; r < n; r++)
            for (int o = 0; o < outDim; o++)
            {
                double s = b[o];
                for (int i = 0; i < inDim; i++) s += x[r * inDim + i] * w[o * inDim + i];
                y[r * outDim + o] = s;
            }
        return y;
    }

    private double[] LayerNorm(double[] x, int n, string prefix, int? width = null) =>
        Reference.LayerNorm(x, null, P[prefix + ".weight"], P[prefix + ".bias"], n, width ?? c.HiddenSize, c.LayerNormEps).Y;

    private static double CrossEntropy(double[] logits, int[] labels, int rows, int v) => Reference.CrossEntropy(logits, labels, rows, v);

    /// <summary>
    /// Tensor <paramref name="part"/> (BERT's name within a layer, "attention.self.query.weight") of
    /// encoder layer <paramref name="l"/>: in a BERT "bert.encoder.layer.l.part"; in an ALBERT (HF's
    /// modeling_albert.py) its group's AlbertLayer, group int(l / (L / G)), under ALBERT's names.
    /// </summary>
    private string LayerTensor(BertConfig g, string prefix, int l, string part)
    {
        if (!g.Albert) return $"{prefix}bert.encoder.layer.{l}.{part}";
        string[] renames = ["attention.self", "attention", "attention.output.dense", "attention.dense", "attention.output.LayerNorm", "attention.LayerNorm",
            "intermediate.dense", "ffn", "output.dense", "ffn_output", "output.LayerNorm", "full_layer_layer_norm"];
        for (int i = 0; i < renames.Length; i += 2)
            if (part.StartsWith(renames[i], StringComparison.Ordinal)) { part = renames[i + 1] + part[renames[i].Length..]; break; }
        int group = l / (g.NumHiddenLayers / g.NumHiddenGroups);
        return $"{prefix}albert.encoder.albert_layer_groups.{group}.albert_layers.0.{part}";
    }

    /// <summary>The encoder layers of a model of config <paramref name="g"/> whose tensors are named <paramref name="prefix"/> + HF's names.</summary>
    private double[] Encoder(double[] hidden, BertInputs x, BertConfig g, string prefix, List<double[]>? states = null, List<double[]>? attentions = null)
    {
        int b = x.Batch, s = x.SeqLen, h = g.HiddenSize, t = b * s, nh = g.NumAttentionHeads, hd = g.HeadDim;
        for (int l = 0; l < g.NumHiddenLayers; l++)
        {
            double[] W(string part) => P[LayerTensor(g, prefix, l, part)];
            var q = Linear(hidden, t, h, W("attention.self.query.weight"), W("attention.self.query.bias"), h);
            var kk = Linear(hidden, t, h, W("attention.self.key.weight"), W("attention.self.key.bias"), h);
            var v = Linear(hidden, t, h, W("attention.self.value.weight"), W("attention.self.value.bias"), h);
            var ctx = new double[t * h];
            var probs = new double[b * nh * s * s]; // [B, NH, S, S]
            for (int bb = 0; bb < b; bb++)
                for (int hh = 0; hh < nh; hh++)
                    for (int i = 0; i < s; i++)
                    {
                        var sc = new double[s];
                        for (int j = 0; j < s; j++)
                        {
                            if (x.AttentionMask[bb * s + j] == 0 || (x.AttentionPrefix is { } visible && j >= visible[bb] && j > i)
                                || (x.KeyRanks is { } keys && keys[bb * s + j] > x.QueryRanks![bb * s + i]))
                            {
                                sc[j] = double.NegativeInfinity; // masked, (UniLM) after the prefix and after the query, or ranked after the query
                                continue;
                            }
                            double d = 0;
                            for (int z = 0; z < hd; z++) d += q[(bb * s + i) * h + hh * hd + z] * kk[(bb * s + j) * h + hh * hd + z];
                            sc[j] = d / Math.Sqrt(hd);
                        }
                        var pr = Reference.Softmax(sc, 1, s);
                        Array.Copy(pr, 0, probs, ((bb * nh + hh) * s + i) * s, s);
                        for (int j = 0; j < s; j++)
                            for (int z = 0; z < hd; z++)
                                ctx[(bb * s + i) * h + hh * hd + z] += pr[j] * v[(bb * s + j) * h + hh * hd + z];
                    }
            attentions?.Add(probs);
            var attn = Linear(ctx, t, h, W("attention.output.dense.weight"), W("attention.output.dense.bias"), h);
            var h1 = LayerNorm(attn.Select((a, i) => a + hidden[i]).ToArray(), t, LayerTensor(g, prefix, l, "attention.output.LayerNorm"), h);
            var inter = Linear(h1, t, h, W("intermediate.dense.weight"), W("intermediate.dense.bias"), g.IntermediateSize).Select(Act).ToArray();
            var o = Linear(inter, t, g.IntermediateSize, W("output.dense.weight"), W("output.dense.bias"), h);
            hidden = LayerNorm(o.Select((a, i) => a + h1[i]).ToArray(), t, LayerTensor(g, prefix, l, "output.LayerNorm"), h);
            states?.Add(hidden);
        }
        return hidden;
    }

    /// <summary>
    /// ELECTRA's generator (config <paramref name="g"/>, tensors "generator.…") on the masked batch:
    /// this model's embeddings, projected to the generator's width, its layers, its MLM head back to
    /// this width with the decoder tied to this model's word embeddings; the MLM loss over the labels.
    /// </summary>
    public double GeneratorLoss(BertInputs x, BertConfig g)
    {
        int t = x.Batch * x.SeqLen, h = c.HiddenSize;
        var hidden = Linear(Embed(x), t, h, P["generator.electra.embeddings_project.weight"], P["generator.electra.embeddings_project.bias"], g.HiddenSize);
        hidden = Encoder(hidden, x, g, "generator.");
        var tr = Linear(hidden, t, g.HiddenSize, P["generator.generator_predictions.dense.weight"], P["generator.generator_predictions.dense.bias"], h).Select(Act).ToArray();
        tr = LayerNorm(tr, t, "generator.generator_predictions.LayerNorm");
        var logits = Linear(tr, t, h, P["bert.embeddings.word_embeddings.weight"], P["generator.generator_lm_head.bias"], c.VocabSize);
        return CrossEntropy(logits, x.Labels!, t, c.VocabSize);
    }

    /// <summary>The embedding layer's output: word + position + token type, LayerNorm.</summary>
    /// <summary>
    /// The embedding layer's output: word + position + token type, LayerNorm; an ALBERT's are
    /// embedding_size wide, then embedding_hidden_mapping_in takes them to hidden_size (HF's
    /// AlbertTransformer, whose first hidden state is after it).
    /// </summary>
    private double[] Embed(BertInputs x)
    {
        int s = x.SeqLen, h = c.EmbeddingSize, t = x.Batch * s;
        string at = c.Albert ? "albert.embeddings." : "bert.embeddings.";
        var word = P[at + "word_embeddings.weight"];
        var pos = P[at + "position_embeddings.weight"];
        var type = P[at + "token_type_embeddings.weight"];
        var e = new double[t * h];
        for (int k = 0; k < t; k++)
            for (int j = 0; j < h; j++)
                e[k * h + j] = word[x.InputIds[k] * h + j] + pos[(x.PositionIds?[k] ?? k % s) * h + j] + type[x.TokenTypeIds[k] * h + j];
        e = LayerNorm(e, t, at + "LayerNorm", h);
        return c.Albert ? Linear(e, t, h, P["albert.encoder.embedding_hidden_mapping_in.weight"], P["albert.encoder.embedding_hidden_mapping_in.bias"], c.HiddenSize) : e;
    }

    public Outputs Forward(BertInputs x)
    {
        int b = x.Batch, s = x.SeqLen, h = c.HiddenSize, e = c.EmbeddingSize, t = b * s;
        bool albert = c.Albert; // HF's AlbertForPreTraining: albert.pooler, predictions.* (back to embedding_size), sop_classifier
        var word = P[albert ? "albert.embeddings.word_embeddings.weight" : "bert.embeddings.word_embeddings.weight"];
        var hidden = Embed(x);
        var states = new List<double[]> { hidden };
        var attentions = new List<double[]>();
        hidden = Encoder(hidden, x, c, "", states, attentions);
        var cls = Enumerable.Range(0, b).SelectMany(bb => hidden.Skip(bb * s * h).Take(h)).ToArray();
        string pooler = albert ? "albert.pooler." : "bert.pooler.dense.", transform = albert ? "predictions." : "cls.predictions.transform.";
        string sentence = albert ? "sop_classifier.classifier." : "cls.seq_relationship.";
        var pooled = Linear(cls, b, h, P[pooler + "weight"], P[pooler + "bias"], h).Select(Math.Tanh).ToArray();
        var tr = Linear(hidden, t, h, P[transform + "dense.weight"], P[transform + "dense.bias"], e).Select(Act).ToArray();
        tr = LayerNorm(tr, t, transform + "LayerNorm", e);
        var logits = Linear(tr, t, e, word, P[albert ? "predictions.bias" : "cls.predictions.bias"], c.VocabSize);
        var nsp = Linear(pooled, b, h, P[sentence + "weight"], P[sentence + "bias"], c.SentenceClasses);
        double loss = 0;
        if (x.Labels is not null) loss += CrossEntropy(logits, x.Labels, t, c.VocabSize);
        if (x.NextSentenceLabel is not null) loss += CrossEntropy(nsp, x.NextSentenceLabel, b, c.SentenceClasses);
        // ERNIE 2.0's token heads: a 2-way classifier on every position, the mean over labelled ones.
        foreach (var (head, labels) in x.AuxLabels ?? new Dictionary<string, int[]>())
        {
            string prefix = $"cls.aux.{head.Replace('-', '_')}.";
            loss += CrossEntropy(Linear(hidden, t, h, P[prefix + "weight"], P[prefix + "bias"], 2), labels, t, 2);
        }
        return new Outputs(hidden, pooled, logits, nsp, loss, states, attentions);
    }
}
