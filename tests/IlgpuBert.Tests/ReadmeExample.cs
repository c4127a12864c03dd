using IlgpuBert.Autograd;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class ReadmeExample
{
    /// <summary>The body between the markers is README.md's "Using IlgpuBert from C#" example, verbatim.</summary>
    public static float[] Run(string modelDir)
    {
        // readme-example-start
        using var device = BertDevice.Open(DeviceSpec.Parse("auto"));
        using var model = BertFolder.Load(device, modelDir);          // config.json + model.safetensors
        var encoder = BertTextEncoder.Load(modelDir);                  // vocab.txt
        var inputs = encoder.Batch(["Gets the value of a property."], ["Returns a collection."]);
        using var tape = new Tape(recording: false);                   // inference: nothing recorded
        var outputs = model.Forward(tape, inputs, Dropouts.Off);
        float[] hidden = outputs.LastHiddenState.Value.ToHost();        // [B, S, H], row-major
        // readme-example-end
        return hidden;
    }

    /// <summary>The body between the markers is README.md's "Using a real pretrained model" example, verbatim.</summary>
    public static (float Similarity, List<SearchHit> Hits) RunPipeline(string modelDir, IReadOnlyList<string> corpus)
    {
        // readme-pipeline-start
        using var device = BertDevice.Open(DeviceSpec.Parse("auto"));
        using var pipeline = BertPipeline.Load(device, modelDir);              // any model folder
        var vectors = pipeline.Embed(["How do I read a file?", "Reads all lines of a text file."]);
        float similarity = BertPipeline.Cosine(vectors[0], vectors[1]);      // pooled as the folder says (modules.json), else mean + L2
        var hits = pipeline.Search("read a file", corpus, topK: 3);           // corpus: a list of texts
        // readme-pipeline-end
        return (similarity, hits);
    }

    internal static string RepoFile(string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, name)) && File.Exists(Path.Combine(d.FullName, "IlgpuBert.sln")))
                return Path.Combine(d.FullName, name);
        throw new FileNotFoundException(name);
    }

    private static string Between(string text, string start, string end)
    {
        int a = text.IndexOf(start, StringComparison.Ordinal), b = text.IndexOf(end, StringComparison.Ordinal);
        Assert.True(a >= 0 && b > a, $"markers {start} / {end} not found");
        var lines = text[(a + start.Length)..b].Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith("//"));
        return string.Join("\n", lines);
    }

    [Fact]
    public void The_readme_example_is_this_code_and_runs()
    {
        string readme = File.ReadAllText(RepoFile("README.md"));
        string source = File.ReadAllText(RepoFile(Path.Combine("tests", "IlgpuBert.Tests", "ReadmeExample.cs")));
        Assert.Equal(Between(source, "// readme-example-start", "// readme-example-end"),
            Between(readme, "<!-- readme-example-start -->", "<!-- readme-example-end -->").Replace("```csharp", "").Replace("```", "").Trim());

        using var dir = new TempDir();
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(["gets", "the", "value", "of", "a", "property", ".", "returns", "collection"]));
        var stdout = new StringWriter();
        Assert.Equal(0, Cli.Cli.Run(["init", "--size", "tiny", "--vocab", dir.File("vocab.txt"), "--out", dir.Path, "--device", "cpu"], stdout, stdout));
        var hidden = Run(dir.Path);
        Assert.Equal(1 * 14 * 128, hidden.Length); // [CLS] 7 tokens [SEP] 4 tokens [SEP]
        Assert.All(hidden, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void The_readme_pipeline_example_is_this_code_and_runs_on_the_imported_MiniLM()
    {
        string readme = File.ReadAllText(RepoFile("README.md"));
        string source = File.ReadAllText(RepoFile(Path.Combine("tests", "IlgpuBert.Tests", "ReadmeExample.cs")));
        Assert.Equal(Between(source, "// readme-pipeline-start", "// readme-pipeline-end"),
            Between(readme, "<!-- readme-pipeline-start -->", "<!-- readme-pipeline-end -->").Replace("```csharp", "").Replace("```", "").Trim());
        using var dir = new TempDir();
        Interop.OnnxImport.WriteFolder(Interop.OnnxImport.Read(MiniLm.Onnx), dir.Path, MiniLm.Vocab, null);
        string[] corpus = ["Opens a text file, reads all lines of the file, and then closes the file.", "Gets the number of elements in the list.",
            "Represents a point in two-dimensional space.", "Writes a string to the console."];
        var (similarity, hits) = RunPipeline(dir.Path, corpus);
        Assert.InRange(similarity, 0.5f, 1f);
        Assert.Equal(0, hits[0].Index);
        Assert.Equal(3, hits.Count);
    }
}
