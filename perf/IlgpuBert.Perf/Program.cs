// BenchmarkDotNet suites for every kernel family, on the device ILGPU_BERT_DEVICE names (default
// auto). Run e.g.:
//   dotnet run -c Release --project perf/IlgpuBert.Perf -- --filter '*Gemm*'
// Quick numbers without BenchmarkDotNet: `ilgpu-bert bench`.
using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(IlgpuBert.Perf.KernelBenchmark).Assembly).Run(args);
