// The embedded default task: which part of .NET does a sentence of documentation describe? Each
// documented member's first summary sentence (from the SDK's reference docs, the same embedded
// corpus pretraining uses) is labelled with its namespace family, the first two parts of its
// namespace (System.IO, System.Net, System.Collections, …). The ten most frequent families are
// kept (not the bare System namespace, which is no family), each capped at the same number of
// sentences so one family cannot drown the others; a sentence that occurs under two families is
// dropped as unanswerable. The train / held-out split uses a fixed seed, so every run is judged on
// the same held-out sentences whatever --seed it trains with.
using IlgpuBert.Text;

namespace IlgpuBert.FineTuning;

public static class DefaultTask
{
    public const int Families = 10, PerFamily = 300, SplitSeed = 20191;
    public const double HeldOutFraction = 0.2;

    /// <summary>"M:System.IO.File.Copy(System.String)" → "System.IO"; "T:System.Net.Http.HttpClient" → "System.Net".</summary>
    public static string FamilyOf(string member)
    {
        string type = DefaultCorpus.TypeOf(member);
        int dot = type.LastIndexOf('.');
        string ns = dot > 0 ? type[..dot] : "";
        var parts = ns.Split('.');
        return parts.Length >= 2 ? parts[0] + "." + parts[1] : ns;
    }

    /// <summary>The first sentence of a summary (up to the first ". ").</summary>
    public static string FirstSentence(string text)
    {
        int end = text.IndexOf(". ", StringComparison.Ordinal);
        return end < 0 ? text : text[..(end + 1)];
    }

    public static (List<TaskExample> Train, List<TaskExample> HeldOut) Build()
    {
        var byText = new Dictionary<string, HashSet<string>>(StringComparer.Ordinal);
        var first = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var d in DefaultCorpus.Summaries())
        {
            string family = FamilyOf(d.Member), sentence = FirstSentence(d.Text);
            if (!family.Contains('.') || sentence.Split(' ').Length < 3) continue;
            if (!byText.TryGetValue(sentence, out var families)) byText[sentence] = families = new HashSet<string>(StringComparer.Ordinal);
            families.Add(family);
            first.TryAdd(sentence, d.Member);
        }
        var unambiguous = byText.Where(kv => kv.Value.Count == 1).Select(kv => (Text: kv.Key, Family: kv.Value.First())).ToList();
        var kept = unambiguous.GroupBy(x => x.Family).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal)
            .Take(Families).ToList();
        var rng = new Random(SplitSeed);
        var train = new List<TaskExample>();
        var heldOut = new List<TaskExample>();
        foreach (var family in kept.OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var items = family.OrderBy(x => x.Text, StringComparer.Ordinal).ToArray();
            rng.Shuffle(items);
            items = items.Take(PerFamily).ToArray();
            int nHeld = (int)Math.Round(items.Length * HeldOutFraction);
            for (int i = 0; i < items.Length; i++)
            {
                var e = new TaskExample { Text = items[i].Text, Label = items[i].Family, Source = $"default task: {first[items[i].Text]}" };
                (i < nHeld ? heldOut : train).Add(e);
            }
        }
        rng.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(train));
        return (train, heldOut);
    }
}
