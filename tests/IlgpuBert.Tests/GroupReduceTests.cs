// Both reduction strategies of the row kernels (GroupReduce.cs) on the GPU-shaped CPU accelerator,
// at several group sizes: the tree (what OpenCL runs) and warp shuffles (what CUDA runs). The
// device matrix runs each accelerator's own choice; this runs both everywhere.
using ILGPU.Runtime;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class GroupReduceTests
{
    public static TheoryData<RowReduction, int> Strategies() => new()
    {
        { RowReduction.Tree, 32 }, { RowReduction.Tree, 256 }, { RowReduction.WarpShuffle, 32 }, { RowReduction.WarpShuffle, 256 },
    };

    private static KernelSet Kernels(RowReduction reduction, int group)
    {
        var accelerator = Devices.Get("cpu-gpu-shaped").Accelerator;
        return new KernelSet(accelerator, group, reduction);
    }

    [Theory]
    [MemberData(nameof(Strategies))]
    public void LayerNorm_softmax_cross_entropy_and_the_global_norm_match_double(RowReduction reduction, int group)
    {
        var d = Devices.Get("cpu-gpu-shaped");
        using var k = Kernels(reduction, group);
        const int rows = 5, cols = 300; // more columns than threads, and not a multiple of them
        var rng = new Random(group + (int)reduction);
        var x = Rand.Normal(rng, rows * cols, 3);
        var gamma = Rand.Normal(rng, cols);
        var beta = Rand.Normal(rng, cols);
        int[] labels = [3, -100, 299, 0, 150];
        using var bx = d.Upload(x);
        using var bg = d.Upload(gamma);
        using var bb = d.Upload(beta);
        using var by = d.Poisoned(rows * cols);
        using var bm = d.Poisoned(rows);
        using var brs = d.Poisoned(rows);
        k.LayerNorm.Forward(bx.View, default, bg.View, bb.View, by.View, bm.View, brs.View, rows, cols, 1e-12f);
        var (y, _, _) = Reference.LayerNorm(Rand.ToDouble(x), null, Rand.ToDouble(gamma), Rand.ToDouble(beta), rows, cols, 1e-12);
        Tol.AssertClose(y, d.Read(by, rows * cols), Tol.F32Reduction, "layer norm");

        using var bs = d.Poisoned(rows * cols);
        k.Softmax.Forward(bx.View, bs.View, rows, cols);
        Tol.AssertClose(Reference.Softmax(Rand.ToDouble(x), rows, cols), d.Read(bs, rows * cols), Tol.F32Reduction, "softmax");

        using var bl = d.Upload(labels);
        using var blse = d.Poisoned(rows);
        using var loss = d.Poisoned(2);
        k.CrossEntropy.Forward(bx.View, bl.View, blse.View, loss.View, rows, cols);
        Tol.AssertClose([Reference.CrossEntropy(Rand.ToDouble(x), labels, rows, cols), 4], d.Read(loss, 2), Tol.F32Reduction, "cross-entropy");

        using var norm = d.Poisoned(1);
        k.AdamW.GlobalNorm([bx.View, bg.View], norm.View);
        double expected = Math.Sqrt(x.Concat(gamma).Sum(v => (double)v * v));
        Tol.AssertClose([expected], d.Read(norm, 1), Tol.F32Reduction, "global norm");
    }
}
