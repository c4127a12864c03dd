// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
//
// A counter-based generator: the random bits for an element are a pure function of
// (key, counter), so dropout can regenerate its mask in backward instead of storing it, and every
// accelerator computes the same bits (integer arithmetic only). IlgpuBert keys it with the run's
// seed and counts with (element group, tensor id, step): see <see cref="Bits"/>.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace IlgpuBert.Kernels;

public static class Philox
{
    private const uint M0 = 0xD2511F53, M1 = 0xCD9E8D57;
    private const uint W0 = 0x9E3779B9, W1 = 0xBB67AE85;

    /// <summary>The raw Philox4x32-10 block for a 128-bit counter and 64-bit key.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Block(ref uint c0, ref uint c1, ref uint c2, ref uint c3, uint k0, uint k1)
    {
        // Ten rounds, written out: ILGPU 1.5.3 does not unroll loops.
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1); k0 += W0; k1 += W1;
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Round(ref uint c0, ref uint c1, ref uint c2, ref uint c3, uint k0, uint k1)
    {
        ulong p0 = (ulong)M0 * c0;
        ulong p1 = (ulong)M1 * c2;
        uint hi0 = (uint)(p0 >> 32), lo0 = (uint)p0;
        uint hi1 = (uint)(p1 >> 32), lo1 = (uint)p1;
        uint n0 = hi1 ^ c1 ^ k0;
        uint n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }

    /// <summary>
    /// Four random words for the group of elements [4·group, 4·group + 3] of one tensor at one
    /// step: counter = (group low, group high, tensorId, step), key = seed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Bits(ulong seed, uint step, uint tensorId, long group,
        out uint r0, out uint r1, out uint r2, out uint r3)
    {
        uint c0 = (uint)group, c1 = (uint)((ulong)group >> 32), c2 = tensorId, c3 = step;
        Block(ref c0, ref c1, ref c2, ref c3, (uint)seed, (uint)(seed >> 32));
        r0 = c0; r1 = c1; r2 = c2; r3 = c3;
    }

    /// <summary>
    /// The random word of element <paramref name="index"/> of a tensor: word (index mod 4) of the
    /// block for group index/4, so a kernel that walks elements one by one draws exactly what the
    /// four-at-a-time dropout kernel draws for the same flat index.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Word(ulong seed, uint step, uint tensorId, long index)
    {
        Bits(seed, step, tensorId, index >> 2, out uint r0, out uint r1, out uint r2, out uint r3);
        int w = (int)(index & 3);
        return w == 0 ? r0 : w == 1 ? r1 : w == 2 ? r2 : r3;
    }

    /// <summary>A uniform float in [0, 1) from the top 24 bits of a word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Uniform(uint bits) => (int)(bits >> 8) * (1f / 16777216f); // via int: uint→float would go through double

    // ---- Host only: sixteen blocks at once on AVX-512 ----

    /// <summary>
    /// The words of elements [4·group0, 4·group0 + 64) — what <see cref="Bits"/> gives for groups
    /// group0 … group0 + 15, in element order — computed sixteen blocks at a time: two sets of eight
    /// 64-bit lanes, each holding one 32-bit word, so VPMULUDQ forms Philox's 32 × 32 → 64-bit
    /// products. Host code only (CPU accelerator), where <see cref="Avx512F"/> is supported.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Words64(ulong seed, uint step, uint tensorId, long group0,
        out Vector512<uint> w0, out Vector512<uint> w1, out Vector512<uint> w2, out Vector512<uint> w3)
    {
        var low = Vector512.Create(0xFFFF_FFFFUL);
        var groupsA = Vector512.Create((ulong)group0) + Vector512.Create(0UL, 1, 2, 3, 4, 5, 6, 7);
        var groupsB = groupsA + Vector512.Create(8UL);
        Vector512<ulong> a0 = groupsA & low, a1 = groupsA >>> 32, b0 = groupsB & low, b1 = groupsB >>> 32;
        Vector512<ulong> a2 = Vector512.Create((ulong)tensorId), a3 = Vector512.Create((ulong)step), b2 = a2, b3 = a3;
        var m0 = Vector512.Create((ulong)M0).AsUInt32();
        var m1 = Vector512.Create((ulong)M1).AsUInt32();
        uint k0 = (uint)seed, k1 = (uint)(seed >> 32);
        for (int round = 0; round < 10; round++)
        {
            var key0 = Vector512.Create((ulong)k0);
            var key1 = Vector512.Create((ulong)k1);
            var pa0 = Avx512F.Multiply(a0.AsUInt32(), m0);
            var pa1 = Avx512F.Multiply(a2.AsUInt32(), m1);
            var pb0 = Avx512F.Multiply(b0.AsUInt32(), m0);
            var pb1 = Avx512F.Multiply(b2.AsUInt32(), m1);
            (a0, a1, a2, a3) = ((pa1 >>> 32) ^ a1 ^ key0, pa1 & low, (pa0 >>> 32) ^ a3 ^ key1, pa0 & low);
            (b0, b1, b2, b3) = ((pb1 >>> 32) ^ b1 ^ key0, pb1 & low, (pb0 >>> 32) ^ b3 ^ key1, pb0 & low);
            k0 += W0; k1 += W1;
        }
        // Lane j of a0…a3 holds words 0…3 of group group0 + j: pair them up (0|1, 2|3) and interleave.
        var first = Vector512.Create(0UL, 8, 1, 9, 2, 10, 3, 11);
        var second = Vector512.Create(4UL, 12, 5, 13, 6, 14, 7, 15);
        Vector512<ulong> a01 = a0 | (a1 << 32), a23 = a2 | (a3 << 32), b01 = b0 | (b1 << 32), b23 = b2 | (b3 << 32);
        w0 = Avx512F.PermuteVar8x64x2(a01, first, a23).AsUInt32();
        w1 = Avx512F.PermuteVar8x64x2(a01, second, a23).AsUInt32();
        w2 = Avx512F.PermuteVar8x64x2(b01, first, b23).AsUInt32();
        w3 = Avx512F.PermuteVar8x64x2(b01, second, b23).AsUInt32();
    }

    /// <summary><see cref="Uniform(uint)"/> of sixteen words at once (exactly: the top 24 bits fit a float).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static Vector512<float> Uniform(Vector512<uint> bits) =>
        Vector512.ConvertToSingle((bits >>> 8).AsInt32()) * (1f / 16777216f);
}
