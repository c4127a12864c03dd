// ALBERT's tensors under HF's AlbertForPreTraining names (modeling_albert.py) and ours. Inside, an
// ALBERT is a BERT whose embeddings are embedding_size wide, with embedding_hidden_mapping_in after
// them and one "bert.encoder.layer.G." per layer group; files speak HF's ALBERT names both ways.
using System.Text.RegularExpressions;

namespace IlgpuBert.Model;

public static partial class AlbertNames
{
    // (ours, HF's): prefixes, the layer group's number where {0} stands.
    private static readonly (string Ours, string Hf)[] Layer =
    [
        ("attention.self.query.", "attention.query."),
        ("attention.self.key.", "attention.key."),
        ("attention.self.value.", "attention.value."),
        ("attention.output.dense.", "attention.dense."),
        ("attention.output.LayerNorm.", "attention.LayerNorm."),
        ("intermediate.dense.", "ffn."),
        ("output.dense.", "ffn_output."),
        ("output.LayerNorm.", "full_layer_layer_norm."),
    ];

    private static readonly (string Ours, string Hf)[] Other =
    [
        ("bert.embeddings.", "albert.embeddings."),
        ("bert.encoder.embedding_hidden_mapping_in.", "albert.encoder.embedding_hidden_mapping_in."),
        ("bert.pooler.dense.", "albert.pooler."),
        ("cls.predictions.transform.dense.", "predictions.dense."),
        ("cls.predictions.transform.LayerNorm.", "predictions.LayerNorm."),
        ("cls.predictions.decoder.", "predictions.decoder."),
        ("cls.predictions.bias", "predictions.bias"),
        ("cls.seq_relationship.", "sop_classifier.classifier."),
    ];

    [GeneratedRegex(@"^bert\.encoder\.layer\.(\d+)\.(.*)$")]
    private static partial Regex OurLayer();

    [GeneratedRegex(@"^albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0\.(.*)$")]
    private static partial Regex HfLayer();

    /// <summary>Our name as HF's ALBERT name (names with no ALBERT counterpart, such as the aux heads, unchanged).</summary>
    public static string ToHf(string name) => Rename(name, OurLayer(), "albert.encoder.albert_layer_groups.{0}.albert_layers.0.", fromOurs: true);

    /// <summary>HF's ALBERT name as ours (unknown names unchanged).</summary>
    public static string FromHf(string key) => Rename(key, HfLayer(), "bert.encoder.layer.{0}.", fromOurs: false);

    private static string Rename(string name, Regex layer, string layerPrefix, bool fromOurs)
    {
        string From((string Ours, string Hf) x) => fromOurs ? x.Ours : x.Hf;
        string To((string Ours, string Hf) x) => fromOurs ? x.Hf : x.Ours;
        if (layer.Match(name) is { Success: true } m)
        {
            string rest = m.Groups[2].Value;
            foreach (var x in Layer)
                if (rest.StartsWith(From(x), StringComparison.Ordinal))
                    return string.Format(System.Globalization.CultureInfo.InvariantCulture, layerPrefix, m.Groups[1].Value) + To(x) + rest[From(x).Length..];
        }
        foreach (var x in Other)
            if (name.StartsWith(From(x), StringComparison.Ordinal)) return To(x) + name[From(x).Length..];
        return name;
    }

    /// <summary>Whether a file's tensor names are HF's ALBERT names.</summary>
    public static bool IsAlbertFile(IEnumerable<string> keys) => keys.Any(k => k.StartsWith("albert.", StringComparison.Ordinal));
}
