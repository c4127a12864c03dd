// Activations fused with the preceding bias: y = act(x + bias), dx = dy · act'(x + bias), and
// dBias = Σ_rows dx. x is the Linear output before its bias, [rows, cols]; it is what backward needs.
//
// Each variant computes its value and its derivative in one method (IActivation.Apply), so forward
// and backward cannot drift apart (e.g. a tanh-GELU whose backward differentiates the erf one).
// Names follow HF's hidden_act: "gelu" → GeluErf, "gelu_new" / "gelu_pytorch_tanh" → GeluTanh, "relu".
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace IlgpuBert.Kernels;

public enum ActivationKind { GeluErf, GeluTanh, Relu, Tanh }

public interface IActivation
{
    /// <summary>act(x), with act'(x) in <paramref name="derivative"/>.</summary>
    float Apply(float x, out float derivative);
}

/// <summary>BERT's "gelu": x·Φ(x), Φ the standard normal CDF (erf form).</summary>
public readonly struct GeluErf : IActivation
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float x, out float derivative)
    {
        float cdf = KernelMath.NormalCdf(x);
        derivative = cdf + x * KernelMath.NormalPdf(x);
        return x * cdf;
    }
}

/// <summary>
/// "gelu_new" / "gelu_pytorch_tanh": ½x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³). Written as
/// x·σ(2u), since 1 + tanh(u) = 2σ(2u), which does not cancel for negative x.
/// </summary>
public readonly struct GeluTanh : IActivation
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float x, out float derivative)
    {
        const float c = 0.7978845608028654f; // √(2/π)
        float x2 = x * x;
        float u2 = 2f * c * x * (1f + 0.044715f * x2);
        float s = KernelMath.Sigmoid(u2), sNeg = KernelMath.Sigmoid(-u2); // σ(2u), 1 − σ(2u)
        derivative = s + x * s * sNeg * 2f * c * (1f + 3f * 0.044715f * x2);
        return x * s;
    }
}

public readonly struct Relu : IActivation
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float x, out float derivative)
    {
        derivative = x > 0f ? 1f : 0f;
        return x > 0f ? x : 0f;
    }
}

/// <summary>tanh, as BertPooler applies it; accurate on CUDA too (KernelMath.Tanh, not tanh.approx).</summary>
public readonly struct TanhActivation : IActivation
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float x, out float derivative)
    {
        float t = KernelMath.Tanh(x);
        derivative = 1f - t * t;
        return t;
    }
}

public sealed class ActivationKernels
{
    private readonly KernelSet set;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>>[] forward;
    private readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>>[] backward;

    internal ActivationKernels(KernelSet set)
    {
        this.set = set;
        forward =
        [
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(ForwardKernel<GeluErf>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(ForwardKernel<GeluTanh>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(ForwardKernel<Relu>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(ForwardKernel<TanhActivation>)),
        ];
        backward =
        [
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(BackwardKernel<GeluErf>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(BackwardKernel<GeluTanh>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(BackwardKernel<Relu>)),
            new(() => set.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, long>(BackwardKernel<TanhActivation>)),
        ];
    }

    /// <summary>Maps HF's hidden_act names; anything else is an error that names the supported ones.</summary>
    public static ActivationKind Parse(string hiddenAct) => hiddenAct switch
    {
        "gelu" => ActivationKind.GeluErf,
        "gelu_new" or "gelu_pytorch_tanh" => ActivationKind.GeluTanh,
        "relu" => ActivationKind.Relu,
        _ => throw new ArgumentException($"unsupported hidden_act \"{hiddenAct}\" (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)"),
    };

    /// <summary>y = act(x + bias); x, y: [rows, cols]; bias: [cols] or default for none. y may be x.</summary>
    public void Forward(ActivationKind kind, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y, int rows, int cols)
    {
        long n = Check.Matrix("x", x, rows, cols);
        Check.Matrix("y", y, rows, cols);
        bool hasBias = bias.IsValid && bias.Length > 0;
        if (hasBias) Check.Vector("bias", bias, cols);
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            switch (kind)
            {
                case ActivationKind.GeluErf: HostRows.ActivationForward<GeluErf>(x, bias, hasBias, y, rows, cols); break;
                case ActivationKind.GeluTanh: HostRows.ActivationForward<GeluTanh>(x, bias, hasBias, y, rows, cols); break;
                case ActivationKind.Relu: HostRows.ActivationForward<Relu>(x, bias, hasBias, y, rows, cols); break;
                default: HostRows.ActivationForward<TanhActivation>(x, bias, hasBias, y, rows, cols); break;
            }
        }
        else if (n > 0) forward[(int)kind].Value(set.GridStride(n), x, hasBias ? bias : x, y, cols, hasBias ? 1 : 0, n);
    }

    /// <summary>
    /// dx = dy · act'(x + bias) (overwrites dx; dx may be dy), and, when dBias is given,
    /// dBias (+)= Σ_rows dx.
    /// </summary>
    public void Backward(ActivationKind kind, ArrayView<float> x, ArrayView<float> bias, ArrayView<float> dy,
        ArrayView<float> dx, ArrayView<float> dBias, int rows, int cols, bool accumulateBias)
    {
        long n = Check.Matrix("x", x, rows, cols);
        Check.Matrix("dy", dy, rows, cols);
        Check.Matrix("dx", dx, rows, cols);
        bool hasBias = bias.IsValid && bias.Length > 0;
        if (hasBias) Check.Vector("bias", bias, cols);
        if (set.UseHostRows)
        {
            set.Accelerator.Synchronize();
            switch (kind)
            {
                case ActivationKind.GeluErf: HostRows.ActivationBackward<GeluErf>(x, bias, hasBias, dy, dx, rows, cols); break;
                case ActivationKind.GeluTanh: HostRows.ActivationBackward<GeluTanh>(x, bias, hasBias, dy, dx, rows, cols); break;
                case ActivationKind.Relu: HostRows.ActivationBackward<Relu>(x, bias, hasBias, dy, dx, rows, cols); break;
                default: HostRows.ActivationBackward<TanhActivation>(x, bias, hasBias, dy, dx, rows, cols); break;
            }
        }
        else if (n > 0) backward[(int)kind].Value(set.GridStride(n), x, hasBias ? bias : x, dy, dx, cols, hasBias ? 1 : 0, n);
        if (dBias.IsValid && dBias.Length > 0)
        {
            Check.Vector("dBias", dBias, cols);
            set.Bias.ColumnSums(dx, dBias, rows, cols, accumulateBias);
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ForwardKernel<TAct>(ArrayView<float> x, ArrayView<float> bias, ArrayView<float> y, int cols, int hasBias, long n)
        where TAct : struct, IActivation
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
        {
            float v = hasBias != 0 ? x[i] + bias[(int)(i % cols)] : x[i];
            y[i] = default(TAct).Apply(v, out _);
        }
    }

    [GpuGroup(KernelSet.GpuStrideGroup)]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BackwardKernel<TAct>(ArrayView<float> x, ArrayView<float> bias, ArrayView<float> dy, ArrayView<float> dx, int cols, int hasBias, long n)
        where TAct : struct, IActivation
    {
        long step = GridStride.Step;
        for (long i = GridStride.Start; i < n; i += step)
        {
            float v = hasBias != 0 ? x[i] + bias[(int)(i % cols)] : x[i];
            default(TAct).Apply(v, out float derivative);
            dx[i] = dy[i] * derivative;
        }
    }
}
