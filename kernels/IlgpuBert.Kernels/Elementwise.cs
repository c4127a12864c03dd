// Small element-wise helpers the autograd layer needs: y += α·x (gradient accumulation when an
// input feeds several ops), y = 0, and copying a block of columns between two row-major matrices
// (concatenating layers' features, slicing QA start/end logits; backward is the same copy reversed),
// and scaling blocks of columns by one factor each (head masks ξ_h on the attention context, Michel
// et al. 2019; with blocks of one column, an element-wise mask): forward y = x·ξ[block], backward
// dx = dy·ξ[block] (the same kernel) and dξ[block] = Σ dy·x over the block's columns of every row,
// one thread per block in a fixed order (blocks are few; this runs for importance scores only).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class ElementwiseKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, float, long>> axpy;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ColumnBlock>> copyColumns;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, BlockScale>> scaleBlocks;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, BlockScale>> blockDot;

    internal ElementwiseKernels(KernelSet set)
    {
        this.set = set;
        axpy = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, float, long>(AxpyKernel));
        copyColumns = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ColumnBlock>(CopyColumnsKernel));
        scaleBlocks = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, BlockScale>(ScaleBlocksKernel));
        blockDot = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, BlockScale>(BlockDotKernel));
    }

    /// <summary>
    /// y[r, c] = x[r, c]·scale[c / blockCols] for x, y [rows, cols] (y may be x); scale has
    /// cols / blockCols entries.
    /// </summary>
    public void ScaleBlocks(ArrayView<float> x, ArrayView<float> scale, ArrayView<float> y, int rows, int cols, int blockCols)
    {
        var b = Blocks(rows, cols, blockCols, x, scale);
        Check.Vector("y", y, b.Count);
        if (b.Count > 0) scaleBlocks.Value(set.GridStride(b.Count), x, scale, y, b);
    }

    /// <summary>dScale[h] (+)= Σ_r Σ_{c in block h} dy[r, c]·x[r, c].</summary>
    public void BlockDot(ArrayView<float> dy, ArrayView<float> x, ArrayView<float> dScale, int rows, int cols, int blockCols, bool accumulate)
    {
        var b = Blocks(rows, cols, blockCols, x, dScale);
        Check.Vector("dy", dy, b.Count);
        b.Accumulate = accumulate ? 1 : 0;
        blockDot.Value(set.GridStride(cols / blockCols), dy, x, dScale, b);
    }

    private static BlockScale Blocks(int rows, int cols, int blockCols, ArrayView<float> x, ArrayView<float> scale)
    {
        if (rows < 0 || blockCols < 1 || cols % blockCols != 0) throw new ArgumentException($"{cols} columns do not split into blocks of {blockCols}");
        Check.Vector("x", x, (long)rows * cols);
        Check.Vector("scale", scale, cols / blockCols);
        return new BlockScale { Rows = rows, Cols = cols, BlockCols = blockCols, Count = (long)rows * cols };
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
        if (n > 0) copyColumns.Value(set.GridStride(n), src, dst, new ColumnBlock
        {
            SrcCols = srcCols, SrcOffset = srcOffset, DstCols = dstCols, DstOffset = dstOffset, Cols = cols, Count = n, Accumulate = accumulate ? 1 : 0,
        });
    }

    /// <summary>y += α·x over n elements.</summary>
    public void Axpy(float alpha, ArrayView<float> x, ArrayView<float> y, long n)
    {
        Check.Vector("x", x, n);
        Check.Vector("y", y, n);
        if (n > 0) axpy.Value(set.GridStride(n), x, y, alpha, n);
    }

    /// <summary>y = 0 over its whole length.</summary>
    public void Zero(ArrayView<float> y)
    {
        if (y.IsValid && y.Length > 0) y.MemSetToZero(set.Accelerator.DefaultStream);
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
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

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ScaleBlocksKernel(ArrayView<float> x, ArrayView<float> scale, ArrayView<float> y, BlockScale b)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < b.Count; i += step)
            y[i] = x[i] * scale[(int)(i % b.Cols) / b.BlockCols];
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BlockDotKernel(ArrayView<float> dy, ArrayView<float> x, ArrayView<float> dScale, BlockScale b)
    {
        long step = GridStride.Step;
        int blocks = b.Cols / b.BlockCols;
        for (long h = GridStride.Start; h < blocks; h += step)
        {
            float sum = 0f;
            for (int r = 0; r < b.Rows; r++)
            {
                long o = (long)r * b.Cols + h * b.BlockCols;
                for (int c = 0; c < b.BlockCols; c++) sum += dy[o + c] * x[o + c];
            }
            dScale[h] = b.Accumulate != 0 ? dScale[h] + sum : sum;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
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

/// <summary>Shape of <see cref="ElementwiseKernels.ScaleBlocks"/> (a kernel argument).</summary>
public struct BlockScale
{
    public int Rows, Cols, BlockCols, Accumulate;
    public long Count;
}
