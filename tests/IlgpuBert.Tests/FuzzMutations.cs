using System.Buffers.Binary;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using CsCheck;

namespace IlgpuBert.Tests;

/// <summary>How a fuzzed file is built, so that mutations can respect or break its structure.</summary>
public enum FileShape { Bytes, Lines, Json, JsonLines, SafeTensors, TorchZip }

/// <summary>
/// One random change to a file: <see cref="Kind"/> picks the operation (0–7 on raw bytes, 8–15 on the
/// file's structure: lines, JSON nodes, or a safetensors header), <see cref="Where"/> (0..1) where it
/// applies, <see cref="Pick"/> which variant (token, length, value).
/// </summary>
public sealed record Mutation(int Kind, double Where, int Pick)
{
    public override string ToString() => $"({Kind}, {Where:0.####}, {Pick})";
}

/// <summary>
/// Mutators in the style of AFL/SharpFuzz (bit flips, interesting values, splices) plus structure-aware
/// ones (JSON nodes replaced, removed or duplicated as keys; lines deleted, doubled, split), so that
/// most cases get past a format's first check and reach the deeper validation.
/// </summary>
public static class FuzzMutations
{
    /// <summary>One to three mutations.</summary>
    public static readonly Gen<Mutation[]> Gen = CsCheck.Gen.Select(CsCheck.Gen.Int[0, 15], CsCheck.Gen.Double[0, 1], CsCheck.Gen.Int[0, 1 << 20],
        (k, w, p) => new Mutation(k, w, p)).Array[1, 3];

    private static readonly byte[] InterestingBytes = [0x00, 0xFF, 0x7F, 0x80, 0xC0, (byte)'"', (byte)'\\', (byte)'\n', (byte)'\r', (byte)'\t',
        (byte)',', (byte)'{', (byte)'}', (byte)'[', (byte)']', (byte)':', (byte)'0', (byte)'9', (byte)'-', (byte)' ', (byte)'#'];

