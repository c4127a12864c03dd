using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;

namespace IlgpuBert.Tests;

/// <summary>Packing (here and in ToolPackageTests) builds the same projects in Release: one at a time.</summary>
[CollectionDefinition("Packages", DisableParallelization = true)]
public sealed class PackagesCollection;

/// <summary>
/// The libraries as a user gets them: `dotnet pack` of IlgpuBert and IlgpuBert.Kernels into a folder
/// feed, each package with its metadata, README, XML docs and symbol package; then samples/IlgpuBert.Sample
/// (a console app referencing the IlgpuBert package, not the projects) restored from that feed into an
/// empty package cache, built and run: it embeds, fine-tunes, saves and classifies.
/// </summary>
[Collection("Packages")]
public class PackageTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>Runs a program to its end (8 minutes at most): exit code, stdout then stderr.</summary>
    internal static (int Code, string Out) Run(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? env = null, string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory ?? "" };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) start.Environment[k] = v;
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(8)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish within 8 minutes");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void The_libraries_pack_and_a_console_app_restored_from_them_embeds_fine_tunes_and_saves()
    {
        string root = Path.GetDirectoryName(ReadmeExample.RepoFile("IlgpuBert.sln"))!;
        string feed = dir.File("feed");
        foreach (var project in new[] { Path.Combine("kernels", "IlgpuBert.Kernels"), Path.Combine("src", "IlgpuBert") })
        {
            var (code, output) = Run("dotnet", ["pack", Path.Combine(root, project), "-c", "Release", "-o", feed]);
            Assert.True(code == 0, output);
        }
        foreach (var id in new[] { "IlgpuBert", "IlgpuBert.Kernels" })
        {
            string package = Path.Combine(feed, $"{id}.0.1.0.nupkg");
            Assert.True(File.Exists(package), $"no {package}: {string.Join(", ", Directory.GetFiles(feed).Select(Path.GetFileName))}");
            Assert.True(File.Exists(Path.ChangeExtension(package, ".snupkg")), $"{id} has no symbol package");
            using var zip = ZipFile.OpenRead(package);
            XNamespace ns = XDocument.Load(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open()).Root!.Name.Namespace;
            var metadata = XDocument.Load(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open()).Root!.Element(ns + "metadata")!;
            string Field(string name) => metadata.Element(ns + name)?.Value ?? "";
            Assert.Equal(id, Field("id"));
            Assert.Equal("0.1.0", Field("version"));
            Assert.Equal("MIT", Field("license"));
            Assert.Contains("bert", Field("tags"));
            Assert.Equal("README.md", Field("readme"));
            Assert.NotEmpty(Field("description"));
            Assert.Equal("git", metadata.Element(ns + "repository")?.Attribute("type")?.Value);
            var files = zip.Entries.Select(e => e.FullName).ToList();
            Assert.Contains("README.md", files);
            Assert.Contains($"lib/net10.0/{id}.dll", files);
            Assert.Contains($"lib/net10.0/{id}.xml", files);
            using var docs = new StreamReader(zip.GetEntry($"lib/net10.0/{id}.xml")!.Open());
            Assert.True(XDocument.Parse(docs.ReadToEnd()).Descendants("member").Count() > 100, $"{id}'s XML docs document almost nothing");
        }

        // The sample as a user would build it: outside the repository (none of its build settings),
        // its packages restored from the feed into an empty cache (this package, not one cached earlier),
        // the libraries' own dependencies from the machine's package cache used as a second feed.
        string sample = dir.File("sample"), cache = dir.File("nuget-cache");
        Directory.CreateDirectory(sample);
        foreach (var f in Directory.GetFiles(Path.Combine(root, "samples", "IlgpuBert.Sample")).Where(f => f.EndsWith(".cs", StringComparison.Ordinal) || f.EndsWith(".csproj", StringComparison.Ordinal)))
            File.Copy(f, Path.Combine(sample, Path.GetFileName(f)));
        string machineCache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } set ? set
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.WriteAllText(Path.Combine(sample, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="ilgpu-bert" value="{feed}" />
                <add key="machine-cache" value="{machineCache}" />
              </packageSources>
            </configuration>
            """);
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = cache };
        var (rc, log) = Run("dotnet", ["build", sample, "-c", "Release"], env, sample);
        Assert.True(rc == 0, log);
        Assert.True(Directory.Exists(Path.Combine(cache, "ilgpubert", "0.1.0")), "the sample did not restore IlgpuBert from the feed");
        string work = dir.File("work");
        (rc, log) = Run("dotnet", ["run", "--no-build", "-c", "Release", "--project", sample, "--", work, "--device", "cpu"], env, sample);
        Assert.True(rc == 0, log);
        Assert.Contains("embed: 2 vectors of 128", log);
        Assert.Matches(@"finetune: accuracy [0-9.]+", log);
        Assert.Equal(2, log.Split('\n').Count(l => l.StartsWith("classify: ", StringComparison.Ordinal)));
        Assert.Contains("sample: done", log);
        foreach (var f in new[] { "config.json", "model.safetensors", "vocab.txt" })
            Assert.True(File.Exists(Path.Combine(work, "classifier", f)), $"the fine-tuned model has no {f}");
    }
}
