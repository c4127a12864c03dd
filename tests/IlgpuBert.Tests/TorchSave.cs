// A test-side writer of torch.save's two layouts, so tests can make a pytorch_model.bin from any known
// model (the reader under test is PyTorchCheckpoint). Written from PyTorch's serialization format as
// documented in torch/serialization.py: a protocol-2 pickle of an OrderedDict whose values are
// torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks), the
// storage a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel). The zip layout keeps the
// pickle in archive/data.pkl and storage k in archive/data/k; the legacy layout writes the magic
// number, protocol version, sys_info, the pickle, the key list and then each storage as numel + bytes.
// Checked by loading what it writes with real torch.load (PyTorch 1.13.1): TorchSaveLoadsInRealTorch.
using System.Buffers.Binary;
using System.IO.Compression;
using System.Numerics;
using System.Text;
using IlgpuBert.Checkpoints;

namespace IlgpuBert.Tests;

internal static class TorchSave
{
    public static void Write(string path, IReadOnlyDictionary<string, HostTensor> tensors, bool legacy = false)
    {
        var keys = tensors.Keys.ToList();
        var pickle = StateDict(tensors, legacy);
        using var file = File.Create(path);
        if (!legacy)
        {
            using var zip = new ZipArchive(file, ZipArchiveMode.Create);
            void Entry(string name, byte[] bytes)
            {
                using var s = zip.CreateEntry("archive/" + name, CompressionLevel.NoCompression).Open();
                s.Write(bytes);
            }
            Entry("data.pkl", pickle);
            Entry("byteorder", "little"u8.ToArray());
            for (int i = 0; i < keys.Count; i++) Entry($"data/{i}", Floats(tensors[keys[i]].Data));
            Entry("version", "3\n"u8.ToArray());
            return;
        }
        file.Write(new Pickle().Long(BigInteger.Parse("119547037146038801333356")).Stop().ToArray());
        file.Write(new Pickle().Int(1001).Stop().ToArray());
        file.Write(new Pickle().EmptyDict().Mark().Str("protocol_version").Int(1001).Str("little_endian").True()
            .Str("type_sizes").EmptyDict().Mark().Str("short").Int(2).Str("int").Int(4).Str("long").Int(8).SetItems().SetItems().Stop().ToArray());
        file.Write(pickle);
        var list = new Pickle().EmptyList().Mark();
        for (int i = 0; i < keys.Count; i++) list.Str(i.ToString());
        file.Write(list.Appends().Stop().ToArray());
        var n = new byte[8];
        for (int i = 0; i < keys.Count; i++)
        {
            var data = tensors[keys[i]].Data;
            BinaryPrimitives.WriteInt64LittleEndian(n, data.Length);
            file.Write(n);
            file.Write(Floats(data));
        }
    }

    private static byte[] StateDict(IReadOnlyDictionary<string, HostTensor> tensors, bool legacy)
    {
        var p = new Pickle().Global("collections", "OrderedDict").EmptyTuple().Reduce().Mark();
        int key = 0;
        foreach (var (name, t) in tensors)
        {
            p.Str(name).Global("torch._utils", "_rebuild_tensor_v2");
            p.Mark().Mark().Str("storage").Global("torch", "FloatStorage").Str((key++).ToString()).Str("cpu").Int(t.Data.Length);
            if (legacy) p.None();
            p.Tuple().BinPersId().Int(0);
            p.Mark();
            foreach (int d in t.Shape) p.Int(d);
            p.Tuple().Mark();
            long stride = 1;
            var strides = new long[t.Shape.Length];
            for (int d = t.Shape.Length - 1; d >= 0; d--) { strides[d] = stride; stride *= t.Shape[d]; }
            foreach (long s in strides) p.Int(s);
            p.Tuple().False().Global("collections", "OrderedDict").EmptyTuple().Reduce().Tuple().Reduce();
        }
        return p.SetItems().Stop().ToArray();
    }

    private static byte[] Floats(float[] data)
    {
        var bytes = new byte[data.Length * 4];
        for (int i = 0; i < data.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), data[i]);
        return bytes;
    }

    /// <summary>A pickle program, opcode by opcode (protocol 2).</summary>
    internal sealed class Pickle
    {
        private readonly MemoryStream s = new();
        public Pickle() => s.Write([0x80, 2]);
        private Pickle Op(params byte[] bytes) { s.Write(bytes); return this; }
        public Pickle Global(string module, string name) => Op([(byte)'c', .. Encoding.ASCII.GetBytes($"{module}\n{name}\n")]);
        public Pickle Str(string v)
        {
            var bytes = Encoding.UTF8.GetBytes(v);
            var n = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(n, bytes.Length);
            return Op([(byte)'X', .. n, .. bytes]);
        }
        public Pickle Int(long v)
        {
            if (v is >= 0 and < 256) return Op((byte)'K', (byte)v);
            if (v is >= int.MinValue and <= int.MaxValue) { var b = new byte[4]; BinaryPrimitives.WriteInt32LittleEndian(b, (int)v); return Op([(byte)'J', .. b]); }
            return Long(v);
        }
        public Pickle Long(BigInteger v) { var b = v.ToByteArray(); return Op([0x8a, (byte)b.Length, .. b]); }
        public Pickle Mark() => Op((byte)'(');
        public Pickle Tuple() => Op((byte)'t');
        public Pickle EmptyTuple() => Op((byte)')');
        public Pickle Tuple1() => Op(0x85);
        public Pickle SetItem() => Op((byte)'s');
        public Pickle EmptyDict() => Op((byte)'}');
        public Pickle EmptyList() => Op((byte)']');
        public Pickle None() => Op((byte)'N');
        public Pickle True() => Op(0x88);
        public Pickle False() => Op(0x89);
        public Pickle Reduce() => Op((byte)'R');
        public Pickle BinPersId() => Op((byte)'Q');
        public Pickle SetItems() => Op((byte)'u');
        public Pickle Appends() => Op((byte)'e');
        public Pickle Stop() => Op((byte)'.');
        public byte[] ToArray() => s.ToArray();
    }
}
