// What BERT knows as cloze answers (Petroni et al. 2019, LAMA; "A Primer in BERTology" §3.3): a fact
// "[X] is the capital of [Y]." with its subject in place of [X] and [MASK] in place of [Y], scored by
// where the masked-language-model head ranks the object among the vocabulary. As LAMA does, only
// objects that are one word piece are scored (a multi-piece object cannot be one [MASK]); the others
// are counted and skipped. The ranking is over the whole vocabulary less the five special tokens.
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Analysis;

/// <summary>One fact: a template with [X] and [Y] once each, its subject and object, and the relation it belongs to.</summary>
public sealed record ClozeFact(string Relation, string Template, string Subject, string Object)
{
    /// <summary>The query: the subject in place of [X], [MASK] in place of [Y].</summary>
    public string Query => Template.Replace("[X]", Subject, StringComparison.Ordinal).Replace("[Y]", "[MASK]", StringComparison.Ordinal);
}

/// <summary>How the model answered one fact: its top-1 token and the object's rank (1 = first; 0 = not scored).</summary>
public sealed record ClozeAnswer(ClozeFact Fact, string Top1, int Rank);

/// <summary>A relation's scores over its single-piece facts: P@1, P@10 and mean reciprocal rank.</summary>
public sealed record ClozeScore(string Relation, int Facts, int Scored, int Skipped, double PrecisionAt1, double PrecisionAt10, double Mrr);

