// Inverted dropout: y = x·keep/(1 − p), keep = [u ≥ p], u uniform from Philox keyed by
// (seed; element group, tensor id, step). The mask is a pure function of those, so backward
// regenerates it (dx = dy·keep/(1 − p), the same kernel) instead of storing it, and every
// accelerator draws the same bits. Each thread handles 4 consecutive elements from one Philox block.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

/// <summary>What identifies one dropout mask: the run's seed, the training step and the tensor.</summary>
public readonly record struct DropoutKey(ulong Seed, uint Step, uint TensorId);

public sealed class DropoutKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, long, float, ulong, uint, uint>> apply;

    internal DropoutKernels(KernelSet set)
    {
        this.set = set;
        apply = new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long, float, ulong, uint, uint>(ApplyKernel));
    }

    /// <summary>y = dropout(x) with drop probability p; y may alias x. p = 0 copies.</summary>
    public void Forward(ArrayView<float> x, ArrayView<float> y, long n, float p, DropoutKey key) => Apply(x, y, n, p, key);

    /// <summary>dx = dy masked and scaled exactly as the forward with the same key; dx may alias dy.</summary>
    public void Backward(ArrayView<float> dy, ArrayView<float> dx, long n, float p, DropoutKey key) => Apply(dy, dx, n, p, key);

    private void Apply(ArrayView<float> src, ArrayView<float> dst, long n, float p, DropoutKey key)
    {
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(nameof(p), $"dropout probability must be in [0, 1), got {p}");
        Check.Vector("input", src, n);
        Check.Vector("output", dst, n);
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            HostRows.Dropout(src, dst, n, p, key);
        }
        else if (n > 0) apply.Value(set.GridStride((n + 3) / 4), src, dst, n, p, key.Seed, key.Step, key.TensorId);
    }

    /// <summary>Whether element i survives: the definition both the kernel and host references use.</summary>
    public static bool Keeps(uint bits, float p) => Philox.Uniform(bits) >= p;

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ApplyKernel(ArrayView<float> src, ArrayView<float> dst, long n, float p, ulong seed, uint step, uint tensorId)
    {
        float scale = 1f / (1f - p);
        long groups = (n + 3) / 4;
        long stride = GridStride.Step;
        for (long gi = GridStride.Start; gi < groups; gi += stride)
        {
            Philox.Bits(seed, step, tensorId, gi, out uint r0, out uint r1, out uint r2, out uint r3);
            long i = gi * 4;
            dst[i] = Keeps(r0, p) ? src[i] * scale : 0f;
            if (i + 1 < n) dst[i + 1] = Keeps(r1, p) ? src[i + 1] * scale : 0f;
            if (i + 2 < n) dst[i + 2] = Keeps(r2, p) ? src[i + 2] * scale : 0f;
            if (i + 3 < n) dst[i + 3] = Keeps(r3, p) ? src[i + 3] * scale : 0f;
        }
    }
}
