// Device memory for tensors comes from here, not from the accelerator directly: every ILGPU
// allocation is a plain cuMemAlloc (ILGPU-NOTES.md), far too slow for a training step that needs
// the same buffers every time, and on the CPU a fresh buffer page-faults on every first touch.
// Returned buffers are kept and handed out again, so a steady-state step allocates nothing. Lengths
// up to 16K floats are kept exactly; longer ones are rounded up to one of eight size classes per
// power of two (at most 12.5% more, never touched beyond the request), so a length that changes
// from step to step — the logits of a batch's masked positions, [M, V] with M drawn anew each
// step — finds a buffer again. Work whose shapes keep changing (inference over texts of every
// length) would keep a buffer of every class it ever used: once the pool holds more than twice the
// most ever rented at once (and that excess is at least IdleFloor), the idle buffers are freed.
// The pool also keeps the accounting that tests and benchmarks read (how much was allocated, the
// peak, the largest request). It also keeps a budget: an allocation that would take the pool past
// what the device can hold (after freeing idle buffers) fails with a DeviceException naming the
// sizes, instead of the process dying out of memory (exit 134) or the OS paging for minutes.
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Runtime;

/// <summary>Device buffers by size, reused instead of allocated each step (allocation is slow on GPUs).</summary>
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

    /// <summary>How much memory the pool may keep for reuse on this accelerator.</summary>
    public static long DefaultBudget(Accelerator accelerator) => accelerator.AcceleratorType == AcceleratorType.CPU
        ? (long)(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes * 0.75)
        : (long)(accelerator.MemorySize * 0.95);

    /// <summary>Device allocations made so far (a steady state adds none).</summary>
    public long Allocations { get; private set; }

    /// <summary>Bytes of device memory the pool holds, rented or free.</summary>
    public long BytesAllocated { get; private set; }

    /// <summary>Bytes currently rented out (whole buffers: a request's size class).</summary>
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
            long capacity = Capacity(length);
            if (free.TryGetValue(capacity, out var stack) && stack.Count > 0)
                buffer = stack.Pop();
            else
            {
                long bytes = capacity * sizeof(float);
                if (BytesAllocated + bytes > Budget) Trim();
                if (BytesAllocated + bytes > Budget)
                    throw new DeviceException($"out of memory on {accelerator.Name}: {GiB(bytes)} more are needed with {GiB(BytesInUse)} in use, "
                        + $"and {GiB(Budget)} are usable; use a smaller batch, sequence length or model");
                buffer = accelerator.Allocate1D<float>(capacity);
                all.Add(buffer);
                Allocations++;
                BytesAllocated += buffer.LengthInBytes;
            }
            BytesInUse += buffer.LengthInBytes;
            PeakBytesInUse = Math.Max(PeakBytesInUse, BytesInUse);
            mostEverInUse = Math.Max(mostEverInUse, BytesInUse);
            LargestRequest = Math.Max(LargestRequest, length);
        }
        return new PooledBuffer(this, buffer, length);
    }

    /// <summary>Lengths up to this many floats are kept exactly; longer ones by size class.</summary>
    public const long ExactUpTo = 16 * 1024;

    /// <summary>
    /// The buffer length that serves a request of <paramref name="length"/> floats: the length itself
    /// up to <see cref="ExactUpTo"/>, above it the next multiple of an eighth of its power of two.
    /// </summary>
    public static long Capacity(long length)
    {
        if (length <= ExactUpTo) return Math.Max(length, 1);
        long step = 1L << (63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)length) - 3);
        return (length + step - 1) / step * step;
    }

    private static string GiB(long bytes) => $"{bytes / (double)(1L << 30):F2} GiB";

    /// <summary>Bytes beyond the most ever rented at once that the pool may always keep.</summary>
    public const long IdleFloor = 256L << 20;

    // The most bytes ever rented at once (PeakBytesInUse, but never reset): what the trim rule keeps.
    private long mostEverInUse;

    internal void Return(MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        lock (gate)
        {
            if (!free.TryGetValue(buffer.Length, out var stack))
                free[buffer.Length] = stack = new Stack<MemoryBuffer1D<float, Stride1D.Dense>>();
            stack.Push(buffer);
            BytesInUse -= buffer.LengthInBytes;
            if (BytesAllocated - mostEverInUse > Math.Max(IdleFloor, mostEverInUse))
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

    /// <summary>Zeroes the hit, miss and peak counters.</summary>
    public void ResetStatistics()
    {
        lock (gate)
        {
            PeakBytesInUse = BytesInUse;
            LargestRequest = 0;
        }
    }

    /// <summary>Frees every pooled buffer.</summary>
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

    /// <summary>Elements in the buffer.</summary>
    public long Length { get; }

    /// <summary>The buffer's device memory.</summary>
    public ArrayView<float> View =>
        (buffer ?? throw new ObjectDisposedException(nameof(PooledBuffer))).View.SubView(0, Length);

    /// <summary>Returns the buffer to its pool.</summary>
    public void Dispose()
    {
        var b = Interlocked.Exchange(ref buffer, null);
        if (b is not null) pool.Return(b);
    }
}
