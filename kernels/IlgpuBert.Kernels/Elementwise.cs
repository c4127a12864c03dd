// Small element-wise helpers the autograd layer needs: y += α·x (gradient accumulation when an
// input feeds several ops), y = 0, and copying a block of columns between two row-major matrices
// (concatenating layers' features, slicing QA start/end logits; backward is the same copy reversed).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class ElementwiseKernels
{
    private readonly KernelSet set;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, float, long> axpy;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, ColumnBlock> copyColumns;

    internal ElementwiseKernels(KernelSet set)
    {
        this.set = set;
        axpy = set.Accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, float, long>(AxpyKernel);
        copyColumns = set.Accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ColumnBlock>(CopyColumnsKernel);
    }

    /// <summary>
    /// dst[r, dstOffset + c] (+)= src[r, srcOffset + c] for r &lt; rows, c &lt; cols; src is [rows, srcCols]
    /// and dst [rows, dstCols], row-major. With <paramref name="accumulate"/> the block is added.
    /// </summary>
    public void CopyColumns(ArrayView<float> src, int srcCols, int srcOffset, ArrayView<float> dst, int dstCols, int dstOffset,
        int rows, int cols, bool accumulate = false)
    {
        if (srcOffset < 0 || cols < 0 || srcOffset + cols > srcCols) throw new ArgumentException($"columns [{srcOffset}, {srcOffset + cols}) outside a {srcCols}-column source");
        if (dstOffset < 0 || dstOffset + cols > dstCols) throw new ArgumentException($"columns [{dstOffset}, {dstOffset + cols}) outside a {dstCols}-column destination");
        Check.Vector("src", src, (long)rows * srcCols);
        Check.Vector("dst", dst, (long)rows * dstCols);
        long n = (long)rows * cols;
        if (n > 0) copyColumns(set.GridStride(n), src, dst, new ColumnBlock
        {
            SrcCols = srcCols, SrcOffset = srcOffset, DstCols = dstCols, DstOffset = dstOffset, Cols = cols, Count = n, Accumulate = accumulate ? 1 : 0,
        });
    }

    /// <summary>y += α·x over n elements.</summary>
    public void Axpy(float alpha, ArrayView<float> x, ArrayView<float> y, long n)
    {
        Check.Vector("x", x, n);
        Check.Vector("y", y, n);
        if (n > 0) axpy(set.GridStride(n), x, y, alpha, n);
    }

    /// <summary>y = 0 over its whole length.</summary>
    public void Zero(ArrayView<float> y)
    {
        if (y.IsValid && y.Length > 0) y.MemSetToZero(set.Accelerator.DefaultStream);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void CopyColumnsKernel(ArrayView<float> src, ArrayView<float> dst, ColumnBlock b)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < b.Count; i += step)
        {
            long r = i / b.Cols, c = i - r * b.Cols;
            long to = r * b.DstCols + b.DstOffset + c;
            float v = src[r * b.SrcCols + b.SrcOffset + c];
            dst[to] = b.Accumulate != 0 ? dst[to] + v : v;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AxpyKernel(ArrayView<float> x, ArrayView<float> y, float alpha, long n)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
            y[i] += alpha * x[i];
    }
}

/// <summary>Where <see cref="ElementwiseKernels.CopyColumns"/> reads and writes (a kernel argument).</summary>
public struct ColumnBlock
{
    public int SrcCols, SrcOffset, DstCols, DstOffset, Cols, Accumulate;
    public long Count;
}
