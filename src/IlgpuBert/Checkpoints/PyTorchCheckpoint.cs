// pytorch_model.bin: a state dict as torch.save writes it, read without Python and without running
// anything the file names. Two layouts: the zip archive of PyTorch ≥ 1.6 (<root>/data.pkl, the
// storages as <root>/data/<key>, <root>/byteorder) and the stream of PyTorch < 1.6 (pickles of the
// magic number, the protocol version and sys_info, the state dict, the storage keys, then each
// storage as its element count and bytes).
//
// A pickle is a program for a small stack machine, and a general unpickler calls whatever function
// the program names (`os.system` included). This one is restricted to the state-dict vocabulary:
// the only globals it accepts are collections.OrderedDict, torch._utils' tensor rebuild functions and
// the storage types of float, half, bfloat16, double and integer tensors (integers for buffers such
// as position_ids). Any other global is refused at the opcode that names it, before anything is
// built, and so is every opcode that constructs objects of a named class (NEWOBJ, INST, OBJ).
// Tensors come out as FP32 HostTensors, their dtype recorded (F32, F16, BF16, F64, I64, I32).
using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace IlgpuBert.Checkpoints;

/// <summary>Reads a state dict saved by torch.save, running nothing the file names.</summary>
public static class PyTorchCheckpoint
{
    /// <summary>The name HF gives the file.</summary>
    public const string FileName = "pytorch_model.bin";

    /// <summary>The globals a state dict's pickle may name; everything else is refused.</summary>
    public static readonly IReadOnlySet<string> AllowedGlobals = new HashSet<string>(StringComparer.Ordinal)
    {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage", "torch.LongStorage", "torch.IntStorage",
    };

    private const long MaxEntryBytes = int.MaxValue;

    /// <summary>The tensors of the state dict in <paramref name="path"/> by name, as FP32 (their stored dtype recorded); a malformed or unsafe file throws <see cref="CheckpointException"/>.</summary>
    public static Dictionary<string, HostTensor> Read(string path)
    {
        RegularFile.Require(path, "a PyTorch checkpoint");
        using var file = File.OpenRead(path);
        Span<byte> head = stackalloc byte[4];
        int got = file.ReadAtLeast(head, 4, throwOnEndOfStream: false);
        file.Position = 0;
        try
        {
            if (got == 4 && head[0] == 'P' && head[1] == 'K') return ReadZip(file, path);
            if (got >= 1 && head[0] == 0x80) return ReadLegacy(file, path);
            if (IsTar(file)) throw new CheckpointException($"{path}: a tar checkpoint of PyTorch before 0.4, which is not supported; re-save it with torch.save in any PyTorch since 1.6");
            throw new CheckpointException($"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle stream)");
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or ArgumentOutOfRangeException or OverflowException)
        {
            throw new CheckpointException($"{path}: corrupt PyTorch checkpoint ({e.Message})");
        }
    }

    private static bool IsTar(Stream s)
    {
        if (s.Length < 512) return false;
        var block = new byte[512];
        s.Position = 0;
        s.ReadExactly(block);
        s.Position = 0;
        return Encoding.ASCII.GetString(block, 257, 5) == "ustar";
    }

    private static Dictionary<string, HostTensor> ReadZip(Stream stream, string path)
    {
        using var zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        var pkl = zip.Entries.FirstOrDefault(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && e.FullName.Count(c => c == '/') == 1)
            ?? throw new CheckpointException($"{path}: a zip archive without <name>/data.pkl (not a torch.save checkpoint)");
        string root = pkl.FullName[..^"data.pkl".Length];
        if (zip.GetEntry(root + "byteorder") is { } order && Encoding.ASCII.GetString(ReadEntry(order, path)).Trim() != "little")
            throw new CheckpointException($"{path}: a big-endian checkpoint, which is not supported");
        byte[] Storage(string key, long bytes)
        {
            var entry = zip.GetEntry(root + "data/" + key) ?? throw new CheckpointException($"{path}: the pickle names storage {StrictJson.Short(key)}, which the archive lacks");
            if (entry.Length < bytes) throw new CheckpointException($"{path}: storage {StrictJson.Short(key)} holds {entry.Length} bytes, the pickle says {bytes}");
            return ReadEntry(entry, path);
        }
        var pickle = new Unpickler(ReadEntry(pkl, path), path, legacy: false);
        var state = pickle.Run();
        return pickle.Resolve(state, s => Storage(s.Key, s.Numel * s.Dtype.Size));
    }

