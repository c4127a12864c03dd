// tools/gpu/check.sh, the one command a GPU machine runs, dry-run here on the CPU so it cannot rot:
// the same script against this build's test and benchmark executables, one small test class and the
// benchmarks' quick sizes; its results file must hold the tests' summary, the benchmark table with the
// missing cuBLAS said, and the verdict.
using System.Diagnostics;

namespace IlgpuBert.Tests;

public class GpuCheckTests
{
    [Fact]
    public void The_gpu_check_dry_runs_on_the_cpu_and_writes_one_results_file()
    {
        string root = Path.GetDirectoryName(ReadmeExample.RepoFile("IlgpuBert.sln"))!;
        string configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}") ? "Release" : "Debug";
        string tests = Path.Combine(AppContext.BaseDirectory, "IlgpuBert.Tests");
        string perf = Path.Combine(root, "perf", "IlgpuBert.Perf", "bin", configuration, "net10.0", "IlgpuBert.Perf");
        Assert.True(File.Exists(perf), $"{perf} is missing: build the solution (dotnet build IlgpuBert.sln) before the tests");
        string dir = Directory.CreateTempSubdirectory("ilgpu-bert-gpucheck").FullName;
        try
        {
            string results = Path.Combine(dir, "gpu-check.txt");
            var psi = new ProcessStartInfo("bash", [Path.Combine(root, "tools", "gpu", "check.sh"), "--device", "cpu", "--quick",
                "--tests", tests, "--perf", perf, "--out", results]) { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.Environment.Remove("ILGPU_BERT_TEST_DEVICES");
            using var p = Process.Start(psi)!;
            var stderr = p.StandardError.ReadToEndAsync();
            string stdout = p.StandardOutput.ReadToEnd();
            Assert.True(p.WaitForExit(TimeSpan.FromMinutes(5)), "check.sh did not finish in 5 minutes");
            Assert.True(p.ExitCode == 0, $"check.sh exited {p.ExitCode}:\n{stdout}\n{stderr.Result}");
            string text = File.ReadAllText(results);
            Assert.Matches(@"IlgpuBert\.Tests\s+Total: [1-9]\d*, Errors: 0, Failed: 0", text);
            Assert.Contains("gemm fp32", text);
            Assert.Contains("cuBLAS not measured: cuBLAS needs a CUDA device", text);
            Assert.Contains("bert-step", text);
            Assert.Contains("results.jsonl:", text);
            Assert.Matches(@"== \d+ s, passed", text);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
