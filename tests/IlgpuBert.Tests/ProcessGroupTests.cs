using IlgpuBert.Autograd;
using IlgpuBert.Distributed;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

/// <summary>
/// N ranks as threads of this process, for testing what sits on top of a group without MPI: each
/// collective posts every rank's data, meets at a barrier, combines in rank order, meets again.
/// </summary>
public sealed class ThreadRanks(int size)
{
    private readonly Barrier barrier = new(size);
    private readonly object?[] posted = new object?[size];

    public int Size => size;

    /// <summary>Posts <paramref name="mine"/>, waits for all, returns everyone's posts in rank order.</summary>
    public T[] Exchange<T>(int rank, T mine)
    {
        posted[rank] = mine;
        barrier.SignalAndWait();
        var all = posted.Cast<T>().ToArray();
        barrier.SignalAndWait(); // nobody posts again before all have read
        return all;
    }

    public ProcessGroup Group(int rank) => new ThreadGroup(this, rank);

    private sealed class ThreadGroup(ThreadRanks world, int rank) : ProcessGroup
    {
        public override string Backend => "threads";
        public override int Rank => rank;
        public override int Size => world.Size;

        public override void AllReduceSum(Span<double> values)
        {
            var all = world.Exchange(rank, values.ToArray());
            for (int i = 0; i < values.Length; i++) values[i] = all.Sum(v => v[i]);
        }

        public override void AllReduceGradients(IReadOnlyList<Parameter> parameters, float scale = 1f)
        {
            var mine = parameters.Select(p => p.Var.EnsureGrad().ToHost().Select(g => g * scale).ToArray()).ToArray();
            var all = world.Exchange(rank, mine);
            for (int i = 0; i < parameters.Count; i++)
                parameters[i].Var.Grad!.CopyFrom(Enumerable.Range(0, mine[i].Length).Select(j => all.Aggregate(0f, (s, r) => s + r[i][j])).ToArray());
        }

        public override void Broadcast(IReadOnlyList<Parameter> parameters)
        {
            var all = world.Exchange(rank, parameters.Select(p => p.Var.Value.ToHost()).ToArray());
            for (int i = 0; i < parameters.Count; i++) parameters[i].Var.Value.CopyFrom(all[0][i]);
        }

        public override void Abort(int exitCode) => throw new InvalidOperationException($"abort {exitCode}");
    }
}

public class ProcessGroupTests
{
    private static Parameter Param(BertDevice device, float[] values, float[] grad)
    {
        var v = new Var(Tensor.FromHost(device, values, values.Length), requiresGrad: true, name: "p");
        v.EnsureGrad().CopyFrom(grad);
        return new Parameter(v, true);
    }

