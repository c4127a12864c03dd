// AdamW (Loshchilov & Hutter) as torch.optim.AdamW computes it, fused into one pass per tensor:
//   g ← g·clip;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   p ← p·(1 − lr·wd);  p ← p − (lr/(1−β1ᵗ))·m / (√v/√(1−β2ᵗ) + eps)
// and the global gradient L2 norm over all tensors with clipping as torch's clip_grad_norm_
// (clip = min(1, max_norm/(norm + 1e-6))). The norm stays on the device and the update reads it
// there, so a training step needs no host round trip. Sums run in a fixed order: 32 partial sums
// per tensor, then one group over all partials.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

/// <summary>Hyper-parameters of one AdamW step. Step counts from 1.</summary>
public readonly record struct AdamWStep(float LearningRate, float Beta1, float Beta2, float Eps, float WeightDecay, int Step, float MaxGradNorm)
{
    public static AdamWStep Bert(float lr, int step) => new(lr, 0.9f, 0.999f, 1e-6f, 0.01f, step, 1f);
}

public sealed class AdamWKernels
{
    public const int PartialsPerTensor = 32;

    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long, AdamWArgs>> update;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, long>> sumSquares;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int>> finishNorm;

    internal AdamWKernels(KernelSet set)
    {
        this.set = set;
        update = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long, AdamWArgs>(UpdateKernel));
        bool tree = set.RowReduction == RowReduction.Tree;
        sumSquares = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long>(SumSquaresKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long>(SumSquaresKernel<WarpReduce>));
        finishNorm = new(() => tree
            ? set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(FinishNormKernel<TreeReduce>)
            : set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(FinishNormKernel<WarpReduce>));
    }

    /// <summary>norm[0] ← √(Σ over all tensors of Σ g²).</summary>
    public void GlobalNorm(IReadOnlyList<ArrayView<float>> grads, ArrayView<float> norm)
    {
        Check.Vector("norm", norm, 1);
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.GlobalNorm(grads, norm);
            return;
        }
        var partials = set.FloatScratch((long)Math.Max(grads.Count, 1) * PartialsPerTensor);
        var rows = set.Rows(PartialsPerTensor);
        for (int i = 0; i < grads.Count; i++)
            sumSquares.Value(rows, grads[i], partials.SubView((long)i * PartialsPerTensor, PartialsPerTensor), grads[i].Length);
        finishNorm.Value(set.Rows(1), partials, norm, grads.Count * PartialsPerTensor);
    }

    /// <summary>
    /// One AdamW step on a tensor of n elements; m and v are its moments (start at 0). The
    /// gradient is scaled by the clip factor from norm[0] when MaxGradNorm &gt; 0; pass
    /// WeightDecay = 0 for biases and LayerNorm weights. The gradient itself is left unchanged.
    /// </summary>
    public void Update(ArrayView<float> param, ArrayView<float> grad, ArrayView<float> m, ArrayView<float> v,
        ArrayView<float> norm, long n, AdamWStep s)
    {
        if (s.Step < 1) throw new ArgumentOutOfRangeException(nameof(s), "AdamW steps count from 1");
        foreach (var (name, view) in new[] { ("param", param), ("grad", grad), ("m", m), ("v", v) })
            Check.Vector(name, view, n);
        if (s.MaxGradNorm > 0f) Check.Vector("norm", norm, 1);
        var args = new AdamWArgs
        {
            Lr = s.LearningRate, Beta1 = s.Beta1, Beta2 = s.Beta2, Eps = s.Eps, WeightDecay = s.WeightDecay,
            BiasCorrection1 = (float)(1 - Math.Pow(s.Beta1, s.Step)),
            SqrtBiasCorrection2 = (float)Math.Sqrt(1 - Math.Pow(s.Beta2, s.Step)),
            MaxNorm = s.MaxGradNorm,
        };
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            if (n > 0) HostRows.AdamWUpdate(param, grad, m, v, norm, n, args);
        }
        else if (n > 0) update.Value(set.GridStride(n), param, grad, m, v, s.MaxGradNorm > 0f ? norm : param, n, args);
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void UpdateKernel(ArrayView<float> param, ArrayView<float> grad, ArrayView<float> m, ArrayView<float> v,
        ArrayView<float> norm, long n, AdamWArgs a)
    {
        float clip = a.Clip(a.MaxNorm > 0f ? norm[0] : 0f);
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
        {
            param[i] = a.Step(param[i], grad[i] * clip, m[i], v[i], out float mi, out float vi);
            m[i] = mi;
            v[i] = vi;
        }
    }

    /// <summary>Group g of 32 sums squares of elements g·G + t, stepping by 32·G: fixed order.</summary>
    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void SumSquaresKernel<TReduce>(ArrayView<float> x, ArrayView<float> partial, long n)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        float s = 0f;
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
            s += x[i] * x[i];
        s = default(TReduce).Sum(shared, s);
        if (Group.IdxX == 0)
            partial[Grid.IdxX] = s;
    }

    [GpuGroup(KernelSet.GpuRowGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void FinishNormKernel<TReduce>(ArrayView<float> partial, ArrayView<float> norm, int count)
        where TReduce : struct, IGroupReduce
    {
        var shared = SharedMemory.Allocate<float>(GroupReduce.RowScratch);
        float s = 0f;
        int g = Group.DimX;
        for (int i = Group.IdxX; i < count; i += g)
            s += partial[i];
        s = default(TReduce).Sum(shared, s);
        if (Group.IdxX == 0)
            norm[0] = MathF.Sqrt(s);
    }
}

public struct AdamWArgs
{
    public float Lr, Beta1, Beta2, Eps, WeightDecay, BiasCorrection1, SqrtBiasCorrection2, MaxNorm;

    /// <summary>The gradient's scale from the global norm, as clip_grad_norm_ (1 when MaxNorm is 0: no clipping).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Clip(float norm) => MaxNorm > 0f ? MathF.Min(1f, MaxNorm / (norm + 1e-6f)) : 1f;

    /// <summary>One element's update (the kernel and the CPU host path share it): the new parameter, and the new moments.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Step(float param, float g, float m, float v, out float mNew, out float vNew)
    {
        mNew = Beta1 * m + (1f - Beta1) * g;
        vNew = Beta2 * v + (1f - Beta2) * g * g;
        return param * (1f - Lr * WeightDecay) - Lr / BiasCorrection1 * mNew / (MathF.Sqrt(vNew) / SqrtBiasCorrection2 + Eps);
    }
}
