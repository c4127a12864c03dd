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
    public static string ToHf(string name)
    {
        if (OurLayer().Match(name) is { Success: true } m && Layer.FirstOrDefault(x => m.Groups[2].Value.StartsWith(x.Ours, StringComparison.Ordinal)) is { Ours: not null } l)
            return $"albert.encoder.albert_layer_groups.{m.Groups[1].Value}.albert_layers.0.{l.Hf}{m.Groups[2].Value[l.Ours.Length..]}";
        foreach (var (ours, hf) in Other)
            if (name.StartsWith(ours, StringComparison.Ordinal)) return hf + name[ours.Length..];
        return name;
    }

    /// <summary>HF's ALBERT name as ours (unknown names unchanged).</summary>
    public static string FromHf(string key)
    {
        if (HfLayer().Match(key) is { Success: true } m && Layer.FirstOrDefault(x => m.Groups[2].Value.StartsWith(x.Hf, StringComparison.Ordinal)) is { Hf: not null } l)
            return $"bert.encoder.layer.{m.Groups[1].Value}.{l.Ours}{m.Groups[2].Value[l.Hf.Length..]}";
        foreach (var (ours, hf) in Other)
            if (key.StartsWith(hf, StringComparison.Ordinal)) return ours + key[hf.Length..];
        return key;
    }

    /// <summary>Whether a file's tensor names are HF's ALBERT names.</summary>
    public static bool IsAlbertFile(IEnumerable<string> keys) => keys.Any(k => k.StartsWith("albert.", StringComparison.Ordinal));
}
