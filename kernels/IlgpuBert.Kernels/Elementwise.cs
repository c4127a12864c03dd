// Small element-wise helpers the autograd layer needs: y += α·x (gradient accumulation when an
// input feeds several ops) and y = 0.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public sealed class ElementwiseKernels
{
    private readonly KernelSet set;
    private readonly Action<KernelConfig, ArrayView<float>, ArrayView<float>, float, long> axpy;

    internal ElementwiseKernels(KernelSet set)
    {
        this.set = set;
        axpy = set.Accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, float, long>(AxpyKernel);
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
    internal static void AxpyKernel(ArrayView<float> x, ArrayView<float> y, float alpha, long n)
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
            y[i] += alpha * x[i];
    }
}
