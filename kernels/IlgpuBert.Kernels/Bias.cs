// Bias add, y[r, j] = x[r, j] + bias[j], and its gradient dBias[j] = Σ_r dy[r, j].
//
// The forward is usually fused (GEMM epilogue, Activation); this stand-alone pair serves the rest.
// Column sums run in two fixed-order stages (rows in chunks of 32, then the chunks in order), with
// no atomics, so the result is deterministic and a NaN cannot hang anything (ILGPU-NOTES.md).
// The chunking does not depend on the accelerator, so every device adds in the same order.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class BiasKernels
{
    public const int RowsPerChunk = 32;

    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, long>> forward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int>> partials;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int>> reduce;

    internal BiasKernels(KernelSet set)
    {
        this.set = set;
        forward = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, long>(ForwardKernel));
        partials = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int>(ChunkSumsKernel));
        reduce = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int>(ReduceChunksKernel));
    }

    /// <summary>y = x + bias broadcast over rows; x: [rows, cols], bias: [cols]. y may be x.</summary>
    public void Forward(ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y, int rows, int cols)
    {
        long n = Check.Matrix("x", x, rows, cols);
        Check.Matrix("y", y, rows, cols);
        Check.Vector("bias", bias, cols);
        if (n > 0) forward.Value(set.GridStride(n), x, bias, y, cols, n);
    }

    /// <summary>dBias (+)= Σ over rows of dy; dy: [rows, cols].</summary>
    public void Backward(ArrayView<float> dy, ArrayView<float> dBias, int rows, int cols, bool accumulate)
    {
        Check.Matrix("dy", dy, rows, cols);
        Check.Vector("dBias", dBias, cols);
        ColumnSums(dy, dBias, rows, cols, accumulate);
    }

    /// <summary>out[j] (+)= Σ_r x[r, j] in a fixed order.</summary>
    internal void ColumnSums(ArrayView<float> x, ArrayView<float> result, int rows, int cols, bool accumulate)
    {
        if (cols == 0) return;
        int chunks = (rows + RowsPerChunk - 1) / RowsPerChunk;
        var scratch = set.FloatScratch((long)Math.Max(chunks, 1) * cols);
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.ChunkSums(x, scratch, rows, cols);
            HostRows.ReduceChunks(scratch, result, chunks, cols, accumulate);
            return;
        }
        if (chunks > 0)
            partials.Value(set.GridStride((long)chunks * cols), x, scratch, rows, cols);
        ReduceChunks(scratch, result, chunks, cols, accumulate);
    }

    /// <summary>out[j] (+)= Σ_c partials[c, j], c in order.</summary>
    internal void ReduceChunks(ArrayView<float> chunkSums, ArrayView<float> result, int chunks, int cols, bool accumulate)
    {
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.ReduceChunks(chunkSums, result, chunks, cols, accumulate);
        }
        else
            reduce.Value(set.GridStride(cols), chunkSums, result, chunks, cols, accumulate ? 1 : 0);
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel(ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y, int cols, long n)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
            y[i] = x[i] + bias[(int)(i % cols)];
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ChunkSumsKernel(ArrayView<float> x, ArrayView<float> partial, int rows, int cols)
    {
        int chunks = (rows + RowsPerChunk - 1) / RowsPerChunk;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < (long)chunks * cols; e += step)
        {
            int chunk = (int)(e / cols), j = (int)(e % cols);
            int end = Math.Min(rows, (chunk + 1) * RowsPerChunk);
            float s = 0f;
            for (int r = chunk * RowsPerChunk; r < end; r++)
                s += x[(long)r * cols + j];
            partial[e] = s;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ReduceChunksKernel(ArrayView<float> partial, ArrayView<float> result, int chunks, int cols, int accumulate)
    {
        long step = GridStride.Step;
        for (long j = GridStride.Start; j < cols; j += step)
        {
            float s = 0f;
            for (int c = 0; c < chunks; c++)
                s += partial[(long)c * cols + j];
            result[j] = accumulate != 0 ? result[j] + s : s;
        }
    }
}

/// <summary>Argument checks shared by the launchers: a wrong length is a clear error, never a wild write.</summary>
internal static class Check
{
    public static long Matrix<T>(string name, ArrayView<T> view, int rows, int cols) where T : unmanaged
    {
        if (rows < 0 || cols < 0)
            throw new ArgumentException($"{name}: negative shape [{rows}, {cols}]");
        long n = (long)rows * cols;
        if (n > 0 && (!view.IsValid || view.Length < n))
            throw new ArgumentException($"{name} has {(view.IsValid ? view.Length : 0)} elements, needs [{rows}, {cols}] = {n}");
        return n;
    }

    public static void Vector<T>(string name, ArrayView<T> view, long length) where T : unmanaged
    {
        if (length > 0 && (!view.IsValid || view.Length < length))
            throw new ArgumentException($"{name} has {(view.IsValid ? view.Length : 0)} elements, needs {length}");
    }
}
