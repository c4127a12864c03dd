// LayerNorm fused with the residual add: y = LN(x + r)·γ + β over the last dimension (BERT's
// "Add & Norm"; HF BertSelfOutput/BertOutput: LayerNorm(dropout(h) + input_tensor)).
//
// Forward saves per-row mean and 1/σ (σ = √(var + eps), biased variance as PyTorch) so backward
// need not reduce twice. Backward recomputes x̂ = (x + r − mean)/σ from x and r (which autograd
// keeps anyway) and gives dx (= dr, the caller routes it to both inputs), dγ and dβ. Variance is
// two-pass (mean first), not E[x²] − E[x]², which cancels for rows with a large mean; the mean
// itself is summed shifted by the row's first element, so a row around 1000 sums O(1) terms.
// dγ and dβ are column sums in Bias' fixed-order chunks: deterministic, no atomics.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class LayerNormKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>> forward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>> backward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>> paramPartials;

    internal LayerNormKernels(KernelSet set)
    {
        this.set = set;
        bool tree = set.RowReduction == RowReduction.Tree;
        forward = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(ForwardKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(ForwardKernel<WarpReduce>));
        backward = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(BackwardKernel<WarpReduce>));
        paramPartials = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int>(ParamPartialsKernel));
    }

    /// <summary>
    /// y = LN(x + r)·γ + β. x, r, y: [rows, cols] (r may be default: no residual; y may alias x);
    /// γ, β: [cols]; mean, rstd: [rows], saved for backward.
    /// </summary>
    public void Forward(ArrayView<float> x, ArrayView<float> r, ArrayView<float> gamma, ArrayView<float> beta,
        ArrayView<float> y, ArrayView<float> mean, ArrayView<float> rstd, int rows, int cols, float eps)
    {
        bool hasR = CheckArgs(x, r, gamma, rows, cols);
        Check.Vector("beta", beta, cols);
        Check.Matrix("y", y, rows, cols);
        Check.Vector("mean", mean, rows);
        Check.Vector("rstd", rstd, rows);
        if (!(eps > 0f)) throw new ArgumentException($"layer_norm_eps must be positive, got {eps}");
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.LayerNormForward(x, r, hasR, gamma, beta, y, mean, rstd, rows, cols, eps);
            return;
        }
        if (rows > 0) forward.Value(set.Rows(rows), x, hasR ? r : x, gamma, beta, y, mean, rstd, cols, hasR ? 1 : 0, eps);
    }

    /// <summary>
    /// dx = ∂L/∂(x + r) (overwritten; equals dr); dγ, dβ (+)= their column sums (either may be default).
    /// </summary>
    public void Backward(ArrayView<float> x, ArrayView<float> r, ArrayView<float> gamma, ArrayView<float> mean,
        ArrayView<float> rstd, ArrayView<float> dy, ArrayView<float> dx, ArrayView<float> dGamma, ArrayView<float> dBeta,
        int rows, int cols, bool accumulateParams)
    {
        bool hasR = CheckArgs(x, r, gamma, rows, cols);
        Check.Vector("mean", mean, rows);
        Check.Vector("rstd", rstd, rows);
        Check.Matrix("dy", dy, rows, cols);
        Check.Matrix("dx", dx, rows, cols);
        var rr = hasR ? r : x;
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.LayerNormBackward(x, r, hasR, gamma, mean, rstd, dy, dx, rows, cols);
        }
        else if (rows > 0) backward.Value(set.Rows(rows), x, rr, gamma, mean, rstd, dy, dx, cols, hasR ? 1 : 0);
        bool wantGamma = dGamma.IsValid && dGamma.Length > 0, wantBeta = dBeta.IsValid && dBeta.Length > 0;
        if (!wantGamma && !wantBeta) return;
        if (wantGamma) Check.Vector("dGamma", dGamma, cols);
        if (wantBeta) Check.Vector("dBeta", dBeta, cols);
        int chunks = (rows + BiasKernels.RowsPerChunk - 1) / BiasKernels.RowsPerChunk;
        long plane = (long)Math.Max(chunks, 1) * cols;
        var scratch = set.FloatScratch(2 * plane);
        if (chunks > 0 && set.UseHostRows)
            HostRows.LayerNormParamPartials(x, r, hasR, mean, rstd, dy, scratch, rows, cols);
        else if (chunks > 0)
            paramPartials.Value(set.GridStride((long)chunks * cols), x, rr, mean, rstd, dy, scratch, rows, cols, hasR ? 1 : 0);
        if (wantGamma) set.Bias.ReduceChunks(scratch.SubView(0, plane), dGamma, chunks, cols, accumulateParams);
        if (wantBeta) set.Bias.ReduceChunks(scratch.SubView(plane, plane), dBeta, chunks, cols, accumulateParams);
    }

    private static bool CheckArgs(ArrayView<float> x, ArrayView<float> r, ArrayView<float> gamma, int rows, int cols)
    {
        Check.Matrix("x", x, rows, cols);
        bool hasR = r.IsValid && r.Length > 0;
        if (hasR) Check.Matrix("residual", r, rows, cols);
        Check.Vector("gamma", gamma, cols);
        return hasR;
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel<TReduce>(ArrayView<float> x, ArrayView<float> r, ArrayView<float> gamma, ArrayView<float> beta,
        ArrayView<float> y, ArrayView<float> mean, ArrayView<float> rstd, int cols, int hasR, float eps)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        long off = (long)Grid.IdxX * cols;
        int t = Group.IdxX, g = Group.DimX;
        float shift = hasR != 0 ? x[off] + r[off] : x[off];
        float s = 0f;
        for (int j = t; j < cols; j += g)
            s += (hasR != 0 ? x[off + j] + r[off + j] : x[off + j]) - shift;
        float mu = shift + reduce.Sum(shared, s) / cols;
        float q = 0f;
        for (int j = t; j < cols; j += g)
        {
            float d = (hasR != 0 ? x[off + j] + r[off + j] : x[off + j]) - mu;
            q += d * d;
        }
        float rs = 1f / MathF.Sqrt(reduce.Sum(shared, q) / cols + eps);
        for (int j = t; j < cols; j += g)
        {
            float v = hasR != 0 ? x[off + j] + r[off + j] : x[off + j];
            y[off + j] = (v - mu) * rs * gamma[j] + beta[j];
        }
        if (t == 0)
        {
            mean[Grid.IdxX] = mu;
            rstd[Grid.IdxX] = rs;
        }
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BackwardKernel<TReduce>(ArrayView<float> x, ArrayView<float> r, ArrayView<float> gamma, ArrayView<float> mean,
        ArrayView<float> rstd, ArrayView<float> dy, ArrayView<float> dx, int cols, int hasR)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        var reduce = default(TReduce);
        int row = Grid.IdxX;
        long off = (long)row * cols;
        int t = Group.IdxX, g = Group.DimX;
        float mu = mean[row], rs = rstd[row];
        float sumG = 0f, sumGX = 0f;
        for (int j = t; j < cols; j += g)
        {
            float xhat = ((hasR != 0 ? x[off + j] + r[off + j] : x[off + j]) - mu) * rs;
            float gj = dy[off + j] * gamma[j];
            sumG += gj;
            sumGX += gj * xhat;
        }
        float meanG = reduce.Sum(shared, sumG) / cols;
        float meanGX = reduce.Sum(shared, sumGX) / cols;
        for (int j = t; j < cols; j += g)
        {
            float xhat = ((hasR != 0 ? x[off + j] + r[off + j] : x[off + j]) - mu) * rs;
            dx[off + j] = rs * (dy[off + j] * gamma[j] - meanG - xhat * meanGX);
        }
    }

    /// <summary>Per 32-row chunk: Σ dy·x̂ into plane 0 and Σ dy into plane 1 of partial.</summary>
    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ParamPartialsKernel(ArrayView<float> x, ArrayView<float> r, ArrayView<float> mean, ArrayView<float> rstd,
        ArrayView<float> dy, ArrayView<float> partial, int rows, int cols, int hasR)
    {
        int chunks = (rows + BiasKernels.RowsPerChunk - 1) / BiasKernels.RowsPerChunk;
        long plane = (long)chunks * cols;
        long step = GridStride.Step;
        for (long e = GridStride.Start; e < plane; e += step)
        {
            int chunk = (int)(e / cols), j = (int)(e % cols);
            int end = Math.Min(rows, (chunk + 1) * BiasKernels.RowsPerChunk);
            float sg = 0f, sb = 0f;
            for (int row = chunk * BiasKernels.RowsPerChunk; row < end; row++)
            {
                long i = (long)row * cols + j;
                float xhat = ((hasR != 0 ? x[i] + r[i] : x[i]) - mean[row]) * rstd[row];
                sg += dy[i] * xhat;
                sb += dy[i];
            }
            partial[e] = sg;
            partial[plane + e] = sb;
        }
    }
}
