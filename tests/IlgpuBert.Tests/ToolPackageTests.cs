namespace IlgpuBert.Tests;

/// <summary>The CLI as a user installs it: dotnet pack, dotnet tool install into a folder, and the installed command runs.</summary>
[Collection("Packages")]
public class ToolPackageTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static (int Code, string Out) Run(string file, params string[] args) => PackageTests.Run(file, args);

    [Fact]
    public void The_tool_packs_installs_and_runs()
    {
        string project = Path.Combine(Path.GetDirectoryName(ReadmeExample.RepoFile("IlgpuBert.sln"))!, "tools", "IlgpuBert.Cli");
        string packages = dir.File("packages"), tools = dir.File("tools");
        var (code, output) = Run("dotnet", "pack", project, "-c", "Release", "-o", packages);
        Assert.True(code == 0, output);
        var package = Assert.Single(Directory.GetFiles(packages, "IlgpuBert.Cli.*.nupkg"));
        string version = Path.GetFileNameWithoutExtension(package)["IlgpuBert.Cli.".Length..];

        (code, output) = Run("dotnet", "tool", "install", "IlgpuBert.Cli", "--version", version, "--add-source", packages, "--tool-path", tools);
        Assert.True(code == 0, output);
        string command = Path.Combine(tools, OperatingSystem.IsWindows() ? "ilgpu-bert.exe" : "ilgpu-bert");
        (code, output) = Run(command, "--version");
        Assert.True(code == 0, output);
        Assert.StartsWith(version, output.Trim());
        (code, output) = Run(command, "init", "--size", "tiny", "--vocab-size", "300", "--out", dir.File("model"), "--device", "cpu");
        Assert.True(code == 0, output);
        Assert.True(File.Exists(Path.Combine(dir.File("model"), "model.safetensors")), output);
    }
}
