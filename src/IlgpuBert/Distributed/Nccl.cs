// NCCL for CUDA devices: gradients are summed on the GPUs' own buffers (no host round trip), on
// the stream ILGPU launches on. MPI still starts the ranks, hands rank 0's NCCL id to the others
// and carries the few scalars and the initial broadcast. libnccl.so.2 is loaded when present;
// the calls sit behind INccl so the wiring is tested with a fake where no NVIDIA GPU is.
using System.Runtime.InteropServices;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using IlgpuBert.Model;

namespace IlgpuBert.Distributed;

/// <summary>The NCCL calls the group makes (float sums, in place).</summary>
public interface INccl
{
    /// <summary>ncclGetUniqueId: 128 bytes that name a new communicator.</summary>
    byte[] UniqueId();
    /// <summary>ncclCommInitRank.</summary>
    nint InitRank(int ranks, byte[] id, int rank);
    void GroupStart();
    void GroupEnd();
    /// <summary>ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm, stream).</summary>
    void AllReduceSum(nint comm, nint data, long count, nint stream);
    /// <summary>The native stream behind an accelerator stream; fails for a non-CUDA one.</summary>
    nint StreamOf(AcceleratorStream stream);
    void Destroy(nint comm);
}

public sealed class NcclProcessGroup(ProcessGroup bootstrap, INccl? nccl = null) : ProcessGroup
{
    private readonly INccl nccl = nccl ?? NcclLibrary.Load();
    private nint comm;

    public override string Backend => "nccl";
    public override int Rank => bootstrap.Rank;
    public override int Size => bootstrap.Size;

    public override void AllReduceSum(Span<double> values) => bootstrap.AllReduceSum(values);
    public override void Broadcast(IReadOnlyList<Parameter> parameters) => bootstrap.Broadcast(parameters);
    public override void Abort(int exitCode) => bootstrap.Abort(exitCode);

    public override void AllReduceGradients(IReadOnlyList<Parameter> parameters, float scale = 1f)
    {
        if (parameters.Count == 0) return;
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var stream = parameters[0].Var.Device.Accelerator.DefaultStream;
        nint native = nccl.StreamOf(stream);
        if (comm == 0) comm = Connect();
        ScaleOnDevice(parameters, scale);
        nccl.GroupStart();
        foreach (var p in parameters)
        {
            var g = p.Var.EnsureGrad();
            nccl.AllReduceSum(comm, g.View.LoadEffectiveAddressAsPtr(), g.Length, native);
        }
        nccl.GroupEnd();
        stream.Synchronize();
        GradientTime += System.Diagnostics.Stopwatch.GetElapsedTime(start);
    }

    /// <summary>Rank 0's id reaches every rank through the bootstrap's sum (the others add zeros).</summary>
    private nint Connect()
    {
        var id = IsRoot ? nccl.UniqueId() : new byte[NcclLibrary.UniqueIdBytes];
        var sums = id.Select(b => IsRoot ? (double)b : 0).ToArray();
        bootstrap.AllReduceSum(sums);
        return nccl.InitRank(Size, sums.Select(v => (byte)v).ToArray(), Rank);
    }

    public override void Dispose()
    {
        if (comm != 0) nccl.Destroy(comm);
        comm = 0;
        bootstrap.Dispose();
    }
}

/// <summary>libnccl.so.2 through function pointers (NCCL 2.x ABI).</summary>
public sealed unsafe class NcclLibrary : INccl
{
    public const int UniqueIdBytes = 128;
    private const int NcclFloat = 7, NcclSum = 0;

    [StructLayout(LayoutKind.Sequential)]
    private struct UniqueIdStruct { public fixed byte Bytes[UniqueIdBytes]; }

    private readonly delegate* unmanaged<UniqueIdStruct*, int> getUniqueId;
    private readonly delegate* unmanaged<nint*, int, UniqueIdStruct, int, int> commInitRank;
    private readonly delegate* unmanaged<void*, void*, nuint, int, int, nint, nint, int> allReduce;
    private readonly delegate* unmanaged<int> groupStart, groupEnd;
    private readonly delegate* unmanaged<nint, int> commDestroy;
    private readonly delegate* unmanaged<int, byte*> errorString;

    private NcclLibrary(nint lib)
    {
        nint Get(string name) => NativeLibrary.TryGetExport(lib, name, out nint p) ? p
            : throw new InvalidOperationException($"--distributed nccl: libnccl has no {name}");
        getUniqueId = (delegate* unmanaged<UniqueIdStruct*, int>)Get("ncclGetUniqueId");
        commInitRank = (delegate* unmanaged<nint*, int, UniqueIdStruct, int, int>)Get("ncclCommInitRank");
        allReduce = (delegate* unmanaged<void*, void*, nuint, int, int, nint, nint, int>)Get("ncclAllReduce");
        groupStart = (delegate* unmanaged<int>)Get("ncclGroupStart");
        groupEnd = (delegate* unmanaged<int>)Get("ncclGroupEnd");
        commDestroy = (delegate* unmanaged<nint, int>)Get("ncclCommDestroy");
        errorString = (delegate* unmanaged<int, byte*>)Get("ncclGetErrorString");
    }

    public static NcclLibrary Load()
    {
        foreach (string name in (string[])["libnccl.so.2", "libnccl.so"])
            if (NativeLibrary.TryLoad(name, out nint lib)) return new NcclLibrary(lib);
        throw new InvalidOperationException("--distributed nccl: libnccl.so.2 not found (install NVIDIA's libnccl2, or use --distributed mpi)");
    }

    private void Check(int code, string call)
    {
        if (code != 0) throw new InvalidOperationException($"{call} failed: {Marshal.PtrToStringUTF8((nint)errorString(code))} (NCCL error {code})");
    }

    public byte[] UniqueId()
    {
        UniqueIdStruct id;
        Check(getUniqueId(&id), "ncclGetUniqueId");
        return new ReadOnlySpan<byte>(id.Bytes, UniqueIdBytes).ToArray();
    }

    public nint InitRank(int ranks, byte[] id, int rank)
    {
        UniqueIdStruct s;
        id.AsSpan(0, UniqueIdBytes).CopyTo(new Span<byte>(s.Bytes, UniqueIdBytes));
        nint comm;
        Check(commInitRank(&comm, ranks, s, rank), "ncclCommInitRank");
        return comm;
    }

    public void GroupStart() => Check(groupStart(), "ncclGroupStart");
    public void GroupEnd() => Check(groupEnd(), "ncclGroupEnd");

    public void AllReduceSum(nint comm, nint data, long count, nint stream) =>
        Check(allReduce((void*)data, (void*)data, (nuint)count, NcclFloat, NcclSum, comm, stream), "ncclAllReduce");

    public nint StreamOf(AcceleratorStream stream) => stream is CudaStream cuda ? cuda.StreamPtr
        : throw new InvalidOperationException($"--distributed nccl needs CUDA devices (this rank has {stream.Accelerator.AcceleratorType}); use --distributed mpi");

    public void Destroy(nint comm) => commDestroy(comm);
}
