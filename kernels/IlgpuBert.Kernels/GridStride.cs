using System.Runtime.CompilerServices;
using ILGPU;

namespace IlgpuBert.Kernels;

/// <summary>Index helpers for grid-stride loops in explicitly grouped kernels.</summary>
internal static class GridStride
{
    /// <summary>This thread's first item.</summary>
    public static long Start
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (long)Grid.IdxX * Group.DimX + Group.IdxX;
    }

    /// <summary>
    /// Distance between this thread's items: the number of threads in the grid. Read it once,
    /// before the loop: on the CPU accelerator each read of a grid dimension costs ~300 ns.
    /// </summary>
    public static long Step
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (long)Grid.DimX * Group.DimX;
    }
}
