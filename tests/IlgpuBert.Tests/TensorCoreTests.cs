// The TF32 tensor-core GEMM without a GPU: its rounding against an independent reference, the PTX
// post-pass that makes its inline mma assemble into registers (ptxas: HMMA, no local memory, no
// spills), and the pass's refusals. The kernel's numbers on the GPU-shaped CPU and OpenCL, through the
// emulated mma in the same fragment layout, are GemmTests' (GemmTile.Tf32).
using IlgpuBert.Bench;
using IlgpuBert.Kernels;

namespace IlgpuBert.Tests;

public class TensorCoreTests
{
    [Fact]
    public void Tf32_rounding_is_to_nearest_with_ties_away_from_zero()
    {
        float ulp = MathF.ScaleB(1f, -10); // TF32's unit in the last place at 1
        float[] cases =
        [
            1f, 1f + ulp / 2, 1f + ulp / 2 - MathF.ScaleB(1f, -23), 1f + ulp / 2 + MathF.ScaleB(1f, -23), 1f + 3 * ulp / 2,
            -(1f + ulp / 2), -(1f + 3 * ulp / 2), 3.14159265f, -2.7182817e-20f, 6.0221e23f, 1.17549435e-38f, float.MaxValue, -float.MaxValue, 0f, -0f,
        ];
        foreach (float x in cases)
        {
            double expected = Reference.RoundTf32(x);
            float got = TensorCores.RoundTf32(x);
            Assert.True(got.Equals((float)expected), $"RoundTf32({x:R}) = {got:R}, expected {expected:R}");
            Assert.Equal(0u, BitConverter.SingleToUInt32Bits(got) & 0x1FFFu);
        }
        // Ties go away from zero, in both directions: 1 + ulp/2 up, −(1 + ulp/2) down.
        Assert.Equal(1f + ulp, TensorCores.RoundTf32(1f + ulp / 2));
        Assert.Equal(-(1f + ulp), TensorCores.RoundTf32(-(1f + ulp / 2)));
        Assert.Equal(1f, TensorCores.RoundTf32(1f + ulp / 2 - MathF.ScaleB(1f, -23)));
        Assert.True(float.IsNaN(TensorCores.RoundTf32(float.NaN)));
        Assert.Equal(float.PositiveInfinity, TensorCores.RoundTf32(float.PositiveInfinity));
    }

    public static TheoryData<string> Architectures => new(SassReport.Architectures);

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Tf32_gemm_assembles_to_tensor_core_instructions_with_operands_in_registers(string arch)
    {
        var method = KernelSet.EntryPoints().Single(e => e.Name == "Gemm.Tf32Kernel").Method;
        string ptx = SassReport.Ptx(method, arch);
        Assert.DoesNotContain(TensorCores.PseudoMma, ptx);
        Assert.DoesNotContain(".local", ptx);
        Assert.Equal(16, ptx.Split('\n').Count(l => l.TrimStart().StartsWith("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", StringComparison.Ordinal)));
        var code = SassReport.Assemble("Gemm.Tf32Kernel", method, arch, PtxasTests.Ptxas());
        Assert.True(code.Hmma >= 16, $"{arch}: {code.Hmma} HMMA instructions");
        Assert.Equal(0, code.LocalAccesses);
        Assert.Equal(0, code.StackBytes);
        Assert.Equal(0, code.SpillStoreBytes + code.SpillLoadBytes);
    }

    [Fact]
    public void Without_the_post_pass_the_inline_mma_goes_through_local_memory()
    {
        // What the post-pass is for, and a check that this test's PTX is the kernel's: ILGPU's own output.
        var method = KernelSet.EntryPoints().Single(e => e.Name == "Gemm.Tf32Kernel").Method;
        string raw = SassReport.RawPtx(method, "sm_90");
        Assert.True(PtxPostPass.Needed(raw));
        Assert.Contains("st.local", raw);
        Assert.Contains("ld.local", raw);
    }

    private const string Parts = """
        {
        	.local .align 4 .b8 	__local_depot0[4];
        	mov.b64	%rd5, __local_depot0;
        	ilgpubert.mma.m16n8k8.tf32.part0 	%f6, %r1, %r2, %r3, %r4, %r5, %r6, %f1;
        	st.local.f32	[%rd5], %f6;
        	ilgpubert.mma.m16n8k8.tf32.part1 	%f7, %r1, %r2, %r3, %r4, %r5, %r6, %f2;
        	ilgpubert.mma.m16n8k8.tf32.part2 	%f8, %r1, %r2, %r3, %r4, %r5, %r6, %f3;
        	ilgpubert.mma.m16n8k8.tf32.part3 	%f9, %r1, %r2, %r3, %r4, %r5, %r6, %f4;
        	ld.local.f32	%f10, [%rd5];
        }
        """;

    [Fact]
    public void The_post_pass_fuses_the_parts_and_puts_the_slot_in_a_register()
    {
        string fused = PtxPostPass.Apply(Parts);
        Assert.Contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f6, %f7, %f8, %f9}, {%r1, %r2, %r3, %r4}, {%r5, %r6}, {%f1, %f2, %f3, %f4};", fused);
        Assert.DoesNotContain("local", fused);
        // The store of part 0's output now follows the fused instruction, as a move into the slot's register.
        int mma = fused.IndexOf("mma.sync", StringComparison.Ordinal), store = fused.IndexOf("mov.f32 %slot5, %f6;", StringComparison.Ordinal);
        Assert.True(store > mma, fused);
        Assert.Contains("mov.f32 %f10, %slot5;", fused);
        Assert.Contains(".reg .f32 %slot5;", fused);
    }

    [Fact]
    public void The_post_pass_refuses_what_it_cannot_rewrite_exactly()
    {
        string between = Parts.Replace("\tilgpubert.mma.m16n8k8.tf32.part1", "\tadd.f32 %f2, %f2, %f2;\n\tilgpubert.mma.m16n8k8.tf32.part1");
        Assert.Contains("between the parts", Assert.Throws<InvalidOperationException>(() => PtxPostPass.Apply(between)).Message);
        string missing = Parts.Replace("\tilgpubert.mma.m16n8k8.tf32.part3 \t%f9, %r1, %r2, %r3, %r4, %r5, %r6, %f4;\n", "");
        Assert.Throws<InvalidOperationException>(() => PtxPostPass.Apply(missing));
        string otherA = Parts.Replace("part2 \t%f8, %r1", "part2 \t%f8, %r9");
        Assert.Contains("different A or B", Assert.Throws<InvalidOperationException>(() => PtxPostPass.Apply(otherA)).Message);
        // A slot read at an offset, or through its address elsewhere, is not one variable: it stays in memory.
        string offset = "{\n\t.local .align 4 .b8 __local_depot0[4];\n\tmov.b64 %rd5, __local_depot0;\n\tst.local.f32 [%rd5], %f1;\n\tadd.u64 %rd6, %rd5, 0;\n}";
        Assert.Equal(offset, PtxPostPass.Apply(offset));
    }
}
