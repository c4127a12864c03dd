// BART's noising functions (Lewis et al. 2019, §2.2) for an encoder: the corrupted text is the
// source and the original the target of one sequence, [CLS] corrupted [SEP] original [SEP], under
// the seq2seq attention mask (the source sees itself, the target its past and the source: UniLM's
// prefix mask, BertInputs.AttentionPrefix). The target is predicted left to right through the tied
// MLM decoder: the source's [SEP] predicts the first original token, and each target token the next.
//
// Applied in the order BART's denoising dataset applies them: sentence permutation, then text
// infilling, token deletion and token masking (each on what the one before left), then document
// rotation. Rates as the paper's final model: 30 % of the tokens (λ = 3 spans for infilling).
namespace IlgpuBert.Pretraining;

public enum NoiseFunction { TokenMasking, TokenDeletion, TextInfilling, SentencePermutation, DocumentRotation }

public sealed class Denoiser
{
    /// <summary>Share of the tokens masked, deleted or covered by infilling spans (BART's 30 %).</summary>
    public const double Rate = 0.3;

    /// <summary>Mean length of an infilling span (Poisson λ = 3).</summary>
    public const double SpanLambda = 3;

    private readonly SpecialIds special;
    private readonly HashSet<int> sentenceEnds;

    /// <param name="sentenceEnds">Word pieces that end a sentence (".", "!", "?"): sentence permutation splits after them.</param>
    public Denoiser(SpecialIds special, IEnumerable<int> sentenceEnds, IReadOnlyList<NoiseFunction> noise)
    {
        if (noise.Count == 0) throw new ArgumentException("--objective denoise needs at least one noise function");
        if (noise.Distinct().Count() != noise.Count) throw new ArgumentException("--noise names a function twice");
        this.special = special;
        this.sentenceEnds = [.. sentenceEnds];
        Noise = noise;
    }

    public IReadOnlyList<NoiseFunction> Noise { get; }

    /// <summary>The text's length the original may take in a sequence of <paramref name="seqLen"/> (a source at most as long, and 3 special tokens).</summary>
    public static int OriginalLength(int seqLen) => (seqLen - 3) / 2;

    /// <summary>The noising functions in order, on the text's word pieces.</summary>
    public int[] Corrupt(int[] text, Random rng)
    {
        var x = text;
        if (Has(NoiseFunction.SentencePermutation)) x = PermuteSentences(x, rng);
        if (Has(NoiseFunction.TextInfilling)) x = Infill(x, rng);
        if (Has(NoiseFunction.TokenDeletion)) x = Delete(x, rng);
        if (Has(NoiseFunction.TokenMasking)) x = MaskTokens(x, rng);
        if (Has(NoiseFunction.DocumentRotation)) x = Rotate(x, rng);
        return x;
    }

    private bool Has(NoiseFunction f) => Noise.Contains(f);

    /// <summary>
    /// The seq2seq example of an example's text (its word pieces without [CLS] and [SEP], cut to
    /// <see cref="OriginalLength"/>): [CLS] corrupted [SEP] original [SEP], segment 0 then 1, the
    /// source's length as the attention prefix, labels the next token at the source's [SEP] and every
    /// target position but the last.
    /// </summary>
    public (Example Example, MaskedExample Masked, int Prefix) Build(Example e, int seqLen, Random rng)
    {
        int limit = OriginalLength(seqLen);
        var original = e.Ids.Where((_, i) => !e.Special[i]).Take(limit).ToArray();
        var source = Corrupt(original, rng);
        if (source.Length > seqLen - 3 - original.Length) source = source[..(seqLen - 3 - original.Length)]; // infilling's insertions
        int[] ids = [special.Cls, .. source, special.Sep, .. original, special.Sep];
        int prefix = source.Length + 2, n = ids.Length;
        var labels = Enumerable.Repeat(-100, n).ToArray();
        for (int p = prefix - 1; p < n - 1; p++) labels[p] = ids[p + 1];
        var types = Enumerable.Range(0, n).Select(i => i < prefix ? 0 : 1).ToArray();
        var specials = ids.Select((id, i) => i == 0 || i == prefix - 1 || i == n - 1).ToArray();
        var example = new Example(ids, types, new bool[n], new bool[n], specials, ExampleGenerator.IgnoreLabel);
        return (example, new MaskedExample(ids, labels), prefix);
    }

