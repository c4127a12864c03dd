// Fused log-softmax + cross-entropy over a vocabulary, as PyTorch's CrossEntropyLoss with
// ignore_index = −100 and reduction = mean over the rows that are not ignored.
//
// Forward never materialises probabilities: per row it finds max and log-Σ-exp (saved, [rows]),
// and the row loss lse − logit[label]. A fixed-order single-group pass then averages the row
// losses. Backward writes dlogits = (softmax − onehot)·dLoss/count directly, and may overwrite the
// logits in place (MLM logits are the largest activation BERT has).
// Conventions: loss is written as [mean, count] so backward knows the count without a host round
// trip; with no counted row the mean is 0 and the gradient is 0 (PyTorch would give NaN); a label
// outside [0, V) other than −100 makes that row's loss NaN, so the caller's NaN check reports it.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class CrossEntropyKernels
{
    public const int IgnoreIndex = -100;

    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>> rowLoss;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int>> mean;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>> backward;

    internal CrossEntropyKernels(KernelSet set)
    {
        this.set = set;
        bool tree = set.RowReduction == RowReduction.Tree;
        rowLoss = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>(RowLossKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, int>(RowLossKernel<WarpReduce>));
        mean = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(MeanKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(MeanKernel<WarpReduce>));
        backward = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(BackwardKernel));
    }

    /// <summary>
    /// logits: [rows, vocab]; labels: [rows] (−100 = ignored); lse: [rows] saved for backward;
    /// loss: [2] ← (mean loss over counted rows, number of counted rows).
    /// </summary>
    public void Forward(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss, int rows, int vocab)
    {
        CheckArgs(logits, labels, lse, loss, rows, vocab);
        var perRow = set.FloatScratch(2L * Math.Max(rows, 1)); // [rows] losses, then [rows] 0/1 counted
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.CrossEntropyForward(logits, labels, lse, loss, perRow, rows, vocab);
            return;
        }
        if (rows > 0) rowLoss.Value(set.Rows(rows), logits, labels, lse, perRow, rows, vocab);
        mean.Value(set.Rows(1), perRow, loss, rows);
    }

    /// <summary>
    /// dlogits = (softmax(logits) − onehot(label))·dLoss/count; ignored rows get 0.
    /// dlogits may alias logits. <paramref name="dLoss"/> is the upstream gradient of the mean loss.
    /// </summary>
    public void Backward(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss,
        ArrayView<float> dlogits, int rows, int vocab, float dLoss = 1f)
    {
        CheckArgs(logits, labels, lse, loss, rows, vocab);
        Check.Matrix("dlogits", dlogits, rows, vocab);
        long n = (long)rows * vocab;
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.CrossEntropyBackward(logits, labels, lse, loss, dlogits, rows, vocab, dLoss);
        }
        else if (n > 0) backward.Value(set.GridStride(n), logits, labels, lse, loss, dlogits, rows, vocab, dLoss);
    }

    private static void CheckArgs(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss, int rows, int vocab)
    {
        Check.Matrix("logits", logits, rows, vocab);
        Check.Vector("labels", labels, rows);
        Check.Vector("lse", lse, rows);
        Check.Vector("loss", loss, 2);
        if (vocab < 1) throw new ArgumentException($"vocabulary size must be positive, got {vocab}");
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RowLossKernel<TReduce>(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse,
        ArrayView<float> perRow, int rows, int vocab)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        int row = Grid.IdxX;
        long off = (long)row * vocab;
        int t = Group.IdxX, g = Group.DimX;
        int label = labels[row];
        float m = float.NegativeInfinity;
        for (int j = t; j < vocab; j += g)
            m = MathF.Max(m, logits[off + j]);
        m = reduce.Max(shared, m);
        float s = 0f;
        for (int j = t; j < vocab; j += g)
            s += MathF.Exp(logits[off + j] - m);
        s = reduce.Sum(shared, s);
        if (t != 0)
            return;
        float l = m + MathF.Log(s);
        lse[row] = l;
        if (label == IgnoreIndex)
        {
            perRow[row] = 0f;
            perRow[rows + row] = 0f;
        }
        else
        {
            perRow[row] = label >= 0 && label < vocab ? l - logits[off + label] : float.NaN;
            perRow[rows + row] = 1f;
        }
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MeanKernel<TReduce>(ArrayView<float> perRow, ArrayView<float> loss, int rows)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        int t = Group.IdxX, g = Group.DimX;
        float s = 0f, c = 0f;
        for (int i = t; i < rows; i += g)
        {
            s += perRow[i];
            c += perRow[rows + i];
        }
        s = reduce.Sum(shared, s);
        c = reduce.Sum(shared, c);
        if (t == 0)
        {
            loss[0] = c > 0f ? s / c : 0f;
            loss[1] = c;
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BackwardKernel(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> lse, ArrayView<float> loss,
        ArrayView<float> dlogits, int rows, int vocab, float dLoss)
    {
        float count = loss[1];
        float scale = count > 0f ? dLoss / count : 0f;
        long n = (long)rows * vocab;
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
        {
            int row = (int)(i / vocab), j = (int)(i % vocab);
            int label = labels[row];
            if (label == IgnoreIndex)
            {
                dlogits[i] = 0f;
                continue;
            }
            float p = MathF.Exp(logits[i] - lse[row]);
            dlogits[i] = (j == label ? p - 1f : p) * scale;
        }
    }
}