    /// <summary>Runs <paramref name="body"/> as each of <paramref name="size"/> ranks, each on its own thread and CPU device.</summary>
    private static T[] OnRanks<T>(int size, Func<int, ThreadRanks, BertDevice, T> body)
    {
        var world = new ThreadRanks(size);
        var results = new T[size];
        var errors = new Exception?[size];
        var threads = Enumerable.Range(0, size).Select(r => new Thread(() =>
        {
            try
            {
                using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
                results[r] = body(r, world, device);
            }
            catch (Exception e) { errors[r] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        foreach (var e in errors) if (e is not null) throw new AggregateException(e);
        return results;
    }

    [Fact]
    public void VerifyIdentical_passes_equal_ranks_and_fails_every_rank_when_one_weight_differs_in_its_last_bit()
    {
        float one = 1f, next = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(one) + 1);
        var outcomes = OnRanks(3, (rank, world, device) =>
        {
            using var group = world.Group(rank);
            var same = Param(device, [0.5f, -2f, one], [0, 0, 0]);
            group.VerifyIdentical([same], "equal");
            var differ = Param(device, [0.5f, -2f, rank == 2 ? next : one], [0, 0, 0]);
            try
            {
                group.VerifyIdentical([differ], "step 7");
                return "passed";
            }
            catch (InvalidOperationException e) { return e.Message; }
        });
        Assert.All(outcomes, m => Assert.Equal("step 7: the ranks' weights differ (they must stay identical in data-parallel training)", m));
    }

    [Fact]
    public void Trainer_refuses_a_grad_accum_the_ranks_cannot_share()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var group = new ThreadRanks(2).Group(1);
        using var dir = new TempDir();
        var e = Assert.Throws<ArgumentException>(() => new Trainer(device, TextWriter.Null, group).Run(new PretrainingOptions { GradAccum = 3 }, dir.File("out")));
        Assert.Equal("--grad-accum 3 is not a multiple of the 2 ranks (each rank runs grad-accum / ranks micro-batches per step)", e.Message);
        Assert.False(Directory.Exists(dir.File("out")));
    }

    /// <summary>
    /// NCCL's wiring without NVIDIA's library: a fake INccl sums, at ncclGroupEnd, the buffers
    /// each rank enqueued (CPU-accelerator memory is host memory, so it reads them directly).
    /// </summary>
    private sealed unsafe class FakeNccl(ThreadRanks world) : INccl
    {
        public byte[]? Id;
        public readonly List<string> Calls = [];
        private readonly List<(nint Data, long Count)> pending = [];
        private int rank = -1;
        private bool inGroup;

        public byte[] UniqueId()
        {
            Calls.Add("id");
            Id = Enumerable.Range(0, NcclLibrary.UniqueIdBytes).Select(i => (byte)(255 - i)).ToArray();
            return Id;
        }

        public nint InitRank(int ranks, byte[] id, int rank)
        {
            Calls.Add($"init {ranks} {rank}");
            Id = id;
            this.rank = rank;
            return 1000 + rank;
        }

        public void GroupStart() => inGroup = true;

        public void AllReduceSum(nint comm, nint data, long count, nint stream)
        {
            Assert.True(inGroup, "ncclAllReduce outside ncclGroupStart/End");
            Assert.Equal(1000 + rank, comm);
            Calls.Add($"allreduce {count}");
            pending.Add((data, count));
        }

        public void GroupEnd()
        {
            inGroup = false;
            var all = world.Exchange(rank, pending.ToArray());
            var sums = pending.Select((b, i) => Enumerable.Range(0, (int)b.Count).Select(j => all.Aggregate(0f, (s, r) => s + ((float*)r[i].Data)[j])).ToArray()).ToList();
            world.Exchange(rank, 0); // all have read before anyone writes
            for (int i = 0; i < pending.Count; i++) sums[i].CopyTo(new Span<float>((void*)pending[i].Data, sums[i].Length));
            pending.Clear();
        }

        public nint StreamOf(ILGPU.Runtime.AcceleratorStream stream) => 42;
        public void Destroy(nint comm) => Calls.Add("destroy");
    }

    [Fact]
    public void Nccl_group_hands_rank_0s_id_to_every_rank_and_sums_scaled_gradients_in_place_in_one_group_call()
    {
        var outcomes = OnRanks(2, (rank, world, device) =>
        {
            var nccl = new FakeNccl(world);
            var group = new NcclProcessGroup(world.Group(rank), nccl);
            var a = Param(device, [1, 2, 3], rank == 0 ? [1f, 2f, 3f] : [10f, 20f, 30f]);
            var b = Param(device, [5], rank == 0 ? [0.25f] : [-4f]);
            group.AllReduceGradients([a, b], rank == 0 ? 0.5f : 2f);
            group.AllReduceGradients([b]); // the communicator is made once
            var result = (A: a.Var.Grad!.ToHost(), B: b.Var.Grad!.ToHost(), nccl.Id, Calls: nccl.Calls.ToList());
            group.Dispose();
            return (result.A, result.B, result.Id, result.Calls, AfterDispose: nccl.Calls.Last());
        });
        foreach (var o in outcomes)
        {
            Assert.Equal([0.5f + 20f, 1f + 40f, 1.5f + 60f], o.A); // Σ scale_r · g_r
            Assert.Equal([2 * (0.125f - 8f)], o.B);                 // then summed again, unscaled
            Assert.Equal(Enumerable.Range(0, NcclLibrary.UniqueIdBytes).Select(i => (byte)(255 - i)), o.Id!);
            Assert.Equal("destroy", o.AfterDispose);
        }
        Assert.Equal(["id", "init 2 0", "allreduce 3", "allreduce 1", "allreduce 1"], outcomes[0].Calls);
        Assert.Equal(["init 2 1", "allreduce 3", "allreduce 1", "allreduce 1"], outcomes[1].Calls);
    }
}
