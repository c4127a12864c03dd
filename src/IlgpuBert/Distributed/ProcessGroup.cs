// Data parallelism's one abstraction. N processes (ranks) hold the same model; each runs its share
// of a step's micro-batches, then the group sums their gradients so that every rank applies the
// same AdamW update and the weights stay identical. Rank 0 alone writes metrics, plots and
// checkpoints. Backends: one process (nothing to exchange), MPI (gradients staged through host
// buckets; any accelerator) and NCCL (gradients summed on CUDA buffers, MPI for the rest).
using ILGPU;
using ILGPU.Runtime;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Distributed;

public abstract class ProcessGroup : IDisposable
{
    /// <summary>A group of one: training as it always was.</summary>
    public static ProcessGroup Single() => new SingleProcess();

    /// <summary>"single", "mpi" or "nccl".</summary>
    public abstract string Backend { get; }
    public abstract int Rank { get; }
    public abstract int Size { get; }
    public bool IsRoot => Rank == 0;

    /// <summary>values[i] = Σ over ranks of values[i], the same on every rank.</summary>
    public abstract void AllReduceSum(Span<double> values);

    /// <summary>Every gradient becomes Σ over ranks of scale_r · gradient_r, the same on every rank.</summary>
    public abstract void AllReduceGradients(IReadOnlyList<Parameter> parameters, float scale = 1f);

    /// <summary>Every parameter takes rank 0's values (a new model's initialisation, a loaded checkpoint).</summary>
    public abstract void Broadcast(IReadOnlyList<Parameter> parameters);

    /// <summary>Ends every rank's process now with <paramref name="exitCode"/> (a failure on one rank).</summary>
    public abstract void Abort(int exitCode);

    /// <summary>True on every rank when <paramref name="flag"/> is true on any (a stop request, say).</summary>
    public bool Any(bool flag)
    {
        if (Size == 1) return flag;
        Span<double> f = [flag ? 1 : 0];
        AllReduceSum(f);
        return f[0] > 0;
    }

    /// <summary>Wall time spent in <see cref="AllReduceGradients"/> so far, waiting for slower ranks included.</summary>
    public TimeSpan GradientTime { get; protected set; }

    /// <summary>"rank 1 of 2", for messages; empty for one process.</summary>
    public string Describe() => Size == 1 ? "" : $"rank {Rank} of {Size}";

    /// <summary>
    /// Fails unless every rank holds bit-identical parameters. Each rank hashes its weights; the
    /// hash is split into 20-bit pieces x and the group sums x and x²: all ranks agree exactly
    /// when N·Σx² = (Σx)² for every piece (Cauchy–Schwarz), and these sums are exact in doubles.
    /// </summary>
    public void VerifyIdentical(IReadOnlyList<Parameter> parameters, string when)
    {
        if (Size == 1) return;
        ulong hash = 14695981039346656037UL;
        foreach (var p in parameters)
            foreach (float x in p.Var.Value.ToHost())
                hash = (hash ^ BitConverter.SingleToUInt32Bits(x)) * 1099511628211UL;
        Span<double> sums = stackalloc double[6];
        for (int i = 0; i < 3; i++)
        {
            double piece = (hash >> (20 * i)) & 0xFFFFF;
            sums[2 * i] = piece;
            sums[2 * i + 1] = piece * piece;
        }
        AllReduceSum(sums);
        for (int i = 0; i < 3; i++)
            if (Size * sums[2 * i + 1] != sums[2 * i] * sums[2 * i])
                throw new InvalidOperationException($"{when}: the ranks' weights differ (they must stay identical in data-parallel training)");
    }

    /// <summary>The rank of this process among those on its machine, from the launcher's environment (0 when none says).</summary>
    public static int LocalRank()
    {
        foreach (string name in (string[])["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"])
            if (int.TryParse(Environment.GetEnvironmentVariable(name), out int rank) && rank >= 0) return rank;
        return 0;
    }

