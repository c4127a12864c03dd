// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
//
// A counter-based generator: the random bits for an element are a pure function of
// (key, counter), so dropout can regenerate its mask in backward instead of storing it, and every
// accelerator computes the same bits (integer arithmetic only). IlgpuBert keys it with the run's
// seed and counts with (element group, tensor id, step): see <see cref="Bits"/>.
using System.Runtime.CompilerServices;

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
}
