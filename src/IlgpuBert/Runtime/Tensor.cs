using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Runtime;

/// <summary>A float32 device tensor: a row-major shape over a pooled buffer.</summary>
public sealed class Tensor : IDisposable
{
    private readonly PooledBuffer buffer;

    public Tensor(BertDevice device, params int[] shape)
    {
        Device = device;
        Shape = (int[])shape.Clone();
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape [{string.Join(", ", shape)}]");
            n *= d;
        }
        buffer = device.Pool.Rent(n);
    }

    public BertDevice Device { get; }
    public int[] Shape { get; }
    public long Length => buffer.Length;
    public ArrayView<float> View => buffer.View;

    public static Tensor FromHost(BertDevice device, ReadOnlySpan<float> data, params int[] shape)
    {
        var t = new Tensor(device, shape);
        if (t.Length != data.Length)
        {
            t.Dispose();
            throw new ArgumentException($"{data.Length} values do not fill shape [{string.Join(", ", shape)}]");
        }
        t.CopyFrom(data);
        return t;
    }

    public void CopyFrom(ReadOnlySpan<float> data) => View.CopyFromCPU(Device.Accelerator.DefaultStream, data);

    public float[] ToHost()
    {
        var result = new float[Length];
        View.CopyToCPU(Device.Accelerator.DefaultStream, result);
        Device.Accelerator.DefaultStream.Synchronize();
        return result;
    }

    public void Dispose() => buffer.Dispose();
}
