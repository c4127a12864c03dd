// NumPy's .npy format (version 1.0) for float32 arrays, so `embed --out x.npy` opens with np.load:
// magic, a little-endian header length, a Python dict literal padded with spaces to a multiple of
// 64 bytes and ending in a newline, then the C-order data. Written atomically.
using System.Text;

namespace IlgpuBert.Checkpoints;

public static class Npy
{
    public static void Write(string path, float[] data, int[] shape)
    {
        if (HostTensor.Elements(shape) != data.Length) throw new ArgumentException($"{data.Length} values do not fill shape [{string.Join(", ", shape)}]");
        string dims = shape.Length == 1 ? $"{shape[0]}," : string.Join(", ", shape);
        string dict = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}";
        int unpadded = 10 + dict.Length + 1;
        string header = dict + new string(' ', (64 - unpadded % 64) % 64) + "\n";
        AtomicFile.Write(path, s =>
        {
            s.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
            var bytes = Encoding.ASCII.GetBytes(header);
            s.Write(BitConverter.GetBytes((ushort)bytes.Length));
            s.Write(bytes);
            s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        });
    }
}
