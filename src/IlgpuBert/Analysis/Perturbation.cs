// Is BERT sensitive to malformed input? Ettinger (2020; "A Primer in BERTology" §3.1: BERT is
// insensitive to shuffled word order, truncated sentences and removed subjects and objects) probes
// how predictions move when the input is damaged. Each perturbation works on whitespace words:
// - shuffle-n: the words cut into consecutive n-grams (n = 1, 2, 3), the n-grams put in a random order;
// - truncate: the first half of the words kept (⌈count / 2⌉);
// - remove-TAG: the words a tag file marks with TAG left out (one tag per word, "_" or "O" for none);
//   from a CoNLL-U treebank the tags are SUBJ and OBJ: every word of the phrase (the subtree) of a
//   nominal subject (nsubj, nsubj:pass) or an object (obj, iobj), the outermost such phrase deciding.
// A fine-tuned classifier is scored by accuracy and by the share of predictions that changed; an MLM
// by the top-1 word piece at one masked word: the share that agree with the unperturbed input's, and
// the share that are the original word. The masked word is a one-piece word drawn (seeded) from the
// first half of the sentence, so truncation keeps it, and never a word the tag file marks.
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Analysis;

/// <summary>One perturbation's effect: examples, accuracy (classifier: against the labels, NaN without; MLM: the original word) and the share of predictions equal to the unperturbed input's.</summary>
public sealed record PerturbationRow(string Perturbation, int Examples, double Accuracy, double SamePrediction)
{
    /// <summary>How many examples the perturbation changed at all (a one-word text has no other order; a text with no tagged word loses none).</summary>
    public int InputsChanged { get; init; }

    public double Changed => 1 - SamePrediction;
}

public static class Perturbation
{
    public const string Unperturbed = "none";

