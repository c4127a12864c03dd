// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then
// the raw little-endian data, offsets relative to its start. IlgpuBert writes F32, F16, BF16 (each
// value rounded to nearest, ties to even) and I8 (int8 quantized weights), and reads the same four
// (held as float: every one of them is exact in float32). Every inconsistency is a CheckpointException naming the file
// and the problem; nothing is read past the file or trusted before it is checked.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Kernels;

namespace IlgpuBert.Checkpoints;

/// <summary>A host tensor: row-major shape and float32 data; <paramref name="Dtype"/> is how it is stored (F32; F16 or BF16, rounded to nearest even on writing; or I8 for integers in [−128, 127]).</summary>
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

/// <summary>One tensor in a safetensors header: its stored dtype, shape and byte range in the data section.</summary>
public sealed record SafeTensorsEntry(string Dtype, int[] Shape, long Begin, long End)
{
    /// <summary>The number of values.</summary>
    public long Elements => HostTensor.Elements(Shape);
}

/// <summary>
/// An open safetensors file whose header has been checked: its tensors are read one at a time,
/// straight into memory the caller gives (a model's own buffers), so loading a model holds no
/// second copy of its weights.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    private readonly FileStream file;
    private readonly long dataStart;

    private SafeTensorsFile(string path, FileStream file, long dataStart, List<(string Name, SafeTensorsEntry Entry)> entries, Dictionary<string, string> metadata)
    {
        Metadata = metadata;
        Path = path;
        this.file = file;
        this.dataStart = dataStart;
        Entries = entries.ToDictionary(e => e.Name, e => e.Entry, StringComparer.Ordinal);
    }

    /// <summary>The file's path (named in every message).</summary>
    public string Path { get; }

    /// <summary>The header's __metadata__ (empty when it has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Every tensor's entry, by name.</summary>
    public IReadOnlyDictionary<string, SafeTensorsEntry> Entries { get; }

    /// <summary>Opens a file and checks its header (dtypes, shapes against byte ranges, the ranges tiling the data).</summary>
    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: no such file");
        RegularFile.Require(path, "safetensors");
        var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.RandomAccess);
        try
        {
            var (dataStart, entries, metadata) = SafeTensors.ReadHeader(path, file);
            return new SafeTensorsFile(path, file, dataStart, entries, metadata);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>One tensor as a float32 host tensor (Dtype I8 for int8 ones, whose values are exact).</summary>
    public HostTensor Read(string name)
    {
        var entry = Entry(name);
        var data = new float[entry.Elements];
        ReadInto(name, data);
        return new HostTensor(entry.Shape, data, entry.Dtype == "I8" ? "I8" : "F32");
    }

    /// <summary>Decodes one tensor into <paramref name="destination"/>, which must hold exactly its values.</summary>
    public void ReadInto(string name, Span<float> destination)
    {
        var entry = Entry(name);
        if (destination.Length != entry.Elements)
            throw new ArgumentException($"{Path}: tensor {name} has {entry.Elements} values, the destination {destination.Length}");
        long offset = dataStart + entry.Begin;
        if (entry.Dtype == "F32" && BitConverter.IsLittleEndian)
        {
            ReadExactly(MemoryMarshal.AsBytes(destination), offset, name);
            return;
        }
        int size = (int)((entry.End - entry.Begin) / Math.Max(1, entry.Elements));
        var buffer = new byte[Math.Min(entry.End - entry.Begin, 1 << 20) / Math.Max(1, size) * size];
        for (int at = 0; at < destination.Length;)
        {
            int n = Math.Min(destination.Length - at, buffer.Length / size);
            ReadExactly(buffer.AsSpan(0, n * size), offset + (long)at * size, name);
            SafeTensors.Decode(buffer.AsSpan(0, n * size), entry.Dtype, destination.Slice(at, n));
            at += n;
        }
    }

    private SafeTensorsEntry Entry(string name) =>
        Entries.TryGetValue(name, out var entry) ? entry : throw new ArgumentException($"{Path}: no tensor {name}");

    private void ReadExactly(Span<byte> target, long offset, string name)
    {
        while (target.Length > 0)
        {
            int n = RandomAccess.Read(file.SafeFileHandle, target, offset);
            if (n <= 0) throw new CheckpointException($"{Path}: the file ended inside tensor {name} (it changed while being read?)");
            target = target[n..];
            offset += n;
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => file.Dispose();
}

/// <summary>Reading and writing HF's safetensors files.</summary>
public static class SafeTensors
{
    /// <summary>Headers beyond this are refused as absurd (HF's own limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    /// <summary>Every tensor of the file, as float32 host tensors (I8 ones marked I8).</summary>
    public static Dictionary<string, HostTensor> Read(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        return file.Entries.ToDictionary(kv => kv.Key, kv => file.Read(kv.Key), StringComparer.Ordinal);
    }

    /// <summary>The header of a file: every tensor's dtype, shape and byte range, checked as <see cref="Read"/> checks them.</summary>
    internal static (long DataStart, List<(string Name, SafeTensorsEntry Entry)> Entries, Dictionary<string, string> Metadata) ReadHeader(string path, FileStream file)
    {
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
        foreach (var (name, entry) in entries)
        {
            int size = entry.Dtype switch
            {
                "F32" => 4,
                "F16" or "BF16" => 2,
                "I8" => 1,
                _ => throw new CheckpointException($"{path}: tensor {name} has dtype {entry.Dtype}; supported: F32, F16, BF16, I8"),
            };
            long elements = entry.Elements;
            if (entry.End - entry.Begin != elements * size)
                throw new CheckpointException($"{path}: tensor {name} of shape [{string.Join(", ", entry.Shape)}] and dtype {entry.Dtype} needs {elements * size} bytes, has {entry.End - entry.Begin}");
            if (elements > Array.MaxLength)
                throw new CheckpointException($"{path}: tensor {name} is too large ({elements} elements)");
        }
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        // The format's metadata map strings to strings; anything else in it is not ours to read.
        if (header["__metadata__"] is JsonObject meta)
            foreach (var (key, value) in meta)
                if (value is JsonValue v && v.GetValueKind() == JsonValueKind.String) metadata[key] = v.GetValue<string>();
        return (dataStart, entries, metadata);
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

    private static SafeTensorsEntry ParseEntry(string path, string name, JsonNode? node)
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
            return new SafeTensorsEntry(dtype, shape, offsets[0]!.GetValue<long>(), offsets[1]!.GetValue<long>());
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or NullReferenceException or JsonException)
        {
            throw new CheckpointException($"{path}: malformed header entry for tensor {name} ({e.Message})");
        }
    }

    /// <summary>Decodes little-endian <paramref name="dtype"/> values into floats (every dtype here is exact in float32).</summary>
    internal static void Decode(ReadOnlySpan<byte> raw, string dtype, Span<float> data)
    {
        switch (dtype)
        {
            case "F32":
                for (int i = 0; i < data.Length; i++) data[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(4 * i)..]);
                break;
            case "F16":
                for (int i = 0; i < data.Length; i++) data[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw[(2 * i)..]);
                break;
            case "I8":
                for (int i = 0; i < data.Length; i++) data[i] = (sbyte)raw[i];
                break;
            default: // BF16: the top half of an F32
                for (int i = 0; i < data.Length; i++)
                    data[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(raw[(2 * i)..]) << 16);
                break;
        }
    }

    /// <summary>Bytes per value of a dtype this writer stores.</summary>
    private static int WriteSize(string dtype) => dtype switch { "F32" => 4, "F16" or "BF16" => 2, "I8" => 1, _ => 0 };

    /// <summary>
    /// Writes F32, F16, BF16 and I8 tensors, names sorted, header padded to 8 bytes, atomically: a
    /// temporary file in the same folder, then a rename, so a crash never leaves a half-written
    /// checkpoint. F16 and BF16 round each value to nearest, ties to even; a finite value beyond
    /// F16's range (|v| ≥ 65520 rounds to infinity) is refused rather than written as ∞.
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
            int size = WriteSize(t.Dtype);
            if (size == 0) throw new ArgumentException($"tensor {name}: cannot write dtype {t.Dtype} (F32, F16, BF16 or I8)");
            if (t.Dtype == "I8" && t.Data.Any(v => v != MathF.Round(v) || v < -128 || v > 127))
                throw new ArgumentException($"tensor {name}: I8 data must be integers in [-128, 127]");
            if (t.Dtype == "F16" && t.Data.Count(v => float.IsFinite(v) && Half.IsInfinity((Half)v)) is int over and > 0)
                throw new ArgumentException($"tensor {name}: {over} value{(over > 1 ? "s" : "")} beyond F16's range (largest {t.Data.Where(float.IsFinite).Max(MathF.Abs)}, F16 holds up to 65504)");
            if (t.Dtype == "BF16" && t.Data.Count(v => float.IsFinite(v) && (BFloat16.Round(v) & 0x7FFF) == 0x7F80) is int huge and > 0)
                throw new ArgumentException($"tensor {name}: {huge} value{(huge > 1 ? "s" : "")} beyond BF16's range (largest finite BF16 is 3.39e38)");
            long bytes = t.Data.LongLength * size;
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
                var (data, dtype) = (tensors[name].Data, tensors[name].Dtype);
                int size = WriteSize(dtype);
                for (int i = 0; i < data.Length;)
                {
                    int n = Math.Min(data.Length - i, buffer.Length / size);
                    var chunk = buffer.AsSpan(0, n * size);
                    for (int j = 0; j < n; j++)
                    {
                        float v = data[i + j];
                        switch (dtype)
                        {
                            case "F32": BinaryPrimitives.WriteSingleLittleEndian(chunk[(4 * j)..], v); break;
                            case "F16": BinaryPrimitives.WriteHalfLittleEndian(chunk[(2 * j)..], (Half)v); break; // IEEE conversion: nearest, ties to even
                            case "BF16": BinaryPrimitives.WriteUInt16LittleEndian(chunk[(2 * j)..], BFloat16.Round(v)); break;
                            default: chunk[j] = (byte)(sbyte)v; break;
                        }
                    }
                    stream.Write(chunk);
                    i += n;
                }
            }
        });
    }
}