    /// <summary>Byte strings that break parsers: invalid or overlong UTF-8, an encoded surrogate, a BOM, separators, numbers at the edges.</summary>
    private static readonly byte[][] InterestingTokens =
    [
        [0xC3, 0x28], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xEF, 0xBB, 0xBF], [0xFF, 0xFE], [0x00],
        .. new[] { "\"", "\"\"", "\\", "\\u", "\\ud800", "\t", "\t\t", ",", "\n", "\r\n", "\n\n", " ", "{", "}", "[", "]", ":", "-1", "0", "1e39",
            "NaN", "-Infinity", "2147483648", "-2147483649", "9223372036854775808", "1e400", "1e-400", "-0", "null", "true",
            "[CLS]", "[MASK]", "##", "-DOCSTART-", "😀", "\u0301", "\u2028" }.Select(Encoding.UTF8.GetBytes),
    ];

    /// <summary>Values a JSON node is replaced with; "@@RAW:" values are written as bare tokens (not valid JSON numbers).</summary>
    private static readonly string[] InterestingJson =
    [
        "null", "true", "false", "0", "-1", "1", "2", "0.5", "-0.0", "1e39", "-1e39", "2147483647", "2147483648", "-2147483649",
        "9007199254740993", "1e308", "\"\"", "\"x\"", "\"-1\"", "\"😀\"", "\"\\ud800\"", "\"\\u0000\"", "[]", "{}", "[[]]", "[null]", "[0]", "[-1]",
        "[1e39]", "{\"\":0}", "\"" + new string('a', 70_000) + "\"", "[" + string.Join(",", Enumerable.Repeat(7, 5_000)) + "]",
        "@@RAW:NaN", "@@RAW:Infinity", "@@RAW:-Infinity", "@@RAW:1e400", "@@RAW:01", "@@RAW:.5", "@@RAW:+1", "@@RAW:'x'", "@@RAW:undefined",
    ];

    private static readonly string[] ExtremeNumbers = ["0", "-1", "-0", "1e39", "2147483648", "4294967296", "9223372036854775808", "1e400", "NaN", "0.000001", "99999999999999999999"];

    public static byte[] Apply(FileShape shape, byte[] original, IEnumerable<Mutation> mutations)
    {
        var data = original;
        foreach (var m in mutations) data = Apply(shape, data, m);
        return data;
    }

    private static byte[] Apply(FileShape shape, byte[] data, Mutation m)
    {
        if (shape == FileShape.TorchZip) return TorchZipFile(data, m);
        if (m.Kind < 8 || shape == FileShape.Bytes) return Bytes(data, m with { Kind = m.Kind % 8 });
        return shape switch
        {
            FileShape.Lines => Lines(data, m),
            FileShape.Json => JsonText(data, m),
            FileShape.JsonLines => JsonLine(data, m),
            _ => SafeTensorsFile(data, m),
        };
    }

    private static int At(double where, int length) => Math.Clamp((int)(where * length), 0, Math.Max(length - 1, 0));

    private static byte[] Bytes(byte[] data, Mutation m)
    {
        var list = new List<byte>(data);
        int at = At(m.Where, data.Length), len = 1 + m.Pick % 64;
        switch (m.Kind)
        {
            case 0:
                if (list.Count > 0) list[at] ^= (byte)(1 << (m.Pick % 8));
                break;
            case 1:
                if (list.Count > 0) list[at] = InterestingBytes[m.Pick % InterestingBytes.Length];
                break;
            case 2:
                list.InsertRange(Math.Min(at, list.Count), InterestingTokens[m.Pick % InterestingTokens.Length]);
                break;
            case 3:
                list.RemoveRange(Math.Min(at, list.Count), Math.Min(len, list.Count - Math.Min(at, list.Count)));
                break;
            case 4:
                list.InsertRange(Math.Min(at, list.Count), data.Skip(at).Take(len).ToArray());
                break;
            case 5:
                list.RemoveRange(Math.Min(at, list.Count), list.Count - Math.Min(at, list.Count));
                break;
            case 6:
                // A run of digits near the position becomes a number at the edge of what its reader accepts.
                int d = Array.FindIndex(data, at, b => b is >= (byte)'0' and <= (byte)'9');
                if (d < 0) goto case 2;
                int e = d;
                while (e < data.Length && data[e] is >= (byte)'0' and <= (byte)'9' or (byte)'.' or (byte)'e' or (byte)'-') e++;
                list.RemoveRange(d, e - d);
                list.InsertRange(d, Encoding.ASCII.GetBytes(ExtremeNumbers[m.Pick % ExtremeNumbers.Length]));
                break;
            default:
                // Another part of the same file spliced in (the likeliest shape of a real corruption).
                int from = At((m.Pick % 997) / 997.0, data.Length);
                list.InsertRange(Math.Min(at, list.Count), data.Skip(from).Take(len * 4).ToArray());
                break;
        }
        return list.ToArray();
    }

    private static byte[] Lines(byte[] data, Mutation m)
    {
        var lines = Encoding.UTF8.GetString(data).Split('\n').ToList();
        int i = At(m.Where, lines.Count), j = m.Pick % lines.Count;
        string token = Encoding.UTF8.GetString(InterestingTokens[m.Pick % InterestingTokens.Length]);
        switch (m.Kind)
        {
            case 8: lines.RemoveAt(i); break;
            case 9: lines.Insert(i, lines[i]); break;
            case 10: (lines[i], lines[j]) = (lines[j], lines[i]); break;
            case 11: lines[i] = ""; break;
            case 12:
                // One field (tab-, comma- or space-separated) replaced by a token.
                var fields = lines[i].Split(lines[i].Contains('\t') ? '\t' : lines[i].Contains(',') ? ',' : ' ');
                fields[m.Pick % fields.Length] = token;
                lines[i] = string.Join(lines[i].Contains('\t') ? "\t" : lines[i].Contains(',') ? "," : " ", fields);
                break;
            case 13: lines[i] = string.Concat(Enumerable.Repeat(lines[i] + " ", 1 + (m.Pick % 3) * Math.Max(1, 20_000 / (lines[i].Length + 1)))); break; // up to ~20,000 characters
            case 14: lines[i] += m.Pick % 2 == 0 ? "\r" : token; break;
            default: lines.Insert(i, string.Join(m.Pick % 2 == 0 ? "\t" : " ", Enumerable.Repeat(token, 1 + m.Pick % 4))); break;
        }
        return Encoding.UTF8.GetBytes(string.Join('\n', lines));
    }

    private static readonly JsonSerializerOptions Write = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static byte[] JsonText(byte[] data, Mutation m)
    {
        try
        {
            return Encoding.UTF8.GetBytes(MutateJson(JsonNode.Parse(data), m));
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException)
        {
            // Already broken by an earlier mutation (invalid JSON, a duplicate key, a lone surrogate): bytes instead.
            return Bytes(data, m with { Kind = m.Kind % 8 });
        }
    }

    private static byte[] JsonLine(byte[] data, Mutation m)
    {
        var lines = Encoding.UTF8.GetString(data).Split('\n');
        int i = At(m.Where, lines.Count(l => l.Trim().Length > 0));
        int line = lines.Select((l, k) => (l, k)).Where(x => x.l.Trim().Length > 0).Select(x => x.k).ElementAtOrDefault(i);
        lines[line] = Encoding.UTF8.GetString(JsonText(Encoding.UTF8.GetBytes(lines[line]), m with { Where = m.Pick % 1000 / 1000.0 }))
            .Replace("\n", " ");
        return Encoding.UTF8.GetBytes(string.Join('\n', lines));
    }

    /// <summary>A node of the document changed: removed, replaced, doubled as a key, a number or string pushed to an edge, wrapped, or an array made ragged.</summary>
    private static string MutateJson(JsonNode? root, Mutation m)
    {
        var nodes = new List<JsonNode?> { root };
        Collect(root, nodes);
        var node = nodes[At(m.Where, nodes.Count)];
        var parent = node?.Parent;
        string? raw = null, duplicate = null;
        JsonNode? Value(int pick)
        {
            string v = InterestingJson[pick % InterestingJson.Length];
            if (!v.StartsWith("@@RAW:")) return JsonNode.Parse(v);
            raw = v["@@RAW:".Length..];
            return JsonValue.Create("@@RAW@@");
        }
        void Replace(JsonNode? with)
        {
            if (parent is JsonObject o) o[node!.GetPropertyName()] = with;
            else if (parent is JsonArray a) a[node!.GetElementIndex()] = with;
            else root = with;
        }
        switch (m.Kind)
        {
            case 8 when parent is JsonObject o: o.Remove(node!.GetPropertyName()); break;
            case 8 when parent is JsonArray a: a.RemoveAt(node!.GetElementIndex()); break;
            case 10 when parent is JsonObject o:
                // A duplicate key: written under a placeholder, renamed in the text.
                duplicate = node!.GetPropertyName();
                o["@@DUP@@"] = Value(m.Pick);
                break;
            case 11 when node is JsonValue v && v.TryGetValue(out double x):
                double[] edges = [-x, x + 1, x - 1, x * 1e6, 0, x + 0.5, 1e20];
                Replace(JsonValue.Create(edges[m.Pick % edges.Length]));
                break;
            case 12:
                var copy = node?.DeepClone();
                Replace(m.Pick % 2 == 0 ? new JsonArray(copy) : new JsonObject { ["x"] = copy });
                break;
            case 13 when node is JsonArray a:
                if (m.Pick % 3 == 0) a.Clear();
                else if (a.Count > 0) a.Add(m.Pick % 3 == 1 ? a[^1]?.DeepClone() : Value(m.Pick));
                break;
            case 14 when node is JsonValue v && v.TryGetValue(out string? s):
                string[] edits = ["", s + "😀", "\u0000" + s, s.ToUpperInvariant(), " " + s, s + s, new string('x', 100_000)];
                Replace(JsonValue.Create(edits[m.Pick % edits.Length]));
                break;
            case 15 when nodes.Count > 1:
                Replace(nodes[m.Pick % nodes.Count]?.DeepClone()); // another node's value here: the wrong type or size
                break;
            default:
                Replace(Value(m.Pick));
                break;
        }
        string text = root?.ToJsonString(Write) ?? "null";
        if (raw is not null) text = text.Replace("\"@@RAW@@\"", raw);
        if (duplicate is not null) text = text.Replace("\"@@DUP@@\"", JsonSerializer.Serialize(duplicate));
        return text;
    }

    private static void Collect(JsonNode? node, List<JsonNode?> into)
    {
        IEnumerable<JsonNode?> children = node switch
        {
            JsonObject o => o.Select(p => p.Value),
            JsonArray a => a,
            _ => [],
        };
        foreach (var c in children)
        {
            into.Add(c);
            Collect(c, into);
        }
    }

    /// <summary>
    /// safetensors: the header's JSON mutated and written back with a matching length (mostly: one pick
    /// in four keeps the old length), or a weight overwritten with NaN, ±∞, 1e38 or a denormal.
    /// </summary>
    private static byte[] SafeTensorsFile(byte[] data, Mutation m)
    {
        if (data.Length < 8) return Bytes(data, m with { Kind = m.Kind % 8 });
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(data);
        if (n > (ulong)(data.Length - 8)) return Bytes(data, m with { Kind = m.Kind % 8 });
        int headerLength = (int)n;
        var header = data.AsSpan(8, headerLength).ToArray();
        var body = data.AsSpan(8 + headerLength).ToArray();
        if (m.Kind >= 14)
        {
            float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 1e38f, 1e-42f, -0f];
            int at = At(m.Where, body.Length / 4) * 4;
            if (body.Length >= 4) BinaryPrimitives.WriteSingleLittleEndian(body.AsSpan(at), specials[m.Pick % specials.Length]);
            return [.. data.AsSpan(0, 8 + headerLength), .. body];
        }
        byte[] newHeader = JsonText(header, m with { Kind = 8 + m.Pick % 8 });
        var result = new byte[8 + newHeader.Length + body.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, m.Pick % 4 == 0 ? n : (ulong)newHeader.Length);
        newHeader.CopyTo(result, 8);
        body.CopyTo(result, 8 + newHeader.Length);
        return result;
    }

    /// <summary>
    /// torch.save's zip: the pickle inside (archive/data.pkl) mutated as bytes and the archive written
    /// again (mutating the zip itself mostly breaks its checksums), or, one time in eight, the zip's own bytes.
    /// </summary>
    private static byte[] TorchZipFile(byte[] data, Mutation m)
    {
        if (m.Pick % 8 == 0) return Bytes(data, m with { Kind = m.Kind % 8 });
        var entries = new List<(string Name, byte[] Bytes)>();
        try
        {
            using var zip = new System.IO.Compression.ZipArchive(new MemoryStream(data), System.IO.Compression.ZipArchiveMode.Read);
            foreach (var e in zip.Entries)
            {
                using var s = e.Open();
                var copy = new MemoryStream();
                s.CopyTo(copy);
                entries.Add((e.FullName, copy.ToArray()));
            }
        }
        catch (InvalidDataException)
        {
            return Bytes(data, m with { Kind = m.Kind % 8 });
        }
        var result = new MemoryStream();
        using (var zip = new System.IO.Compression.ZipArchive(result, System.IO.Compression.ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, bytes) in entries)
            {
                using var s = zip.CreateEntry(name, System.IO.Compression.CompressionLevel.NoCompression).Open();
                s.Write(name.EndsWith("data.pkl", StringComparison.Ordinal) ? Bytes(bytes, m with { Kind = m.Kind % 8 }) : bytes);
            }
        return result.ToArray();
    }
}
