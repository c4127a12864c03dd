using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

/// <summary>The host kernels' fork-join loop: every index exactly once, whoever calls and however often.</summary>
public class HostParallelTests
{
    private static void AssertEachOnce(int[] hits, string what) =>
        Assert.True(hits.All(h => h == 1), $"{what}: indices run {string.Join(",", hits.Select((h, i) => (h, i)).Where(x => x.h != 1).Take(5))} times");

    [Fact]
    public void Every_index_runs_once_in_back_to_back_nested_concurrent_and_idle_loops()
    {
        for (int round = 0; round < 2_000; round++) // back to back, as a forward pass's loops come
        {
            var hits = new int[1 + round % 37];
            HostParallel.For(0, hits.Length, i => Interlocked.Increment(ref hits[i]));
            AssertEachOnce(hits, $"round {round}");
        }
        var offset = new int[10];
        HostParallel.For(3, 13, i => Interlocked.Increment(ref offset[i - 3]));
        AssertEachOnce(offset, "[3, 13)");

        var grid = new int[4 * 100]; // a loop inside a loop's body
        HostParallel.For(0, 4, i => HostParallel.For(0, 100, j => Interlocked.Increment(ref grid[i * 100 + j])));
        AssertEachOnce(grid, "nested");

        var shared = new int[8 * 300]; // several threads at once (tests and user code do this)
        Parallel.For(0, 8, t =>
        {
            for (int r = 0; r < 20; r++) HostParallel.For(0, 300, j => Interlocked.Increment(ref shared[t * 300 + j]));
        });
        Assert.All(shared, h => Assert.Equal(20, h));

        Thread.Sleep(50); // the workers have gone to sleep: the next loop must wake them
        var afterIdle = new int[64];
        HostParallel.For(0, 64, i => Interlocked.Increment(ref afterIdle[i]));
        AssertEachOnce(afterIdle, "after idling");
    }

    [Fact]
    public void An_exception_in_the_body_reaches_the_caller_and_the_loop_stays_usable()
    {
        var e = Assert.Throws<AggregateException>(() => HostParallel.For(0, 100, i =>
        {
            if (i == 37) throw new InvalidOperationException("index 37");
        }));
        Assert.Equal("index 37", Assert.IsType<InvalidOperationException>(e.InnerException).Message);
        var hits = new int[100];
        HostParallel.For(0, 100, i => Interlocked.Increment(ref hits[i]));
        AssertEachOnce(hits, "after the failure");
    }
}
