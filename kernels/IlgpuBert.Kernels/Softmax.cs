// Softmax over the last dimension: y = exp(x − max) / Σ exp(x − max), and its backward
// dx = y ⊙ (dy − Σ dy ⊙ y). One group per row; the max is subtracted so exp never overflows.
// A row of −∞ (everything masked) gives 0/0 in exact arithmetic; here it gives zeros, never NaN.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class SoftmaxKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int>> forward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int>> backward;

    internal SoftmaxKernels(KernelSet set)
    {
        this.set = set;
        bool tree = set.RowReduction == RowReduction.Tree;
        forward = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(ForwardKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(ForwardKernel<WarpReduce>));
        backward = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(BackwardKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int>(BackwardKernel<WarpReduce>));
    }

    /// <summary>y = softmax(x) row by row; x, y: [rows, cols]; y may alias x.</summary>
    public void Forward(ArrayView<float> x, ArrayView<float> y, int rows, int cols)
    {
        Check.Matrix("x", x, rows, cols);
        Check.Matrix("y", y, rows, cols);
        if (rows > 0 && cols > 0) forward.Value(set.Rows(rows), x, y, cols);
    }

    /// <summary>dx = y ⊙ (dy − Σ_j dy ⊙ y); all [rows, cols]; dx may alias dy.</summary>
    public void Backward(ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx, int rows, int cols)
    {
        Check.Matrix("y", y, rows, cols);
        Check.Matrix("dy", dy, rows, cols);
        Check.Matrix("dx", dx, rows, cols);
        if (rows > 0 && cols > 0) backward.Value(set.Rows(rows), y, dy, dx, cols);
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel<TReduce>(ArrayView<float> x, ArrayView<float> y, int cols)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        long off = (long)Grid.IdxX * cols;
        int t = Group.IdxX, g = Group.DimX;
        float m = float.NegativeInfinity;
        for (int j = t; j < cols; j += g)
            m = MathF.Max(m, x[off + j]);
        m = reduce.Max(shared, m);
        float s = 0f;
        if (m != float.NegativeInfinity)
        {
            for (int j = t; j < cols; j += g)
                s += MathF.Exp(x[off + j] - m);
        }
        s = reduce.Sum(shared, s);
        float inv = s > 0f ? 1f / s : 0f;
        for (int j = t; j < cols; j += g)
            y[off + j] = m == float.NegativeInfinity ? 0f : MathF.Exp(x[off + j] - m) * inv;
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BackwardKernel<TReduce>(ArrayView<float> y, ArrayView<float> dy, ArrayView<float> dx, int cols)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        long off = (long)Grid.IdxX * cols;
        int t = Group.IdxX, g = Group.DimX;
        float dot = 0f;
        for (int j = t; j < cols; j += g)
            dot += dy[off + j] * y[off + j];
        dot = reduce.Sum(shared, dot);
        for (int j = t; j < cols; j += g)
            dx[off + j] = y[off + j] * (dy[off + j] - dot);
    }
}
