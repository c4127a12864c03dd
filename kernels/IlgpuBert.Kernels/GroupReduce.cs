// Fixed-order reductions across one group, in two strategies selected per accelerator
// (KernelSet.RowReduction): a shared-memory tree that runs everywhere, and warp shuffles (CUDA, and
// the GPU-shaped CPU accelerator in the tests) that need three barriers instead of log₂(group) + 2.
// Row kernels take the strategy as a type parameter, so each accelerator compiles only the one it
// runs: OpenCL devices without sub-groups (PoCL reports a warp size of 0) never see a shuffle.
//
// Shared memory is a static allocation in each kernel's own body (RowScratch floats), never
// SharedMemory.GetDynamic: ILGPU 1.5.3's OpenCL backend keeps the dynamic shared-memory pointer in
// a program-scope variable that every work-group writes at entry. On a GPU all groups write the
// same group-relative address, but on CPU OpenCL runtimes (PoCL) each group's local memory is a
// different host address, so concurrently running groups read each other's tiles. That was the
// OpenCL attention bug (CodegenTests pins it: no kernel may declare program-scope local memory).
//
// Both strategies give every thread of the group the same value, and the order of additions
// depends only on the group size (and warp size), never on scheduling.
using System.Runtime.CompilerServices;
using ILGPU;

namespace IlgpuBert.Kernels;

public enum RowReduction { Tree, WarpShuffle }

public interface IGroupReduce
{
    /// <summary>Σ of every thread's value; all threads get it. <paramref name="shared"/>: RowScratch floats.</summary>
    float Sum(ArrayView<float> shared, float value);

    /// <summary>max of every thread's value; all threads get it.</summary>
    float Max(ArrayView<float> shared, float value);
}

public static class GroupReduce
{
    /// <summary>The largest row group any launcher uses, and the floats of shared memory a row kernel allocates.</summary>
    public const int MaxGroupSize = 1024;

    public const int RowScratch = MaxGroupSize;
}

/// <summary>Pairwise tree through shared memory: log₂(group) barrier-separated halvings.</summary>
public readonly struct TreeReduce : IGroupReduce
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Sum(ArrayView<float> shared, float value)
    {
        int t = Group.IdxX;
        shared[t] = value;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s)
                shared[t] += shared[t + s];
            Group.Barrier();
        }
        float result = shared[0];
        Group.Barrier();
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Max(ArrayView<float> shared, float value)
    {
        int t = Group.IdxX;
        shared[t] = value;
        Group.Barrier();
        for (int s = Group.DimX / 2; s > 0; s >>= 1)
        {
            if (t < s)
                shared[t] = MathF.Max(shared[t], shared[t + s]);
            Group.Barrier();
        }
        float result = shared[0];
        Group.Barrier();
        return result;
    }
}

/// <summary>
/// Shuffle-down within each warp (lane 0 ends with the warp's total), warp totals through shared
/// memory, the first warp reduces those the same way, and lane 0's result is broadcast. Needs a
/// group that is a multiple of the warp size (launchers use 256 threads).
/// </summary>
public readonly struct WarpReduce : IGroupReduce
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Sum(ArrayView<float> shared, float value)
    {
        int warps = Group.DimX / Warp.WarpSize;
        value = WarpSum(value);
        if (Warp.IsFirstLane) shared[Warp.WarpIdx] = value;
        Group.Barrier();
        if (Warp.WarpIdx == 0)
        {
            float v = WarpSum(Warp.LaneIdx < warps ? shared[Warp.LaneIdx] : 0f);
            if (Warp.IsFirstLane) shared[GroupReduce.RowScratch - 1] = v;
        }
        Group.Barrier();
        float result = shared[GroupReduce.RowScratch - 1];
        Group.Barrier();
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Max(ArrayView<float> shared, float value)
    {
        int warps = Group.DimX / Warp.WarpSize;
        value = WarpMax(value);
        if (Warp.IsFirstLane) shared[Warp.WarpIdx] = value;
        Group.Barrier();
        if (Warp.WarpIdx == 0)
        {
            float v = WarpMax(Warp.LaneIdx < warps ? shared[Warp.LaneIdx] : float.NegativeInfinity);
            if (Warp.IsFirstLane) shared[GroupReduce.RowScratch - 1] = v;
        }
        Group.Barrier();
        float result = shared[GroupReduce.RowScratch - 1];
        Group.Barrier();
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float WarpSum(float v)
    {
        for (int d = Warp.WarpSize / 2; d > 0; d >>= 1)
            v += Warp.ShuffleDown(v, d);
        return v;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float WarpMax(float v)
    {
        for (int d = Warp.WarpSize / 2; d > 0; d >>= 1)
            v = MathF.Max(v, Warp.ShuffleDown(v, d));
        return v;
    }
}
