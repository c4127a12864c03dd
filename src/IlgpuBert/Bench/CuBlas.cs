// cuBLAS beside our GEMM, in the same run on the same CUDA device (tools/gpu/check.sh, IlgpuBert.Perf gpu).
// ILGPU.Algorithms' CuBlas looks only for libcublas.so.10/.11/.12 and has no strided-batched GEMM, and
// the GPU machines we are lent carry CUDA 13's libcublas.so.13 inside PyTorch's Python packages; so this
// binds the five v2 functions it needs itself, loading the newest libcublas it finds: ILGPU_BERT_CUBLAS
// (a file), then the loader's search path, then the nvidia/cublas/lib folders of Python installations.
// cuBLAS is column-major: row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. the same
// call with A and B (and M and N) swapped.
// Not measured here without a GPU: what runs on a CPU-only machine is the search and its message.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using IlgpuBert.Kernels;

namespace IlgpuBert.Bench;

public sealed unsafe class CuBlas : IDisposable
{
    public const string Variable = "ILGPU_BERT_CUBLAS";
    private static readonly string[] Names = ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"];

    private readonly nint library, handle;
    private readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, long, nint, int, long, float*, nint, int, long, int, int> sgemmStridedBatched;
    private readonly delegate* unmanaged<nint, int, int> setMathMode;
    private readonly delegate* unmanaged<nint, int> destroy;

    private CuBlas(nint library, string path, CudaAccelerator accelerator)
    {
        this.library = library;
        Path = path;
        nint Export(string name) => NativeLibrary.GetExport(library, name);
        var create = (delegate* unmanaged<nint*, int>)Export("cublasCreate_v2");
        var setStream = (delegate* unmanaged<nint, nint, int>)Export("cublasSetStream_v2");
        sgemmStridedBatched = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, long, nint, int, long, float*, nint, int, long, int, int>)Export("cublasSgemmStridedBatched");
        setMathMode = (delegate* unmanaged<nint, int, int>)Export("cublasSetMathMode");
        destroy = (delegate* unmanaged<nint, int>)Export("cublasDestroy_v2");
        accelerator.Bind();
        nint h;
        Check(create(&h), "cublasCreate_v2");
        handle = h;
        Check(setStream(handle, ((CudaStream)accelerator.DefaultStream).StreamPtr), "cublasSetStream_v2");
    }

    /// <summary>The library file loaded.</summary>
    public string Path { get; }

    /// <summary>cuBLAS on the accelerator, or null with why in <paramref name="why"/> (not CUDA, no library found).</summary>
    public static CuBlas? TryOpen(Accelerator accelerator, out string why)
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            why = $"cuBLAS needs a CUDA device, this is {accelerator.AcceleratorType}";
            return null;
        }
        foreach (string candidate in Candidates())
            if (NativeLibrary.TryLoad(candidate, out nint lib))
            {
                why = "";
                return new CuBlas(lib, candidate, cuda);
            }
        why = $"no libcublas found ({string.Join(", ", Names)}; set {Variable}=/path/to/libcublas.so.N)";
        return null;
    }

    private static IEnumerable<string> Candidates()
    {
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } file) yield return file;
        foreach (string name in Names) yield return name;
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        foreach (string root in new[] { "/usr/lib", "/usr/local/lib", System.IO.Path.Combine(home, ".local/lib"), "/opt/conda/lib" })
        {
            if (!Directory.Exists(root)) continue;
            foreach (string python in Directory.EnumerateDirectories(root, "python3*"))
                foreach (string packages in new[] { "dist-packages", "site-packages" })
                {
                    string dir = System.IO.Path.Combine(python, packages, "nvidia", "cublas", "lib");
                    foreach (string name in Names)
                        if (File.Exists(System.IO.Path.Combine(dir, name))) yield return System.IO.Path.Combine(dir, name);
                }
        }
    }

    /// <summary>
    /// Row-major C = α·op(A)·op(B) + β·C over strided batches, as GemmKernels.Forward takes it, with
    /// FP32 products (<paramref name="tf32"/> false: CUBLAS_PEDANTIC_MATH) or TF32 tensor cores
    /// (CUBLAS_TF32_TENSOR_OP_MATH).
    /// </summary>
    public void Gemm(Transpose ta, Transpose tb, int m, int n, int k, float alpha, ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
        float beta, ArrayView<float> c, int ldc, int batch, long strideA, long strideB, long strideC, bool tf32)
    {
        const int pedantic = 2, tf32TensorOp = 3;
        Check(setMathMode(handle, tf32 ? tf32TensorOp : pedantic), "cublasSetMathMode");
        int opA = ta == Transpose.T ? 1 : 0, opB = tb == Transpose.T ? 1 : 0; // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
        Check(sgemmStridedBatched(handle, opB, opA, n, m, k, &alpha, b.LoadEffectiveAddressAsPtr(), ldb, strideB, a.LoadEffectiveAddressAsPtr(), lda, strideA,
            &beta, c.LoadEffectiveAddressAsPtr(), ldc, strideC, batch), "cublasSgemmStridedBatched");
    }

    private static void Check(int status, string call)
    {
        if (status != 0) throw new InvalidOperationException($"{call} failed with cuBLAS status {status}");
    }

    public void Dispose()
    {
        destroy(handle);
        NativeLibrary.Free(library);
    }
}
