using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Runtime;

/// <summary>A float32 device tensor: a row-major shape over a pooled buffer.</summary>
public sealed class Tensor : IDisposable
{
    private readonly PooledBuffer buffer;

    /// <summary>An uninitialised FP32 tensor of the given shape, from the device's pool.</summary>
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

    /// <summary>The device the data lives on.</summary>
    public BertDevice Device { get; }
    /// <summary>The shape, row-major.</summary>
    public int[] Shape { get; }
    /// <summary>Elements in the tensor.</summary>
    public long Length => buffer.Length;
    /// <summary>The device memory.</summary>
    public ArrayView<float> View => buffer.View;

    /// <summary>A tensor holding a copy of host data.</summary>
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

    /// <summary>Overwrites the data with a host copy of the same length.</summary>
    public void CopyFrom(ReadOnlySpan<float> data) => View.CopyFromCPU(Device.Accelerator.DefaultStream, data);

    /// <summary>A host copy of the data.</summary>
    public float[] ToHost()
    {
        var result = new float[Length];
        View.CopyToCPU(Device.Accelerator.DefaultStream, result);
        Device.Accelerator.DefaultStream.Synchronize();
        return result;
    }

    /// <summary>Returns the memory to the pool.</summary>
    public void Dispose() => buffer.Dispose();
}
