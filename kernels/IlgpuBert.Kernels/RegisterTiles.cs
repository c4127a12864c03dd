// Register tiles for the GPU kernels: four floats as one 128-bit access (a view of a 16-byte struct
// compiles to ld/st.v4 when ILGPU knows the address is 16-byte aligned), and per-thread blocks of
// accumulators written as named fields. ILGPU 1.5.3 unrolls no loops and puts an array a thread
// indexes at run time in local memory, so every element of a tile is a field and every update is
// written out; the `Row` accessors pick a row with a switch, never an index.
using System.Runtime.CompilerServices;

namespace IlgpuBert.Kernels;

/// <summary>Four floats: one 128-bit load or store.</summary>
public struct Float4
{
    public float X, Y, Z, W;

    public Float4(float x, float y, float z, float w)
    {
        X = x; Y = y; Z = z; W = w;
    }

    /// <summary>Every element times s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly Float4 Times(float s) => new(X * s, Y * s, Z * s, W * s);

    /// <summary>A copy with element i replaced by v.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly Float4 With(int i, float v) => new(i == 0 ? v : X, i == 1 ? v : Y, i == 2 ? v : Z, i == 3 ? v : W);

    /// <summary>c + a·b, element-wise.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Float4 Fma(float a, Float4 b, Float4 c) => new(c.X + a * b.X, c.Y + a * b.Y, c.Z + a * b.Z, c.W + a * b.W);

    public readonly float this[int i]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => i == 0 ? X : i == 1 ? Y : i == 2 ? Z : W;
    }
}

/// <summary>An 8×8 register tile: rows i (0..7), columns 0-3 (Lo) and 4-7 (Hi).</summary>
internal struct Acc8x8
{
    public Float4 R0Lo, R0Hi;
    public Float4 R1Lo, R1Hi;
    public Float4 R2Lo, R2Hi;
    public Float4 R3Lo, R3Hi;
    public Float4 R4Lo, R4Hi;
    public Float4 R5Lo, R5Hi;
    public Float4 R6Lo, R6Hi;
    public Float4 R7Lo, R7Hi;

    /// <summary>Row i's eight accumulators (a switch, so the registers are never indexed dynamically).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Row(int i, out Float4 lo, out Float4 hi)
    {
        switch (i)
        {
            case 0: lo = R0Lo; hi = R0Hi; return;
            case 1: lo = R1Lo; hi = R1Hi; return;
            case 2: lo = R2Lo; hi = R2Hi; return;
            case 3: lo = R3Lo; hi = R3Hi; return;
            case 4: lo = R4Lo; hi = R4Hi; return;
            case 5: lo = R5Lo; hi = R5Hi; return;
            case 6: lo = R6Lo; hi = R6Hi; return;
            default: lo = R7Lo; hi = R7Hi; return;
        }
    }

    /// <summary>Rank-1 update: rows a0 (0-3) and a1 (4-7) times columns b0 (0-3) and b1 (4-7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fma(Float4 a0, Float4 a1, Float4 b0, Float4 b1)
    {
        R0Lo = Float4.Fma(a0.X, b0, R0Lo);
        R0Hi = Float4.Fma(a0.X, b1, R0Hi);
        R1Lo = Float4.Fma(a0.Y, b0, R1Lo);
        R1Hi = Float4.Fma(a0.Y, b1, R1Hi);
        R2Lo = Float4.Fma(a0.Z, b0, R2Lo);
        R2Hi = Float4.Fma(a0.Z, b1, R2Hi);
        R3Lo = Float4.Fma(a0.W, b0, R3Lo);
        R3Hi = Float4.Fma(a0.W, b1, R3Hi);
        R4Lo = Float4.Fma(a1.X, b0, R4Lo);
        R4Hi = Float4.Fma(a1.X, b1, R4Hi);
        R5Lo = Float4.Fma(a1.Y, b0, R5Lo);
        R5Hi = Float4.Fma(a1.Y, b1, R5Hi);
        R6Lo = Float4.Fma(a1.Z, b0, R6Lo);
        R6Hi = Float4.Fma(a1.Z, b1, R6Hi);
        R7Lo = Float4.Fma(a1.W, b0, R7Lo);
        R7Hi = Float4.Fma(a1.W, b1, R7Hi);
    }
}

/// <summary>A 4×4 register tile.</summary>
internal struct Acc4x4
{
    public Float4 R0, R1, R2, R3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly Float4 Row(int i) => i == 0 ? R0 : i == 1 ? R1 : i == 2 ? R2 : R3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fma(Float4 a, Float4 b)
    {
        R0 = Float4.Fma(a.X, b, R0);
        R1 = Float4.Fma(a.Y, b, R1);
        R2 = Float4.Fma(a.Z, b, R2);
        R3 = Float4.Fma(a.W, b, R3);
    }
}

/// <summary>A 4×8 register tile: rows 0..3, columns 0-3 (Lo) and 4-7 (Hi).</summary>
internal struct Acc4x8
{
    public Float4 R0Lo, R0Hi, R1Lo, R1Hi, R2Lo, R2Hi, R3Lo, R3Hi;

    /// <summary>Rank-1 update: rows a times columns b0 (0-3) and b1 (4-7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fma(Float4 a, Float4 b0, Float4 b1)
    {
        R0Lo = Float4.Fma(a.X, b0, R0Lo);
        R0Hi = Float4.Fma(a.X, b1, R0Hi);
        R1Lo = Float4.Fma(a.Y, b0, R1Lo);
        R1Hi = Float4.Fma(a.Y, b1, R1Hi);
        R2Lo = Float4.Fma(a.Z, b0, R2Lo);
        R2Hi = Float4.Fma(a.Z, b1, R2Hi);
        R3Lo = Float4.Fma(a.W, b0, R3Lo);
        R3Hi = Float4.Fma(a.W, b1, R3Hi);
    }

    /// <summary>Row i multiplied by f (the online softmax's rescale).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void ScaleRows(Float4 f)
    {
        R0Lo = R0Lo.Times(f.X); R0Hi = R0Hi.Times(f.X);
        R1Lo = R1Lo.Times(f.Y); R1Hi = R1Hi.Times(f.Y);
        R2Lo = R2Lo.Times(f.Z); R2Hi = R2Hi.Times(f.Z);
        R3Lo = R3Lo.Times(f.W); R3Hi = R3Hi.Times(f.W);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Row(int i, out Float4 lo, out Float4 hi)
    {
        switch (i)
        {
            case 0: lo = R0Lo; hi = R0Hi; return;
            case 1: lo = R1Lo; hi = R1Hi; return;
            case 2: lo = R2Lo; hi = R2Hi; return;
            default: lo = R3Lo; hi = R3Hi; return;
        }
    }
}
