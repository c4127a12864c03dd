// Device memory for tensors comes from here, not from the accelerator directly: every ILGPU
// allocation is a plain cuMemAlloc (ILGPU-NOTES.md), far too slow for a training step that needs
// the same buffers every time. Returned buffers are kept by exact length and handed out again, so
// a steady-state step allocates nothing. Work whose shapes keep changing (inference over texts of
// every length) would keep a buffer of every size ever used: once the idle buffers hold more than
// the most ever rented at once (and at least IdleFloor), they are freed. The pool also keeps the
// accounting that tests and benchmarks read (how much was allocated, the peak, the largest request).
// It also keeps a budget: an allocation that would take the pool past what the device can hold
// (after freeing idle buffers) fails with a DeviceException naming the sizes, instead of the
// process dying out of memory (exit 134) or the OS paging for minutes.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Runtime;

public sealed class BufferPool : IDisposable
{
    private readonly Accelerator accelerator;
    private readonly Dictionary<long, Stack<MemoryBuffer1D<float, Stride1D.Dense>>> free = new();
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> all = new();
    private readonly object gate = new();

    internal BufferPool(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        Budget = DefaultBudget(accelerator);
    }

    /// <summary>
    /// The most bytes the pool may hold: 95% of a GPU's memory; on the CPU accelerator 75% of the
    /// memory this process may use (physical or its container's limit), leaving room for host arrays.
    /// </summary>
    public long Budget { get; set; }

    public static long DefaultBudget(Accelerator accelerator) => accelerator.AcceleratorType == AcceleratorType.CPU
        ? (long)(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes * 0.75)
        : (long)(accelerator.MemorySize * 0.95);

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
                long bytes = Math.Max(length, 1) * sizeof(float);
                if (BytesAllocated + bytes > Budget) Trim();
                if (BytesAllocated + bytes > Budget)
                    throw new DeviceException($"out of memory on {accelerator.Name}: {GiB(bytes)} more are needed with {GiB(BytesInUse)} in use, "
                        + $"and {GiB(Budget)} are usable; use a smaller batch, sequence length or model");
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

    private static string GiB(long bytes) => $"{bytes / (double)(1L << 30):F2} GiB";

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
