// Tensor-core arithmetic for the TF32 GEMM (Gemm.cs, Tf32Kernel): one warp-wide
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, D[16×8] = A[16×8]·B[8×8] + C, with every operand
// in registers in the layout of the PTX ISA ("Matrix Fragments for mma.m16n8k8", .tf32). For lane l of
// the warp, g = l / 4 and t = l % 4:
//   A: a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//   B: b0 = B[t][g], b1 = B[t+4][g]
//   C, D: c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
//
// On CUDA the instruction is emitted as four pseudo-instructions, one per output (ILGPU's inline PTX
// takes one output per statement), which PtxPostPass fuses into the one mma before the PTX is loaded;
// it also gives back to registers the stack slots ILGPU routes each output through.
// Everywhere else (the GPU-shaped CPU, OpenCL) the same call is emulated: each lane writes its
// fragments where the layout above says they belong, in a per-warp shared-memory scratch, and computes
// its four outputs from the whole tiles. So a kernel that holds a fragment in the wrong lane or register
// computes a wrong product on every device, and the tests catch it without a GPU.
// Warps are the 32 consecutive threads of a one-dimensional group, as on CUDA.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace IlgpuBert.Kernels;

/// <summary>An A fragment (four TF32 values as their float bits) or four FP32 accumulators.</summary>
public struct Frag4
{
    public float X, Y, Z, W;
}

/// <summary>A B fragment: two TF32 values.</summary>
public struct Frag2
{
    public float X, Y;
}

public static class TensorCores
{
    /// <summary>Floats of shared memory one warp's emulated mma needs (A 16×8 and B 8×8).</summary>
    public const int ScratchPerWarp = 16 * 8 + 8 * 8;

    /// <summary>The prefix of the pseudo-instructions PtxPostPass fuses (see there).</summary>
    public const string PseudoMma = "ilgpubert.mma.m16n8k8.tf32.part";

    /// <summary>
    /// x rounded to TF32 (8-bit exponent, 10-bit mantissa): to nearest, ties away from zero, as
    /// cvt.rna.tf32.f32. The result is a float whose low 13 mantissa bits are zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RoundTf32(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("cvt.rna.tf32.f32 %0, %1;", out uint r, x);
            return ILGPU.Interop.IntAsFloat(r);
        }
        uint bits = ILGPU.Interop.FloatAsInt(x);
        if ((bits & 0x7F800000u) == 0x7F800000u) return x; // infinity and NaN pass through
        return ILGPU.Interop.IntAsFloat((bits + 0x1000u) & 0xFFFFE000u);
    }

    /// <summary>
    /// c += a·b for one m16n8k8 tile held by the calling warp (layout at the top of this file). Every
    /// thread of the group must call it together. <paramref name="scratch"/> is the group's shared
    /// memory for the emulation, <see cref="ScratchPerWarp"/> floats per warp; CUDA does not touch it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Mma(ref Frag4 c, Frag4 a, Frag2 b, ArrayView<float> scratch)
    {
        if (CudaAsm.IsSupported)
        {
            uint a0 = ILGPU.Interop.FloatAsInt(a.X), a1 = ILGPU.Interop.FloatAsInt(a.Y), a2 = ILGPU.Interop.FloatAsInt(a.Z), a3 = ILGPU.Interop.FloatAsInt(a.W);
            uint b0 = ILGPU.Interop.FloatAsInt(b.X), b1 = ILGPU.Interop.FloatAsInt(b.Y);
            CudaAsm.Emit("ilgpubert.mma.m16n8k8.tf32.part0 %0, %1, %2, %3, %4, %5, %6, %7;", out float d0, a0, a1, a2, a3, b0, b1, c.X);
            CudaAsm.Emit("ilgpubert.mma.m16n8k8.tf32.part1 %0, %1, %2, %3, %4, %5, %6, %7;", out float d1, a0, a1, a2, a3, b0, b1, c.Y);
            CudaAsm.Emit("ilgpubert.mma.m16n8k8.tf32.part2 %0, %1, %2, %3, %4, %5, %6, %7;", out float d2, a0, a1, a2, a3, b0, b1, c.Z);
            CudaAsm.Emit("ilgpubert.mma.m16n8k8.tf32.part3 %0, %1, %2, %3, %4, %5, %6, %7;", out float d3, a0, a1, a2, a3, b0, b1, c.W);
            c.X = d0; c.Y = d1; c.Z = d2; c.W = d3;
            return;
        }
        int thread = Group.IdxX, g = (thread & 31) >> 2, t = thread & 3;
        var tile = scratch.SubView((thread >> 5) * ScratchPerWarp, ScratchPerWarp);
        // A row-major [16][8] at 0, B row-major [8][8] (k, n) at 128.
        tile[g * 8 + t] = a.X;
        tile[(g + 8) * 8 + t] = a.Y;
        tile[g * 8 + t + 4] = a.Z;
        tile[(g + 8) * 8 + t + 4] = a.W;
        tile[128 + t * 8 + g] = b.X;
        tile[128 + (t + 4) * 8 + g] = b.Y;
        Group.Barrier();
        float x = c.X, y = c.Y, z = c.Z, w = c.W;
        for (int k = 0; k < 8; k++)
        {
            float lo = tile[g * 8 + k], hi = tile[(g + 8) * 8 + k];
            float b0 = tile[128 + k * 8 + 2 * t], b1 = tile[128 + k * 8 + 2 * t + 1];
            x += lo * b0;
            y += lo * b1;
            z += hi * b0;
            w += hi * b1;
        }
        Group.Barrier(); // the next call's writes wait for every lane's reads
        c.X = x; c.Y = y; c.Z = z; c.W = w;
    }
}
