using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Kernels;

namespace IlgpuBert.Runtime;

/// <summary>
/// An int8 device tensor (quantized weights, quantized activations): a pooled float buffer of a
/// quarter the length, viewed as bytes, so it comes from the same pool as every other buffer.
/// </summary>
public sealed class Int8Tensor : IDisposable
{
    private readonly PooledBuffer buffer;

    /// <summary>An uninitialised int8 tensor of the given shape, from the device's pool.</summary>
    public Int8Tensor(BertDevice device, params int[] shape)
    {
        Device = device;
        Shape = (int[])shape.Clone();
        Length = shape.Aggregate(1L, (n, d) => d >= 0 ? n * d : throw new ArgumentException($"negative dimension in shape [{string.Join(", ", shape)}]"));
        buffer = device.Pool.Rent(Math.Max(1, (Length + 3) / 4));
    }

    /// <summary>The device the data lives on.</summary>
    public BertDevice Device { get; }
    /// <summary>The shape, row-major.</summary>
    public int[] Shape { get; }
    /// <summary>Elements in the tensor.</summary>
    public long Length { get; }
    /// <summary>The device memory.</summary>
    public ArrayView<sbyte> View => buffer.View.Cast<sbyte>().SubView(0, Length);

    /// <summary>A [N, K] weight packed for the CPU's int8 kernel, made on first use (weights are not written after upload).</summary>
    internal PackedInt8Weight? HostPacked { get; set; }

    /// <summary>A tensor holding a copy of host data.</summary>
    public static Int8Tensor FromHost(BertDevice device, sbyte[] data, params int[] shape)
    {
        var t = new Int8Tensor(device, shape);
        if (t.Length != data.Length)
        {
            t.Dispose();
            throw new ArgumentException($"{data.Length} values do not fill shape [{string.Join(", ", shape)}]");
        }
        if (data.Length > 0) t.View.CopyFromCPU(device.Accelerator.DefaultStream, data);
        return t;
    }

    /// <summary>A host copy of the data.</summary>
    public sbyte[] ToHost()
    {
        var result = new sbyte[Length];
        if (Length > 0) View.CopyToCPU(Device.Accelerator.DefaultStream, result);
        Device.Accelerator.DefaultStream.Synchronize();
        return result;
    }

    /// <summary>Returns the memory to the pool.</summary>
    public void Dispose() => buffer.Dispose();
}
