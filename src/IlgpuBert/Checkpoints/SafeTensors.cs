// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then
// the raw little-endian data, offsets relative to its start. IlgpuBert writes F32 and I8 (int8
// quantized weights) and reads F32, F16, BF16 and I8 (held as float: every int8 is exact). Every inconsistency is a CheckpointException naming the file
// and the problem; nothing is read past the file or trusted before it is checked.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuBert.Checkpoints;

/// <summary>A host tensor: row-major shape and float32 data; <paramref name="Dtype"/> is how it is stored (F32, or I8 for integers in [−128, 127]).</summary>
public sealed record HostTensor(int[] Shape, float[] Data, string Dtype = "F32")
{
    public long Length => Data.LongLength;

    public static long Elements(IReadOnlyList<int> shape)
    {
        long n = 1;
        foreach (int d in shape) n *= d;
        return n;
    }

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>A checkpoint file or folder that cannot be used; the message says which and why.</summary>
public sealed class CheckpointException(string message) : Exception(message);

public static class SafeTensors
{
    /// <summary>Headers beyond this are refused as absurd (HF's own limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    public static Dictionary<string, HostTensor> Read(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: no such file");
        RegularFile.Require(path, "safetensors");
        using var file = File.OpenRead(path);
        long fileLength = file.Length;
        if (fileLength < 8) throw new CheckpointException($"{path}: truncated safetensors file ({fileLength} bytes, no header length)");
        Span<byte> lengthBytes = stackalloc byte[8];
        file.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)MaxHeaderBytes || headerLength > (ulong)(fileLength - 8))
            throw new CheckpointException($"{path}: header length {headerLength} is impossible for a {fileLength}-byte file");
        var headerBytes = new byte[headerLength];
        file.ReadExactly(headerBytes);
        var header = StrictJson.Parse(headerBytes, $"{path}: header") as JsonObject ?? throw new CheckpointException($"{path}: header is not a JSON object");
        long dataStart = 8 + (long)headerLength, dataLength = fileLength - dataStart;
        var entries = header.Where(kv => kv.Key != "__metadata__").Select(kv => (Name: kv.Key, Entry: ParseEntry(path, kv.Key, kv.Value))).ToList();
        CheckTiling(path, entries.Select(e => (e.Name, e.Entry.Begin, e.Entry.End)).ToList(), dataLength);
        var result = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        foreach (var (name, (dtype, shape, begin, end)) in entries)
        {
            int size = dtype switch
            {
                "F32" => 4,
                "F16" or "BF16" => 2,
                "I8" => 1,
                _ => throw new CheckpointException($"{path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16, I8"),
            };
            long elements = HostTensor.Elements(shape);
            if (end - begin != elements * size)
                throw new CheckpointException($"{path}: tensor {name} of shape [{string.Join(", ", shape)}] and dtype {dtype} needs {elements * size} bytes, has {end - begin}");
            if (elements > Array.MaxLength)
                throw new CheckpointException($"{path}: tensor {name} is too large ({elements} elements)");
            var raw = new byte[end - begin];
            file.Position = dataStart + begin;
            file.ReadExactly(raw);
            result[name] = new HostTensor(shape, Decode(raw, dtype, (int)elements), dtype == "I8" ? "I8" : "F32");
        }
        return result;
    }

    /// <summary>
    /// The format requires the tensors' byte ranges to tile the data section exactly: in order,
    /// no gap, no overlap, nothing after the last. Anything else is a header that does not
    /// describe its data (e.g. a header length off by one shifts every tensor).
    /// </summary>
    private static void CheckTiling(string path, List<(string Name, long Begin, long End)> ranges, long dataLength)
    {
        long expected = 0;
        string? previous = null;
        foreach (var (name, begin, end) in ranges.OrderBy(r => r.Begin).ThenBy(r => r.End))
        {
            if (begin < 0 || end < begin || end > dataLength)
                throw new CheckpointException($"{path}: tensor {name} data_offsets [{begin}, {end}] fall outside the {dataLength}-byte data section");
            if (begin != expected)
                throw new CheckpointException(begin < expected
                    ? $"{path}: tensor {name} data_offsets [{begin}, {end}] overlap those of {previous}"
                    : $"{path}: {begin - expected} unused bytes before tensor {name} (data_offsets must tile the data section)");
            expected = end;
            previous = name;
        }
        if (expected != dataLength)
            throw new CheckpointException($"{path}: the tensors cover {expected} bytes but the data section has {dataLength} (is the header length right?)");
    }

    private static (string Dtype, int[] Shape, long Begin, long End) ParseEntry(string path, string name, JsonNode? node)
    {
        try
        {
            var entry = node as JsonObject ?? throw new FormatException("not an object");
            string dtype = entry["dtype"]?.GetValue<string>() ?? throw new FormatException("no dtype");
            var shapeNode = entry["shape"] as JsonArray ?? throw new FormatException("no shape");
            var shape = shapeNode.Select(d => d!.GetValue<long>()).Select(d => d is < 0 or > int.MaxValue
                ? throw new FormatException($"dimension {d}") : (int)d).ToArray();
            var offsets = entry["data_offsets"] as JsonArray ?? throw new FormatException("no data_offsets");
            if (offsets.Count != 2) throw new FormatException("data_offsets must have two entries");
            return (dtype, shape, offsets[0]!.GetValue<long>(), offsets[1]!.GetValue<long>());
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or NullReferenceException or JsonException)
        {
            throw new CheckpointException($"{path}: malformed header entry for tensor {name} ({e.Message})");
        }
    }

    private static float[] Decode(byte[] raw, string dtype, int elements)
    {
        var data = new float[elements];
        switch (dtype)
        {
            case "F32":
                for (int i = 0; i < elements; i++) data[i] = BinaryPrimitives.ReadSingleLittleEndian(raw.AsSpan(4 * i));
                break;
            case "F16":
                for (int i = 0; i < elements; i++) data[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw.AsSpan(2 * i));
                break;
            case "I8":
                for (int i = 0; i < elements; i++) data[i] = (sbyte)raw[i];
                break;
            default: // BF16: the top half of an F32
                for (int i = 0; i < elements; i++)
                    data[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(2 * i)) << 16);
                break;
        }
        return data;
    }

    /// <summary>
    /// Writes F32 (and I8) tensors, names sorted, header padded to 8 bytes, atomically: a temporary file in
    /// the same folder, then a rename, so a crash never leaves a half-written checkpoint.
    /// </summary>
    public static void Write(string path, IReadOnlyDictionary<string, HostTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
            header["__metadata__"] = new JsonObject(metadata.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value))));
        long offset = 0;
        var names = tensors.Keys.Order(StringComparer.Ordinal).ToList();
        foreach (var name in names)
        {
            var t = tensors[name];
            if (HostTensor.Elements(t.Shape) != t.Data.LongLength)
                throw new ArgumentException($"tensor {name}: {t.Data.LongLength} values do not fill shape {t.ShapeText}");
            if (t.Dtype is not ("F32" or "I8")) throw new ArgumentException($"tensor {name}: cannot write dtype {t.Dtype} (F32 or I8)");
            if (t.Dtype == "I8" && t.Data.Any(v => v != MathF.Round(v) || v < -128 || v > 127))
                throw new ArgumentException($"tensor {name}: I8 data must be integers in [-128, 127]");
            long bytes = t.Data.LongLength * (t.Dtype == "I8" ? 1 : 4);
            header[name] = new JsonObject
            {
                ["dtype"] = t.Dtype,
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode?)JsonValue.Create(d)).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (headerBytes.Length + 7) / 8 * 8;
        AtomicFile.Write(path, stream =>
        {
            Span<byte> lengthBytes = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(lengthBytes, (ulong)padded);
            stream.Write(lengthBytes);
            stream.Write(headerBytes);
            for (int i = headerBytes.Length; i < padded; i++) stream.WriteByte((byte)' ');
            var buffer = new byte[1 << 16];
            foreach (var name in names)
            {
                var data = tensors[name].Data;
                if (tensors[name].Dtype == "I8")
                {
                    var bytes = new byte[data.Length];
                    for (int i = 0; i < data.Length; i++) bytes[i] = (byte)(sbyte)data[i];
                    stream.Write(bytes);
                    continue;
                }
                for (int i = 0; i < data.Length;)
                {
                    int n = Math.Min(data.Length - i, buffer.Length / 4);
                    for (int j = 0; j < n; j++) BinaryPrimitives.WriteSingleLittleEndian(buffer.AsSpan(4 * j), data[i + j]);
                    stream.Write(buffer, 0, 4 * n);
                    i += n;
                }
            }
        });
    }
}