    /// <summary>g ← scale·g on the device, for backends that do not touch the gradients on the host.</summary>
    protected static void ScaleOnDevice(IReadOnlyList<Parameter> parameters, float scale)
    {
        if (scale == 1f || parameters.Count == 0) return;
        var device = parameters[0].Var.Device;
        using var factor = Tensor.FromHost(device, [scale], 1);
        foreach (var p in parameters)
        {
            var g = p.Var.EnsureGrad();
            for (long at = 0; at < g.Length; at += int.MaxValue)
            {
                int n = (int)Math.Min(int.MaxValue, g.Length - at);
                var part = g.View.SubView(at, n);
                device.Kernels.Elementwise.ScaleBlocks(part, factor.View, part, 1, n, n);
            }
        }
    }

    public virtual void Dispose() { }

    private sealed class SingleProcess : ProcessGroup
    {
        public override string Backend => "single";
        public override int Rank => 0;
        public override int Size => 1;
        public override void AllReduceSum(Span<double> values) { }
        public override void AllReduceGradients(IReadOnlyList<Parameter> parameters, float scale = 1f) => ScaleOnDevice(parameters, scale);
        public override void Broadcast(IReadOnlyList<Parameter> parameters) { }
        public override void Abort(int exitCode) => Environment.Exit(exitCode);
    }
}

/// <summary>
/// MPI across processes and machines (launched by mpirun). Gradients travel through host buckets
/// of up to <see cref="BucketFloats"/> floats, each summed by one MPI_Allreduce: on a GPU that is a
/// copy to the host and back per bucket (stated; NCCL avoids it), on the CPU accelerator a memcpy.
/// </summary>
public sealed unsafe class MpiProcessGroup : ProcessGroup
{
    /// <summary>4 Mi floats (16 MiB) per bucket, near PyTorch DDP's 25 MB default.</summary>
    public const int BucketFloats = 4 << 20;

    private readonly MpiLibrary mpi;
    private float[]? bucket;

    public MpiProcessGroup()
    {
        mpi = MpiLibrary.Load();
        mpi.Init();
        (Rank, Size) = mpi.World();
    }

    public override string Backend => "mpi";
    public override int Rank { get; }
    public override int Size { get; }

    public override void AllReduceSum(Span<double> values)
    {
        fixed (double* p = values) mpi.AllReduceSum(p, values.Length, mpi.Double);
    }

    public override void AllReduceGradients(IReadOnlyList<Parameter> parameters, float scale = 1f)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        ThroughBuckets(parameters.Select(p => p.Var.EnsureGrad()), (data, n) =>
        {
            if (scale != 1f) for (int i = 0; i < n; i++) data[i] *= scale;
            mpi.AllReduceSum(data, n, mpi.Float);
        });
        GradientTime += System.Diagnostics.Stopwatch.GetElapsedTime(start);
    }

    public override void Broadcast(IReadOnlyList<Parameter> parameters) =>
        ThroughBuckets(parameters.Select(p => p.Var.Value), (data, n) => mpi.Broadcast(data, n, mpi.Float, 0));

    public override void Abort(int exitCode) => mpi.Abort(exitCode);

    /// <summary>
    /// Streams the tensors, concatenated, through the host bucket: fill it from consecutive pieces,
    /// run <c>collective</c> on the filled part, copy the pieces back.
    /// </summary>
    private delegate void Collective(float* data, int count);

    private void ThroughBuckets(IEnumerable<Tensor> tensors, Collective collective)
    {
        bucket ??= GC.AllocateUninitializedArray<float>(BucketFloats, pinned: true);
        var pieces = new List<(ArrayView<float> View, int At)>();
        int fill = 0;
        AcceleratorStream? stream = null;
        void Flush()
        {
            if (fill == 0) return;
            stream!.Synchronize();
            fixed (float* p = bucket) collective(p, fill);
            foreach (var (view, at) in pieces) view.CopyFromCPU(stream, bucket.AsSpan(at, (int)view.Length));
            stream.Synchronize();
            pieces.Clear();
            fill = 0;
        }
        foreach (var t in tensors)
        {
            stream = t.Device.Accelerator.DefaultStream;
            for (long done = 0; done < t.Length;)
            {
                int take = (int)Math.Min(bucket.Length - fill, t.Length - done);
                var piece = t.View.SubView(done, take);
                piece.CopyToCPU(stream, bucket.AsSpan(fill, take));
                pieces.Add((piece, fill));
                fill += take;
                done += take;
                if (fill == bucket.Length) Flush();
            }
        }
        Flush();
    }

    public override void Dispose() => mpi.Shutdown();
}
