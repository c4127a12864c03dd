// How `bench oclgrind` reads Oclgrind's output (no Oclgrind needed; the whole check runs in CI's
// OpenCL leg, tools/opencl/oclgrind-check.sh): compiler warnings are not errors, every message is.
using IlgpuBert.Bench;

namespace IlgpuBert.Tests;

public class OclgrindCheckTests
{
    private const string Warning = """
        input.cl:12:3: warning: unused variable 'var7' [-Wunused-variable]
                type_2051 var7;
                ^
        1 warning generated.
        """;

    private const string Race = """

        Read-write data race at local memory address 0x1000000000200
        	Kernel: Kernel_ForwardKernel

        	First entity:  Global(1,0,0) Local(1,0,0) Group(0,0,0)
        """;

    [Fact]
    public void Compiler_warnings_are_not_errors_and_every_message_after_them_is()
    {
        Assert.Empty(OclgrindCheck.Errors(Warning));
        Assert.Empty(OclgrindCheck.Errors(""));
        Assert.Empty(OclgrindCheck.Errors("1 warning generated.\n")); // all Oclgrind 21.10 prints of a build's warnings
        Assert.Single(OclgrindCheck.Errors("2 warnings generated.\n" + Race.Split("\n\n\t")[0]));
        var errors = OclgrindCheck.Errors(Warning + "\n" + Race + "\n\nInvalid read of size 4 at global memory address 0x3000000000010\n");
        Assert.Equal(3, errors.Count);
        Assert.StartsWith("Read-write data race at local memory address 0x1000000000200 Kernel: Kernel_ForwardKernel", errors[0]);
        Assert.StartsWith("First entity:", errors[1]);
        Assert.StartsWith("Invalid read of size 4", errors[2]);
        // A message right after the warnings' summary line, with no blank line between, still counts.
        Assert.Single(OclgrindCheck.Errors(Warning + "\nBuild failure:"));
    }
}
