// The few MPI calls data-parallel training needs, bound at run time to the Open MPI library that
// mpirun provides (libmpi.so.40, Open MPI 3 to 5; Debian's openmpi-bin). In Open MPI's ABI a
// communicator, datatype or operation handle is the address of an object the library exports
// (MPI_COMM_WORLD is &ompi_mpi_comm_world), so the handles are looked up by name, not compiled in.
// The MPICH family (MPICH, Intel MPI, MVAPICH: libmpi.so.12, 32-bit constant handles) is refused
// with a clear message rather than called with the wrong ABI.
using System.Runtime.InteropServices;

namespace IlgpuBert.Distributed;

internal sealed unsafe class MpiLibrary
{
    public const string LibraryVariable = "ILGPU_BERT_MPI_LIBRARY";
    private const int ThreadFunneled = 1; // every MPI call is made by the thread that initialised MPI
    private const int RtldNow = 2, RtldGlobal = 0x100;

    public readonly nint CommWorld, Double, Float, Sum, InPlace = 1; // MPI_IN_PLACE is (void*)1 in Open MPI

    private readonly delegate* unmanaged<int*, byte***, int, int*, int> initThread;
    private readonly delegate* unmanaged<int*, int> initialized, finalized;
    private readonly delegate* unmanaged<int> finalize;
    private readonly delegate* unmanaged<nint, int*, int> commRank, commSize;
    private readonly delegate* unmanaged<void*, void*, int, nint, nint, nint, int> allreduce;
    private readonly delegate* unmanaged<void*, int, nint, int, nint, int> bcast;
    private readonly delegate* unmanaged<nint, int, int> abort;

    private MpiLibrary(nint lib)
    {
        nint Get(string name) => NativeLibrary.TryGetExport(lib, name, out nint p) ? p
            : throw new InvalidOperationException($"--distributed mpi: the MPI library has no {name}");
        CommWorld = Get("ompi_mpi_comm_world");
        Double = Get("ompi_mpi_double");
        Float = Get("ompi_mpi_float");
        Sum = Get("ompi_mpi_op_sum");
        initThread = (delegate* unmanaged<int*, byte***, int, int*, int>)Get("MPI_Init_thread");
        initialized = (delegate* unmanaged<int*, int>)Get("MPI_Initialized");
        finalized = (delegate* unmanaged<int*, int>)Get("MPI_Finalized");
        finalize = (delegate* unmanaged<int>)Get("MPI_Finalize");
        commRank = (delegate* unmanaged<nint, int*, int>)Get("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Get("MPI_Comm_size");
        allreduce = (delegate* unmanaged<void*, void*, int, nint, nint, nint, int>)Get("MPI_Allreduce");
        bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Get("MPI_Bcast");
        abort = (delegate* unmanaged<nint, int, int>)Get("MPI_Abort");
    }

    [DllImport("libc", EntryPoint = "dlopen")]
    private static extern nint DlOpen(string file, int flags);

    /// <summary>Loads Open MPI (or the library ILGPU_BERT_MPI_LIBRARY names).</summary>
    public static MpiLibrary Load()
    {
        string? named = Environment.GetEnvironmentVariable(LibraryVariable);
        string[] candidates = named is { Length: > 0 } ? [named] : ["libmpi.so.40", "libmpi.so"];
        foreach (string name in candidates)
        {
            if (!NativeLibrary.TryLoad(name, out nint lib)) continue;
            if (!NativeLibrary.TryGetExport(lib, "ompi_mpi_comm_world", out _))
                throw new InvalidOperationException($"--distributed mpi: {name} is not Open MPI (an MPICH-family library?); only Open MPI's ABI is supported: install openmpi-bin or set {LibraryVariable}");
            // Open MPI opens its components with dlopen and they resolve MPI's symbols globally:
            // load it again with RTLD_GLOBAL (.NET loads libraries RTLD_LOCAL).
            if (OperatingSystem.IsLinux()) DlOpen(name, RtldNow | RtldGlobal);
            return new MpiLibrary(lib);
        }
        throw new InvalidOperationException($"--distributed mpi: no MPI library found ({string.Join(", ", candidates)}); install Open MPI (Debian: apt-get install openmpi-bin) and launch with mpirun");
    }

    private static void Check(int code, string call)
    {
        if (code != 0) throw new InvalidOperationException($"{call} failed with MPI error {code}");
    }

    public void Init()
    {
        int flag;
        Check(initialized(&flag), "MPI_Initialized");
        if (flag != 0) return;
        int provided;
        Check(initThread(null, null, ThreadFunneled, &provided), "MPI_Init_thread");
    }

    public (int Rank, int Size) World()
    {
        int rank, size;
        Check(commRank(CommWorld, &rank), "MPI_Comm_rank");
        Check(commSize(CommWorld, &size), "MPI_Comm_size");
        return (rank, size);
    }

    public void AllReduceSum(void* data, int count, nint type) => Check(allreduce((void*)InPlace, data, count, type, Sum, CommWorld), "MPI_Allreduce");

    public void Broadcast(void* data, int count, nint type, int root) => Check(bcast(data, count, type, root, CommWorld), "MPI_Bcast");

    public void Abort(int code) => abort(CommWorld, code);

    public void Shutdown()
    {
        int done;
        if (finalized(&done) == 0 && done == 0) finalize();
    }
}
