// BenchmarkDotNet suites for every kernel family, on the device ILGPU_BERT_DEVICE names (default
// auto). Run e.g.:
//   dotnet run -c Release --project perf/IlgpuBert.Perf -- --filter '*Gemm*'
// `gpu [--device D] [--out DIR] [--quick]` runs the GPU issue's benchmark set in one go instead
// (see GpuRun.cs and tools/gpu/publish.sh); `crosscheck [--device D]` compares a device's kernels at
// BERT-base shapes with the CPU path (CrossCheck.cs). Quick numbers without either: `ilgpu-bert bench`.
using BenchmarkDotNet.Running;

if (args.Length > 0 && args[0] == "gpu")
    return IlgpuBert.Perf.GpuRun.Main(args[1..]);
if (args.Length > 0 && args[0] == "crosscheck")
    return IlgpuBert.Perf.CrossCheck.Main(args[1..]);
BenchmarkSwitcher.FromAssembly(typeof(IlgpuBert.Perf.KernelBenchmark).Assembly).Run(args);
return 0;
