// bfloat16: the top 16 bits of an IEEE float (sign, 8-bit exponent, 7-bit mantissa), what AVX512_BF16 and GPU
// tensor cores multiply. Conversions round to nearest, ties to even, as every consumer of them (checkpoints,
// the bf16 GEMM) must agree bit for bit.
using System.Runtime.Intrinsics;

namespace IlgpuBert.Kernels;

public static class BFloat16
{
    /// <summary>bfloat16's bits of a float: nearest, ties to even (the carry may reach the exponent, and ∞); NaN stays a quiet NaN of its sign.</summary>
    public static ushort Round(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x0040);
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    /// <summary>
    /// 16 floats' bits rounded as <see cref="Round"/> rounds them, each bfloat16 left in its lane's upper half
    /// (the lower half is rounding debris). NaN is not handled: callers keep NaN inputs out.
    /// </summary>
    public static Vector512<uint> RoundUpperHalves(Vector512<float> x)
    {
        var bits = x.AsUInt32();
        return bits + Vector512.Create(0x7FFFu) + ((bits >> 16) & Vector512<uint>.One);
    }

    /// <summary>The float a bfloat16 stands for (exact).</summary>
    public static float ToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>A float rounded to the nearest bfloat16 value, as a float.</summary>
    public static float RoundToFloat(float value) => ToFloat(Round(value));
}
