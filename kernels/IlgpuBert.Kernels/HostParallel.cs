// A fork-join loop for the host kernels. Parallel.For hands each loop to the .NET thread pool and
// waits on it through semaphores: tens of microseconds per loop, and a batch-1 forward of a small
// BERT runs ~150 loops of a few hundred microseconds each (perf/RESULTS.md). Here one worker
// thread per other core stays hot between loops: it spins on a generation counter for a while
// after each loop (the next one usually comes within microseconds) and only then sleeps; the
// calling thread takes part; indices are handed out one at a time from a shared counter, so
// uneven tasks balance.
//
// One loop runs on the workers at a time. A loop started while another is in flight (a second
// thread, or a loop inside a loop's body) goes to Parallel.For instead, so callers need not know.
using System.Diagnostics;

namespace IlgpuBert.Kernels;

public static class HostParallel
{
    /// <summary>How long an idle worker spins for the next loop before it sleeps.</summary>
    private static readonly long SpinTicks = Stopwatch.Frequency / 5_000; // 200 µs

    private static readonly object gate = new();
    private static readonly int workers = Math.Max(0, Environment.ProcessorCount - 1);
    private static int busy, sleeping, started;
    private static int generation;

    // The loop in flight (written before generation is bumped, read after a worker sees it change).
    private static Action<int>? body;
    private static int next, end, pending;
    private static Exception? failure;

    /// <summary>body(i) for every i in [from, to), on every core; returns when all are done, rethrowing the first exception.</summary>
    public static void For(int from, int to, Action<int> loopBody)
    {
        if (to - from <= 1 || workers == 0)
        {
            for (int i = from; i < to; i++) loopBody(i);
            return;
        }
        if (Interlocked.CompareExchange(ref busy, 1, 0) != 0)
        {
            Parallel.For(from, to, loopBody); // another loop holds the workers
            return;
        }
        try
        {
            EnsureStarted();
            body = loopBody;
            failure = null;
            next = from;
            end = to;
            pending = workers;
            Interlocked.Increment(ref generation); // publishes the loop (a full fence)
            if (Volatile.Read(ref sleeping) > 0)
                lock (gate) Monitor.PulseAll(gate);
            Work();
            var spin = new SpinWait();
            while (Volatile.Read(ref pending) > 0) spin.SpinOnce(sleep1Threshold: -1);
            body = null;
            if (failure is { } e) throw new AggregateException(e);
        }
        finally
        {
            Volatile.Write(ref busy, 0);
        }
    }

    /// <summary>Takes indices until none is left.</summary>
    private static void Work()
    {
        var loop = body!;
        int last = end;
        for (int i = Interlocked.Increment(ref next) - 1; i < last; i = Interlocked.Increment(ref next) - 1)
        {
            try
            {
                loop(i);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref failure, e, null);
                Volatile.Write(ref next, last); // stop handing out work
            }
        }
    }

    private static void EnsureStarted()
    {
        if (Volatile.Read(ref started) != 0) return;
        lock (gate)
        {
            if (started != 0) return;
            // The generation before the first loop is published: a worker that starts late must still run that loop.
            int current = Volatile.Read(ref generation);
            for (int w = 0; w < workers; w++)
                new Thread(() => Worker(current)) { IsBackground = true, Name = $"IlgpuBert host worker {w + 1}" }.Start();
            Volatile.Write(ref started, 1);
        }
    }

    private static void Worker(int seen)
    {
        while (true)
        {
            long spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
            while (Volatile.Read(ref generation) == seen)
            {
                if (Stopwatch.GetTimestamp() < spinUntil)
                {
                    Thread.SpinWait(30);
                    continue;
                }
                lock (gate)
                {
                    Interlocked.Increment(ref sleeping); // a full fence before generation is read again
                    while (Volatile.Read(ref generation) == seen) Monitor.Wait(gate);
                    Interlocked.Decrement(ref sleeping);
                }
            }
            seen = Volatile.Read(ref generation);
            Work();
            Interlocked.Decrement(ref pending);
        }
    }
}