/// <summary>LAMA-style cloze probing of a model's masked-language-model head.</summary>
public static class Cloze
{
    /// <summary>
    /// A facts file: one JSON object per line with "template", "subject", "object" and optionally
    /// "relation" (else LAMA's "predicate_id", else the template itself names the relation).
    /// </summary>
    public static List<ClozeFact> Read(string path)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: no such facts file");
        var facts = new List<ClozeFact>();
        int line = 0;
        foreach (var raw in BoundedFile.ReadAllLines(path, BoundedFile.DataBytes, "facts file"))
        {
            line++;
            if (raw.Trim().Length == 0) continue;
            string where = $"{path}:{line}";
            var obj = StrictJson.Parse(raw, where, m => new DataFormatException(m)) as JsonObject ?? throw new DataFormatException($"{where}: not a JSON object");
            string? Field(string key, bool required) => obj.TryGetPropertyValue(key, out var node) && node is JsonValue v && v.GetValueKind() == JsonValueKind.String
                ? v.GetValue<string>()
                : node is not null ? throw new DataFormatException($"{where}: \"{key}\" must be a string")
                : required ? throw new DataFormatException($"{where}: no \"{key}\" field") : null;
            string template = Field("template", true)!, subject = Field("subject", true)!, obj2 = Field("object", true)!;
            foreach (var slot in new[] { "[X]", "[Y]" })
            {
                int count = (template.Length - template.Replace(slot, "", StringComparison.Ordinal).Length) / slot.Length;
                if (count != 1) throw new DataFormatException($"{where}: the template must hold {slot} once, it holds it {count} times");
            }
            if (subject.Contains("[MASK]", StringComparison.Ordinal) || template.Contains("[MASK]", StringComparison.Ordinal))
                throw new DataFormatException($"{where}: [MASK] belongs only where [Y] is");
            if (subject.Trim().Length == 0 || obj2.Trim().Length == 0) throw new DataFormatException($"{where}: a blank subject or object");
            facts.Add(new ClozeFact(Field("relation", false) ?? Field("predicate_id", false) ?? template, template, subject, obj2));
        }
        if (facts.Count == 0) throw new DataFormatException($"{path}: no facts");
        return facts;
    }

    /// <summary>
    /// Every fact's answer (rank 0 where its object is not one word piece) and each relation's scores,
    /// in the order relations first appear; <paramref name="batchSize"/> queries per forward pass.
    /// </summary>
    public static (List<ClozeScore> Scores, List<ClozeAnswer> Answers) Run(BertForPreTraining model, BertTextEncoder encoder, IReadOnlyList<ClozeFact> facts, int batchSize = 32)
    {
        if (batchSize < 1) throw new ArgumentException($"batch size must be positive, got {batchSize}");
        var vocab = encoder.Vocabulary;
        var special = new HashSet<int> { encoder.PadId, encoder.UnknownId, encoder.ClsId, encoder.SepId, encoder.MaskId };
        int limit = model.Config.MaxPositionEmbeddings;
        var answers = new ClozeAnswer?[facts.Count];
        var scored = new List<(int Fact, int Object, int[] Ids)>();
        for (int i = 0; i < facts.Count; i++)
        {
            var pieces = encoder.Encode(facts[i].Object);
            if (pieces.Length != 1 || special.Contains(pieces[0]))
            {
                answers[i] = new ClozeAnswer(facts[i], "", 0);
                continue;
            }
            var (ids, _) = encoder.EncodeRow(facts[i].Query, null, limit);
            if (ids.Count(id => id == encoder.MaskId) != 1)
                throw new ArgumentException($"fact {i + 1} ({facts[i].Query}): the query's [MASK] was cut at the model's {limit} tokens");
            scored.Add((i, pieces[0], ids));
        }
        var predicted = MaskedPredictions(model, encoder, scored.Select(c => (c.Ids, c.Object)).ToList(), batchSize);
        for (int r = 0; r < scored.Count; r++)
            answers[scored[r].Fact] = new ClozeAnswer(facts[scored[r].Fact], vocab[predicted[r].Top1], predicted[r].Rank);
        var all = answers.Select(a => a!).ToList();
        return ([.. all.GroupBy(a => a.Fact.Relation).Select(g => Score(g.Key, [.. g]))], all);
    }

    /// <summary>
    /// For each input (one [MASK] in its ids) the MLM head's first word piece at the mask and the rank
    /// of <c>Target</c> there (1 = first), both over the vocabulary less the five special tokens.
    /// </summary>
    public static (int Top1, int Rank)[] MaskedPredictions(BertForPreTraining model, BertTextEncoder encoder, IReadOnlyList<(int[] Ids, int Target)> inputs, int batchSize = 32)
    {
        if (batchSize < 1) throw new ArgumentException($"batch size must be positive, got {batchSize}");
        var special = new HashSet<int> { encoder.PadId, encoder.UnknownId, encoder.ClsId, encoder.SepId, encoder.MaskId };
        int v = model.Config.VocabSize;
        var result = new (int, int)[inputs.Count];
        for (int at = 0; at < inputs.Count; at += batchSize)
        {
            var chunk = inputs.Skip(at).Take(batchSize).ToList();
            var padded = encoder.Pad(chunk.Select(c => (c.Ids, new int[c.Ids.Length])).ToList());
            var labels = Enumerable.Repeat(-100, padded.Batch * padded.SeqLen).ToArray();
            for (int r = 0; r < chunk.Count; r++)
            {
                if (chunk[r].Ids.Count(id => id == encoder.MaskId) != 1) throw new ArgumentException($"input {at + r + 1} holds no single [MASK]");
                labels[r * padded.SeqLen + Array.IndexOf(chunk[r].Ids, encoder.MaskId)] = Math.Max(0, chunk[r].Target);
            }
            using var tape = new Tape(recording: false);
            // Logits at the masked positions only: row r is input r's [MASK].
            var logits = model.Forward(tape, padded with { Labels = labels }, Dropouts.Off, maskedOnly: true).PredictionLogits.Value.ToHost();
            for (int r = 0; r < chunk.Count; r++)
            {
                var row = logits.AsSpan(r * v, v);
                float target = row[Math.Max(0, chunk[r].Target)];
                int rank = 1, best = -1;
                for (int j = 0; j < v; j++)
                {
                    if (special.Contains(j)) continue;
                    if (row[j] > target) rank++;
                    if (best < 0 || row[j] > row[best]) best = j;
                }
                result[at + r] = (best, rank);
            }
        }
        return result;
    }

    /// <summary>P@1, P@10 and MRR over the scored answers (NaN when none is), with the counts.</summary>
    public static ClozeScore Score(string relation, IReadOnlyList<ClozeAnswer> answers)
    {
        var ranks = answers.Where(a => a.Rank > 0).Select(a => a.Rank).ToList();
        double Mean(Func<int, double> f) => ranks.Count == 0 ? double.NaN : ranks.Average(f);
        return new ClozeScore(relation, answers.Count, ranks.Count, answers.Count - ranks.Count, Mean(r => r == 1 ? 1 : 0), Mean(r => r <= 10 ? 1 : 0), Mean(r => 1.0 / r));
    }
}