    /// <summary>The perturbations run: the three n-gram shuffles, truncation, and a removal per tag the tag file uses.</summary>
    public static List<string> Names(IEnumerable<string>? tags) =>
        ["shuffle-1", "shuffle-2", "shuffle-3", "truncate", .. (tags ?? []).Where(IsTag).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).Select(t => "remove-" + t)];

    /// <summary>Whether a tag marks its word (anything but "_" and "O").</summary>
    public static bool IsTag(string tag) => tag is not ("_" or "O");

    /// <summary>The words after one named perturbation (<paramref name="tags"/>: one per word, or null).</summary>
    public static string[] Apply(string name, IReadOnlyList<string> words, IReadOnlyList<string>? tags, Random rng)
    {
        if (name.StartsWith("shuffle-", StringComparison.Ordinal) && int.TryParse(name["shuffle-".Length..], out int n) && n >= 1)
        {
            var grams = words.Chunk(n).ToArray();
            rng.Shuffle(grams);
            return [.. grams.SelectMany(g => g)];
        }
        if (name == "truncate") return [.. words.Take((words.Count + 1) / 2)];
        if (name.StartsWith("remove-", StringComparison.Ordinal))
        {
            if (tags is null) throw new ArgumentException($"{name} needs a tag file");
            string tag = name["remove-".Length..];
            return [.. words.Where((_, i) => tags[i] != tag)];
        }
        if (name == Unperturbed) return [.. words];
        throw new ArgumentException($"unknown perturbation \"{name}\" (shuffle-N, truncate, remove-TAG)");
    }

    /// <summary>
    /// A tag file: one line per evaluation example, one whitespace-separated tag per word of its text,
    /// checked against the texts' word counts.
    /// </summary>
    public static List<string[]> ReadTags(string path, IReadOnlyList<string> texts)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: no such tag file");
        var lines = File.ReadAllLines(path).Select(l => l.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).ToList();
        while (lines.Count > texts.Count && lines[^1].Length == 0) lines.RemoveAt(lines.Count - 1);
        if (lines.Count != texts.Count) throw new DataFormatException($"{path}: {lines.Count} lines of tags for {texts.Count} evaluation examples");
        for (int i = 0; i < lines.Count; i++)
        {
            int words = Words(texts[i]).Length;
            if (lines[i].Length != words) throw new DataFormatException($"{path}:{i + 1}: {lines[i].Length} tags for the {words} words of \"{texts[i]}\"");
        }
        return lines;
    }

    /// <summary>SUBJ / OBJ / _ per word of each tree (its DEPREL column): the subtrees of subjects and objects.</summary>
    public static List<string[]> TagsFromTrees(IReadOnlyList<DependencyTree> trees) =>
        trees.Select(t =>
        {
            var relations = t.Relations ?? throw new ArgumentException("subject and object tags need the trees' relations (DEPREL)");
            string Kind(int w) => relations[w].Split(':')[0] switch { "nsubj" => "SUBJ", "obj" or "iobj" => "OBJ", _ => "_" };
            return Enumerable.Range(0, t.Words.Length).Select(w =>
            {
                string tag = "_";
                for (int a = w; a >= 0; a = t.Heads[a]) if (Kind(a) != "_") tag = Kind(a); // the outermost phrase wins
                return tag;
            }).ToArray();
        }).ToList();

    public static string[] Words(string text) => text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);

    /// <summary>
    /// A classifier (classification or pair classification) on every perturbation of the first text
    /// (a pair's second text is perturbed the same way, with its own shuffle; tags apply to the first).
    /// Row 0 is the unperturbed input.
    /// </summary>
    public static List<PerturbationRow> Classifier(BertForTask model, BertTextEncoder encoder, IReadOnlyList<TaskExample> examples, IReadOnlyList<string[]>? tags,
        int seed = 0, int batchSize = 32, BertHooks? hooks = null)
    {
        if (model.Task.Kind is not (TaskKind.Classification or TaskKind.PairClassification))
            throw new ArgumentException($"perturbation scores classifiers and MLMs; this model is fine-tuned for {model.Task.Kind}");
        if (examples.Count == 0) throw new ArgumentException("perturbation needs at least one evaluation example");
        var featurizer = new Featurizer(encoder, model.Task, model.Config.MaxPositionEmbeddings);
        int[] Predict(IEnumerable<TaskExample> xs) =>
            [.. Predictor.Predict(model, featurizer, xs.Select(e => featurizer.Make(e, labelled: false)).ToList(), batchSize, hooks).Select(p => p.Label)];
        // Unlabelled examples (all of them): flips are still measured, accuracy is NaN.
        bool labelled = examples[0].Label is not null;
        if (examples.Any(e => (e.Label is not null) != labelled)) throw new ArgumentException("some evaluation examples have labels and some do not");
        var labelIds = model.Task.Labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i, StringComparer.Ordinal);
        var gold = examples.Select(e => labelled ? labelIds.GetValueOrDefault(e.Label!, -1) : -1).ToArray();
        if (labelled && gold.Any(g => g < 0)) throw new ArgumentException($"every evaluation example needs one of the model's labels ({string.Join(", ", model.Task.Labels)})");
        var reference = Predict(examples);
        var rows = new List<PerturbationRow> { Row(Unperturbed, reference, reference, gold) };
        foreach (var name in Names(tags?.SelectMany(t => t)))
        {
            var rng = new Random(seed);
            var perturbed = examples.Select((e, i) => e with
            {
                Text = string.Join(' ', Apply(name, Words(e.Text), tags?[i], rng)),
                TextPair = e.TextPair is null ? null : string.Join(' ', Apply(name.StartsWith("remove-", StringComparison.Ordinal) ? Unperturbed : name, Words(e.TextPair), null, rng)),
            }).ToList();
            int changed = perturbed.Zip(examples).Count(p => Words(p.First.Text).SequenceEqual(Words(p.Second.Text)) is false
                || (p.Second.TextPair is not null && !Words(p.First.TextPair!).SequenceEqual(Words(p.Second.TextPair))));
            rows.Add(Row(name, Predict(perturbed), reference, gold) with { InputsChanged = changed });
        }
        return rows;
    }

    /// <summary>
    /// An MLM: one masked one-piece word per text (see the header); its top-1 under every
    /// perturbation against the unperturbed top-1 and the original word. Texts with no such word
    /// are left out; <paramref name="skipped"/> counts them. Row 0 is the unperturbed input.
    /// </summary>
    public static List<PerturbationRow> MaskedLanguageModel(BertForPreTraining model, BertTextEncoder encoder, IReadOnlyList<string> texts, IReadOnlyList<string[]>? tags,
        out int skipped, int seed = 0, int batchSize = 32)
    {
        var special = new HashSet<int> { encoder.PadId, encoder.UnknownId, encoder.ClsId, encoder.SepId, encoder.MaskId };
        var rng = new Random(seed);
        var chosen = new List<(string[] Words, string[]? Tags, int Target)>();
        skipped = 0;
        for (int i = 0; i < texts.Count; i++)
        {
            var words = Words(texts[i]);
            var candidates = Enumerable.Range(0, (words.Length + 1) / 2).Where(w =>
            {
                var pieces = encoder.Encode(words[w]);
                return pieces.Length == 1 && !special.Contains(pieces[0]) && (tags is null || !IsTag(tags[i][w]));
            }).ToArray();
            if (candidates.Length == 0) { skipped++; continue; }
            int at = candidates[rng.Next(candidates.Length)];
            int target = encoder.Encode(words[at])[0];
            words[at] = "[MASK]";
            chosen.Add((words, tags?[i], target));
        }
        if (chosen.Count == 0) throw new ArgumentException("no text has a one-piece word in its first half to mask");
        int limit = model.Config.MaxPositionEmbeddings;
        int[] Top1(IEnumerable<string[]> inputs) =>
            [.. Cloze.MaskedPredictions(model, encoder, inputs.Select((w, i) => (encoder.EncodeRow(string.Join(' ', w), null, limit).Ids, chosen[i].Target)).ToList(), batchSize).Select(p => p.Top1)];
        var targets = chosen.Select(c => c.Target).ToArray();
        var reference = Top1(chosen.Select(c => c.Words));
        var rows = new List<PerturbationRow> { Row(Unperturbed, reference, reference, targets) };
        foreach (var name in Names(tags?.SelectMany(t => t)))
        {
            var order = new Random(seed);
            var perturbed = chosen.Select(c => Apply(name, c.Words, c.Tags, order)).ToList();
            rows.Add(Row(name, Top1(perturbed), reference, targets) with { InputsChanged = perturbed.Zip(chosen).Count(p => !p.First.SequenceEqual(p.Second.Words)) });
        }
        return rows;
    }

    /// <summary>A row; <paramref name="truth"/> −1 everywhere: no labels, accuracy NaN.</summary>
    private static PerturbationRow Row(string name, int[] predicted, int[] reference, int[] truth) =>
        new(name, predicted.Length, truth.All(t => t < 0) ? double.NaN : predicted.Zip(truth).Average(p => p.First == p.Second ? 1.0 : 0.0),
            predicted.Zip(reference).Average(p => p.First == p.Second ? 1.0 : 0.0));
}