    /// <summary>Sentences (split after each sentence-ending piece; a last one without it too) in a random order.</summary>
    public int[] PermuteSentences(int[] x, Random rng)
    {
        var sentences = new List<int[]>();
        int start = 0;
        for (int i = 0; i < x.Length; i++)
            if (sentenceEnds.Contains(x[i]) || i == x.Length - 1)
            {
                sentences.Add(x[start..(i + 1)]);
                start = i + 1;
            }
        var order = sentences.ToArray();
        rng.Shuffle(order);
        return [.. order.SelectMany(s => s)];
    }

    /// <summary>
    /// Text infilling: spans of Poisson(3) length drawn until 30 % of the tokens are covered, each run
    /// of covered tokens replaced by one [MASK]; a span of length 0 inserts a [MASK].
    /// </summary>
    public int[] Infill(int[] x, Random rng)
    {
        int n = x.Length, target = (int)Math.Round(Rate * n), covered = 0;
        var inSpan = new bool[n];
        var insertBefore = new bool[n];
        for (int tries = 0; covered < target && tries < 4 * n + 16; tries++)
        {
            int length = Poisson(rng, SpanLambda), start = rng.Next(n);
            if (length == 0)
            {
                insertBefore[start] = true;
                continue;
            }
            for (int i = start; i < Math.Min(n, start + length) && covered < target; i++)
                if (!inSpan[i])
                {
                    inSpan[i] = true;
                    covered++;
                }
        }
        var result = new List<int>(n);
        for (int i = 0; i < n; i++)
        {
            if (insertBefore[i]) result.Add(special.Mask);
            if (!inSpan[i]) result.Add(x[i]);
            else if (i == 0 || !inSpan[i - 1]) result.Add(special.Mask);
        }
        return [.. result];
    }

    /// <summary>Token deletion: each token dropped with probability 0.3.</summary>
    public static int[] Delete(int[] x, Random rng) => [.. x.Where(_ => rng.NextDouble() >= Rate)];

    /// <summary>Token masking: each token replaced by [MASK] with probability 0.3.</summary>
    public int[] MaskTokens(int[] x, Random rng) => [.. x.Select(t => rng.NextDouble() < Rate ? special.Mask : t)];

    /// <summary>Document rotation: the text starting at a token drawn uniformly, the rest appended.</summary>
    public static int[] Rotate(int[] x, Random rng)
    {
        if (x.Length == 0) return x;
        int k = rng.Next(x.Length);
        return [.. x[k..], .. x[..k]];
    }

    /// <summary>A Poisson(λ) draw (Knuth's product of uniforms: λ is small).</summary>
    public static int Poisson(Random rng, double lambda)
    {
        double limit = Math.Exp(-lambda), p = rng.NextDouble();
        int k = 0;
        while (p > limit)
        {
            k++;
            p *= rng.NextDouble();
        }
        return k;
    }

    /// <summary>--noise's names, comma-separated or repeated: token-masking, token-deletion, text-infilling, sentence-permutation, document-rotation.</summary>
    public static NoiseFunction[] Parse(IEnumerable<string> names) =>
        [.. names.SelectMany(n => n.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).Select(n =>
            Enum.GetValues<NoiseFunction>().FirstOrDefault(f => PretrainingOptions.Flag(f) == n, (NoiseFunction)(-1)) is var f && f >= 0 ? f
            : throw new ArgumentException($"--noise {n}: unknown; choose from {string.Join(", ", Enum.GetValues<NoiseFunction>().Select(x => PretrainingOptions.Flag(x)))}"))];
}