    private static byte[] ReadEntry(ZipArchiveEntry entry, string path)
    {
        if (entry.Length > MaxEntryBytes) throw new CheckpointException($"{path}: {entry.FullName} holds {entry.Length} bytes, more than one tensor may ({MaxEntryBytes})");
        var bytes = new byte[entry.Length];
        using var s = entry.Open();
        s.ReadExactly(bytes);
        return bytes;
    }

    private static Dictionary<string, HostTensor> ReadLegacy(Stream stream, string path)
    {
        var rest = new byte[stream.Length];
        stream.ReadExactly(rest);
        int at = 0;
        Unpickler Next() => new(rest, path, legacy: true, start: at);
        object? Value()
        {
            var u = Next();
            var v = u.Run();
            at = u.End;
            return v;
        }
        if (Value() is not System.Numerics.BigInteger magic || magic != LegacyMagic)
            throw new CheckpointException($"{path}: a pickle, but not a torch.save checkpoint (no PyTorch magic number)");
        if (Value() is not long version || version != 1001) throw new CheckpointException($"{path}: unsupported legacy checkpoint version");
        Value(); // sys_info: byte order and type sizes
        var main = Next();
        object? state = main.Run();
        at = main.End;
        if (Value() is not List<object?> keys) throw new CheckpointException($"{path}: the storage key list is missing");
        var data = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var k in keys)
        {
            string key = k as string ?? throw new CheckpointException($"{path}: a storage key that is not a string");
            if (!main.Storages.TryGetValue(key, out var s)) throw new CheckpointException($"{path}: storage {StrictJson.Short(key)} is not used by any tensor");
            if (at + 8 > rest.Length) throw new EndOfStreamException($"storage {key} is cut short");
            long numel = BinaryPrimitives.ReadInt64LittleEndian(rest.AsSpan(at));
            at += 8;
            if (numel < 0 || numel > (rest.Length - at) / s.Dtype.Size) throw new EndOfStreamException($"storage {key} claims {numel} elements, more than the file holds");
            int bytes = (int)(numel * s.Dtype.Size);
            data[key] = rest.AsSpan(at, bytes).ToArray();
            at += bytes;
        }
        return main.Resolve(state, s => data.TryGetValue(s.Key, out var d) ? d : throw new CheckpointException($"{path}: storage {StrictJson.Short(s.Key)} is missing from the file"));
    }

    private static readonly System.Numerics.BigInteger LegacyMagic = System.Numerics.BigInteger.Parse("119547037146038801333356");

    internal sealed record Dtype(string Name, int Size)
    {
        public static Dtype? FromStorage(string global) => global switch
        {
            "torch.FloatStorage" => new("F32", 4),
            "torch.HalfStorage" => new("F16", 2),
            "torch.BFloat16Storage" => new("BF16", 2),
            "torch.DoubleStorage" => new("F64", 8),
            "torch.LongStorage" => new("I64", 8),
            "torch.IntStorage" => new("I32", 4),
            _ => null,
        };

        public float Get(byte[] bytes, long index)
        {
            var s = bytes.AsSpan(checked((int)(index * Size)), Size);
            return Name switch
            {
                "F32" => BinaryPrimitives.ReadSingleLittleEndian(s),
                "F16" => (float)BinaryPrimitives.ReadHalfLittleEndian(s),
                "BF16" => BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(s) << 16),
                "F64" => (float)BinaryPrimitives.ReadDoubleLittleEndian(s),
                "I64" => BinaryPrimitives.ReadInt64LittleEndian(s),
                _ => BinaryPrimitives.ReadInt32LittleEndian(s),
            };
        }
    }

    private sealed record Global(string Name);
    internal sealed record StorageRef(string Key, Dtype Dtype, long Numel, long ViewOffset);
    private sealed record TensorRef(StorageRef Storage, long Offset, int[] Shape, long[] Stride);
    private sealed class PyDict : List<KeyValuePair<object, object?>>;
    private sealed class Mark;

    /// <summary>The restricted pickle machine: protocols 2–5, the opcodes a state dict uses.</summary>
    private sealed class Unpickler(byte[] data, string path, bool legacy, int start = 0)
    {
        private int at = start;
        private readonly List<object?> stack = [];
        private readonly Dictionary<long, object?> memo = [];
        /// <summary>The storages the pickle named, by key.</summary>
        public Dictionary<string, StorageRef> Storages { get; } = new(StringComparer.Ordinal);

        public int End => at;

        /// <summary>Runs the pickle to its STOP; tensors come out as references to storages, read by <see cref="Resolve"/>.</summary>
        public object? Run()
        {
            while (true)
            {
                if (at >= data.Length) throw new EndOfStreamException("the pickle ends without STOP");
                byte op = Byte();
                switch (op)
                {
                    case 0x80: Byte(); break; // PROTO
                    case 0x95: Bytes(8); break; // FRAME: a length hint
                    case (byte)'}': stack.Add(new PyDict()); break;
                    case (byte)']': stack.Add(new List<object?>()); break;
                    case (byte)')': stack.Add(Array.Empty<object?>()); break;
                    case (byte)'(': stack.Add(new Mark()); break;
                    case (byte)'N': stack.Add(null); break;
                    case 0x88: stack.Add(true); break;
                    case 0x89: stack.Add(false); break;
                    case (byte)'K': stack.Add((long)Byte()); break;
                    case (byte)'M': stack.Add((long)BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2))); break;
                    case (byte)'J': stack.Add((long)BinaryPrimitives.ReadInt32LittleEndian(Bytes(4))); break;
                    case 0x8a: stack.Add(Long(Bytes(Byte()))); break; // LONG1
                    case 0x8b: stack.Add(Long(Bytes(Length(BinaryPrimitives.ReadInt32LittleEndian(Bytes(4)))))); break; // LONG4
                    case (byte)'G': stack.Add(BinaryPrimitives.ReadDoubleBigEndian(Bytes(8))); break;
                    case (byte)'X': stack.Add(Utf8(Length(BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4))))); break;
                    case 0x8c: stack.Add(Utf8(Byte())); break; // SHORT_BINUNICODE
                    case 0x8d: stack.Add(Utf8(Length(BinaryPrimitives.ReadInt64LittleEndian(Bytes(8))))); break; // BINUNICODE8
                    case (byte)'U': stack.Add(Latin1(Byte())); break; // SHORT_BINSTRING
                    case (byte)'T': stack.Add(Latin1(Length(BinaryPrimitives.ReadInt32LittleEndian(Bytes(4))))); break; // BINSTRING
                    case (byte)'q': memo[Byte()] = Top(); break;
                    case (byte)'r': memo[BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4))] = Top(); break;
                    case 0x94: memo[memo.Count] = Top(); break; // MEMOIZE
                    case (byte)'h': stack.Add(Memo(Byte())); break;
                    case (byte)'j': stack.Add(Memo(BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4)))); break;
                    case (byte)'c': stack.Add(MakeGlobal(Line(), Line())); break;
                    case 0x93: // STACK_GLOBAL
                    {
                        string name = Pop() as string ?? throw Bad("STACK_GLOBAL without a name"), module = Pop() as string ?? throw Bad("STACK_GLOBAL without a module");
                        stack.Add(MakeGlobal(module, name));
                        break;
                    }
                    case (byte)'t': stack.Add(PopMark().ToArray()); break;
                    case 0x85: stack.Add(new[] { Pop() }); break;
                    case 0x86: { var b = Pop(); var a = Pop(); stack.Add(new[] { a, b }); break; }
                    case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); stack.Add(new[] { a, b, c }); break; }
                    case (byte)'Q': stack.Add(Persistent(Pop())); break;
                    case (byte)'R': { var args = Pop() as object?[] ?? throw Bad("REDUCE without an argument tuple"); stack.Add(Reduce(Pop(), args)); break; }
                    case (byte)'b': // BUILD: an OrderedDict's state (its _metadata attribute) is not needed
                    {
                        Pop();
                        if (Top() is not PyDict) throw Bad("BUILD on something other than an OrderedDict");
                        break;
                    }
                    case (byte)'s': { var v = Pop(); var k = Pop(); SetItems(Top(), [k, v]); break; }
                    case (byte)'u': { var items = PopMark(); SetItems(Top(), items); break; }
                    case (byte)'a': { var v = Pop(); Append(Top(), [v]); break; }
                    case (byte)'e': { var items = PopMark(); Append(Top(), items); break; }
                    case (byte)'.':
                        return Pop();
                    default:
                        throw Bad($"opcode 0x{op:x2} ('{(op is >= 32 and < 127 ? (char)op : '?')}') is not part of a state dict's pickle; refused");
                }
            }
        }

        /// <summary>The state dict, every tensor's data read (once per storage) through <paramref name="storage"/>.</summary>
        public Dictionary<string, HostTensor> Resolve(object? root, Func<StorageRef, byte[]> storage)
        {
            if (root is not PyDict dict) throw new CheckpointException($"{path}: the checkpoint is not a state dict (a mapping of names to tensors)");
            // A checkpoint saved as {"state_dict": {...}} or {"model": {...}} by a training script.
            if (dict.Count == 1 && dict[0].Value is PyDict inner && dict[0].Key is "state_dict" or "model") dict = inner;
            var result = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
            var loaded = new Dictionary<string, byte[]>(StringComparer.Ordinal);
            foreach (var (key, value) in dict)
            {
                string name = key as string ?? throw new CheckpointException($"{path}: a state-dict key that is not a string");
                if (value is not TensorRef t) throw new CheckpointException($"{path}: {StrictJson.Short(name)} is not a tensor");
                if (!loaded.TryGetValue(t.Storage.Key, out var bytes)) loaded[t.Storage.Key] = bytes = storage(t.Storage);
                if (!result.TryAdd(name, Materialise(t, bytes, name))) throw new CheckpointException($"{path}: {StrictJson.Short(name)} appears twice");
            }
            return result;
        }

        private HostTensor Materialise(TensorRef t, byte[] bytes, string name)
        {
            long count = HostTensor.Elements(t.Shape);
            long available = bytes.LongLength / t.Storage.Dtype.Size - t.Storage.ViewOffset;
            long last = t.Offset;
            for (int d = 0; d < t.Shape.Length; d++)
            {
                if (t.Shape[d] < 0 || t.Stride[d] < 0) throw new CheckpointException($"{path}: {StrictJson.Short(name)} has a negative size or stride");
                if (t.Shape[d] > 0) last = checked(last + (t.Shape[d] - 1) * t.Stride[d]);
            }
            // Every element is one of the storage's (a broadcast view, stride 0, would let a small file claim any size).
            if (count > available)
                throw new CheckpointException($"{path}: {StrictJson.Short(name)} has {count} elements, more than its storage holds ({available})");
            if (count > 0 && (t.Offset < 0 || last >= available))
                throw new CheckpointException($"{path}: {StrictJson.Short(name)} reads past the end of its storage ({last + 1} elements needed, {available} held)");
            var values = new float[count];
            var index = new int[t.Shape.Length];
            for (long i = 0; i < count; i++)
            {
                long at = t.Offset + t.Storage.ViewOffset;
                for (int d = 0; d < index.Length; d++) at += index[d] * t.Stride[d];
                values[i] = t.Storage.Dtype.Get(bytes, at);
                for (int d = index.Length - 1; d >= 0 && ++index[d] == t.Shape[d]; d--) index[d] = 0;
            }
            return new HostTensor(t.Shape, values, t.Storage.Dtype.Name);
        }

        private object MakeGlobal(string module, string name)
        {
            string full = module + "." + name;
            if (!AllowedGlobals.Contains(full))
                throw new CheckpointException($"{path}: the pickle names {StrictJson.Short(full)}, which a state dict never needs; refused (nothing in the file was run)");
            return new Global(full);
        }

        private StorageRef Persistent(object? pid)
        {
            // ('storage', storage type, key, location, numel) — and a view's (key, offset, size) in the legacy format.
            if (pid is not object?[] { Length: 5 or 6 } p || p[0] is not "storage" || p[1] is not Global type || p[2] is not string key || p[4] is not long numel || numel < 0)
                throw Bad("a persistent id that is not a tensor storage");
            var dtype = Dtype.FromStorage(type.Name) ?? throw Bad($"{type.Name} is not a storage type");
            long viewOffset = 0;
            if (p.Length == 6 && p[5] is object?[] { Length: 3 } view)
            {
                if (!legacy || view[1] is not long offset || offset < 0) throw Bad("a malformed storage view");
                viewOffset = offset;
            }
            var s = new StorageRef(key, dtype, numel, viewOffset);
            if (Storages.TryGetValue(key, out var seen) && (seen.Dtype != dtype || seen.Numel != numel) && !legacy)
                throw Bad($"storage {StrictJson.Short(key)} is named with two types or sizes");
            Storages.TryAdd(key, s with { ViewOffset = 0 });
            return s;
        }

        private object Reduce(object? callable, object?[] args)
        {
            switch ((callable as Global)?.Name)
            {
                case "collections.OrderedDict" when args.Length == 0:
                    return new PyDict();
                case "torch._utils._rebuild_tensor_v2" when args.Length is 6 or 7 && args[0] is StorageRef s && args[1] is long offset
                                                            && args[2] is object?[] size && args[3] is object?[] stride && size.Length == stride.Length:
                    return new TensorRef(s, offset, size.Select(v => v is long n and >= 0 and <= int.MaxValue ? (int)n : throw Bad("a tensor size that is not a small integer")).ToArray(),
                        stride.Select(v => v as long? ?? throw Bad("a tensor stride that is not an integer")).ToArray());
                case "torch._utils._rebuild_parameter" when args.Length == 3 && args[0] is TensorRef t:
                    return t;
                default:
                    throw Bad($"a call of {(callable as Global)?.Name ?? "something that is not a global"} with {args.Length} arguments; refused");
            }
        }

        private static void SetItems(object? target, List<object?> items)
        {
            if (target is not PyDict dict || items.Count % 2 != 0) throw new InvalidDataException("SETITEM(S) on something other than a dict");
            for (int i = 0; i < items.Count; i += 2) dict.Add(new(items[i] ?? "None", items[i + 1]));
        }

        private static void Append(object? target, List<object?> items)
        {
            if (target is not List<object?> list) throw new InvalidDataException("APPEND(S) on something other than a list");
            list.AddRange(items);
        }

        private CheckpointException Bad(string what) => new($"{path}: {what}");

        private ReadOnlySpan<byte> Bytes(int n)
        {
            if (n < 0 || n > data.Length - at) throw new EndOfStreamException("the pickle is cut short");
            var s = data.AsSpan(at, n);
            at += n;
            return s;
        }

        private byte Byte() => Bytes(1)[0];

        private static int Length(long n) => n is >= 0 and <= int.MaxValue ? (int)n : throw new InvalidDataException($"a length of {n}");
        private string Utf8(int n) => Encoding.UTF8.GetString(Bytes(n));
        private string Latin1(int n) => Encoding.Latin1.GetString(Bytes(n));

        private string Line()
        {
            int end = at < data.Length ? Array.IndexOf(data, (byte)'\n', at) : -1;
            if (end < 0 || end - at > 256) throw new InvalidDataException("a GLOBAL name without its line end");
            string s = Encoding.ASCII.GetString(data, at, end - at);
            at = end + 1;
            return s;
        }

        private static object Long(ReadOnlySpan<byte> bytes)
        {
            var v = new System.Numerics.BigInteger(bytes, isUnsigned: false, isBigEndian: false);
            return v >= long.MinValue && v <= long.MaxValue ? (long)v : v;
        }

        private object? Memo(long key) => memo.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"memo {key} read before it was written");

        private object? Top() => stack.Count > 0 ? stack[^1] : throw new InvalidDataException("the pickle's stack is empty");

        private object? Pop()
        {
            var v = Top();
            stack.RemoveAt(stack.Count - 1);
            if (v is Mark) throw new InvalidDataException("a MARK where a value was expected");
            return v;
        }

        private List<object?> PopMark()
        {
            int mark = stack.FindLastIndex(v => v is Mark);
            if (mark < 0) throw new InvalidDataException("no MARK on the stack");
            var items = stack.GetRange(mark + 1, stack.Count - mark - 1);
            stack.RemoveRange(mark, stack.Count - mark);
            return items;
        }
    }
}
