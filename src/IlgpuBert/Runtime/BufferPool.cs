// Device memory for tensors comes from here, not from the accelerator directly: every ILGPU
// allocation is a plain cuMemAlloc (ILGPU-NOTES.md), far too slow for a training step that needs
// the same buffers every time. Returned buffers are kept by exact length and handed out again, so
// a steady-state step allocates nothing. Work whose shapes keep changing (inference over texts of
// every length) would keep a buffer of every size ever used: once the idle buffers hold more than
// the most ever rented at once (and at least IdleFloor), they are freed. The pool also keeps the
// accounting that tests and benchmarks read (how much was allocated, the peak, the largest request).
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Runtime;

public sealed class BufferPool : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly Dictionary<long, Stack<MemoryBuffer1D<float, Stride1D.Dense>>> free = new();
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> all = new();
    private readonly object gate = new();

    internal BufferPool(Accelerator accelerator) => this.accelerator = accelerator;

    /// <summary>Device allocations made so far (a steady state adds none).</summary>
    public long Allocations { get; private set; }

    /// <summary>Bytes of device memory the pool holds, rented or free.</summary>
    public long BytesAllocated { get; private set; }

    /// <summary>Bytes currently rented out.</summary>
    public long BytesInUse { get; private set; }

    /// <summary>The most bytes ever rented out at once.</summary>
    public long PeakBytesInUse { get; private set; }

    /// <summary>The largest single request, in floats, since creation or <see cref="ResetStatistics"/>.</summary>
    public long LargestRequest { get; private set; }

    /// <summary>Rents a buffer of exactly <paramref name="length"/> floats; contents are undefined.</summary>
    public PooledBuffer Rent(long length)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length));
        MemoryBuffer1D<float, Stride1D.Dense> buffer;
        lock (gate)
        {
            if (free.TryGetValue(length, out var stack) && stack.Count > 0)
                buffer = stack.Pop();
            else
            {
                buffer = accelerator.Allocate1D<float>(Math.Max(length, 1));
                all.Add(buffer);
                Allocations++;
                BytesAllocated += buffer.LengthInBytes;
            }
            BytesInUse += length * sizeof(float);
            PeakBytesInUse = Math.Max(PeakBytesInUse, BytesInUse);
            LargestRequest = Math.Max(LargestRequest, length);
        }
        return new PooledBuffer(this, buffer, length);
    }

    /// <summary>Idle bytes always allowed before the pool frees what it keeps.</summary>
    public const long IdleFloor = 256L << 20;

    internal void Return(MemoryBuffer1D<float, Stride1D.Dense> buffer, long length)
    {
        lock (gate)
        {
            if (!free.TryGetValue(length, out var stack))
                free[length] = stack = new Stack<MemoryBuffer1D<float, Stride1D.Dense>>();
            stack.Push(buffer);
            BytesInUse -= length * sizeof(float);
            if (BytesAllocated - BytesInUse > Math.Max(IdleFloor, PeakBytesInUse))
                Trim();
        }
    }

    /// <summary>Frees every buffer that is not rented out.</summary>
    public void Trim()
    {
        lock (gate)
        {
            accelerator.Synchronize();
            foreach (var stack in free.Values)
                while (stack.Count > 0)
                {
                    var b = stack.Pop();
                    all.Remove(b);
                    BytesAllocated -= b.LengthInBytes;
                    b.Dispose();
                }
        }
    }

    public void ResetStatistics()
    {
        lock (gate)
        {
            PeakBytesInUse = BytesInUse;
            LargestRequest = 0;
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var b in all) b.Dispose();
            all.Clear();
            free.Clear();
        }
    }
}

/// <summary>A rented device buffer; disposing gives it back to the pool.</summary>
public sealed class PooledBuffer : IDisposable
{
    private readonly BufferPool pool;
    private MemoryBuffer1D<float, Stride1D.Dense>? buffer;

    internal PooledBuffer(BufferPool pool, MemoryBuffer1D<float, Stride1D.Dense> buffer, long length)
    {
        this.pool = pool;
        this.buffer = buffer;
        Length = length;
    }

    public long Length { get; }

    public ArrayView<float> View =>
        (buffer ?? throw new ObjectDisposedException(nameof(PooledBuffer))).View.SubView(0, Length);

    public void Dispose()
    {
        var b = Interlocked.Exchange(ref buffer, null);
        if (b is not null) pool.Return(b, Length);
    }
}
