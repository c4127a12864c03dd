// Per-head attention statistics from "What does BERT look at?" (Clark et al. 2019) and "Revealing
// the dark secrets of BERT" (Kovaleva et al. 2019), computed from probability maps. All functions
// take one sequence's maps [NH, S, S] (rows: queries, columns: keys, each row sums to 1) over its
// real (unpadded) tokens, and average over query rows.
namespace IlgpuBert.Analysis;

/// <summary>Averages for one head: where its attention goes, and how spread it is.</summary>
public sealed record HeadStats(double Entropy, double ToCls, double ToSep, double ToPunctuation, double ToPrevious, double ToNext, double ToSelf)
{
    public static readonly string[] Names = ["entropy", "to_cls", "to_sep", "to_punct", "to_prev", "to_next", "to_self"];

    public double[] Values => [Entropy, ToCls, ToSep, ToPunctuation, ToPrevious, ToNext, ToSelf];
}

public enum HeadPattern { Vertical, Diagonal, Block, Heterogeneous }

public static class HeadStatistics
{
    /// <summary>Statistics of head h of one sequence. <paramref name="kinds"/> marks each token: 'c' [CLS], 's' [SEP], 'p' punctuation, else 'w'.</summary>
    public static HeadStats Compute(float[] probs, int s, int h, char[] kinds)
    {
        double entropy = 0, cls = 0, sep = 0, punct = 0, prev = 0, next = 0, self = 0;
        for (int i = 0; i < s; i++)
        {
            long row = ((long)h * s + i) * s;
            for (int j = 0; j < s; j++)
            {
                double p = probs[row + j];
                if (p > 0) entropy -= p * Math.Log(p);
                switch (kinds[j])
                {
                    case 'c': cls += p; break;
                    case 's': sep += p; break;
                    case 'p': punct += p; break;
                }
            }
            if (i > 0) prev += probs[row + i - 1];
            if (i + 1 < s) next += probs[row + i + 1];
            self += probs[row + i];
        }
        return new HeadStats(entropy / s, cls / s, sep / s, punct / s, prev / s, next / s, self / s);
    }

    /// <summary>
    /// The dominant pattern of a head, by a stated rule (Kovaleva et al.'s classes): diagonal when
    /// at least half the attention goes to the previous, same or next token; vertical when at
    /// least half goes to [CLS] and [SEP]; block when, within the segment of each query, at least
    /// 80% stays there and no single key column takes half; heterogeneous otherwise.
    /// </summary>
    public static HeadPattern Classify(HeadStats s, double withinSegment)
    {
        if (s.ToPrevious + s.ToSelf + s.ToNext >= 0.5) return HeadPattern.Diagonal;
        if (s.ToCls + s.ToSep >= 0.5) return HeadPattern.Vertical;
        if (withinSegment >= 0.8) return HeadPattern.Block;
        return HeadPattern.Heterogeneous;
    }

    public const string ClassificationRule =
        "diagonal: to_prev + to_self + to_next >= 0.5; vertical: to_cls + to_sep >= 0.5; " +
        "block: >= 80% of each query's attention inside its own segment; heterogeneous: otherwise (checked in this order)";

    /// <summary>Share of attention each query gives to keys of its own segment (token_type_ids).</summary>
    public static double WithinSegment(float[] probs, int s, int h, int[] segments)
    {
        double total = 0;
        for (int i = 0; i < s; i++)
        {
            long row = ((long)h * s + i) * s;
            for (int j = 0; j < s; j++)
                if (segments[j] == segments[i]) total += probs[row + j];
        }
        return total / s;
    }

    /// <summary>'c', 's', 'p' or 'w' for each word piece.</summary>
    public static char[] Kinds(IReadOnlyList<string> tokens) => tokens.Select(t => t switch
    {
        "[CLS]" => 'c',
        "[SEP]" => 's',
        _ when t.Length == 1 && char.IsPunctuation(t[0]) => 'p',
        _ => 'w',
    }).ToArray();
}
