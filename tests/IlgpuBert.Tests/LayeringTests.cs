// The layering README.md's architecture table states ("each depending only on the ones before it"),
// checked against the tree: every folder of src/IlgpuBert appears in exactly one row, and no source
// file imports (a `using IlgpuBert.X;` line) or names (a qualified `X.Type`) a namespace of a later row.
// Folders in one row may use each other. The kernels (the first row) use no other part at all.
using System.Text.RegularExpressions;

namespace IlgpuBert.Tests;

public partial class LayeringTests
{
    private static string Root()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "IlgpuBert.sln"))) return dir.FullName;
        throw new InvalidOperationException("IlgpuBert.sln not found above the test binaries");
    }

    /// <summary>README's architecture rows in order, each as the namespaces its paths name (src/IlgpuBert/X → X; the kernels → Kernels).</summary>
    private static List<string[]> Layers(string readme)
    {
        string table = readme[readme.IndexOf("## Architecture", StringComparison.Ordinal)..];
        table = table[..table.IndexOf("\n\n", table.IndexOf("| layer", StringComparison.Ordinal), StringComparison.Ordinal)];
        return table.Split('\n').Where(l => l.StartsWith('|'))
            .Select(l => l.Split('|')[2])
            .Select(where => PathInRow().Matches(where).Select(m => m.Groups[1].Value == "kernels/IlgpuBert.Kernels" ? "Kernels" : m.Groups[2].Value).ToArray())
            .Where(row => row.Length > 0).ToList();
    }

    [GeneratedRegex(@"`(kernels/IlgpuBert\.Kernels|src/IlgpuBert/(\w+))`")]
    private static partial Regex PathInRow();

    [Fact]
    public void The_README_table_lists_every_folder_of_the_library_once()
    {
        string root = Root();
        var layers = Layers(File.ReadAllText(Path.Combine(root, "README.md")));
        var listed = layers.SelectMany(l => l).ToList();
        Assert.Equal(listed.Distinct().Count(), listed.Count);
        var folders = Directory.GetDirectories(Path.Combine(root, "src", "IlgpuBert")).Select(Path.GetFileName)
            .Where(d => d is not ("bin" or "obj") && Directory.EnumerateFiles(Path.Combine(root, "src", "IlgpuBert", d!), "*.cs").Any()).Append("Kernels");
        Assert.Equal(folders.Order(), listed.Order());
    }

    [Fact]
    public void No_file_uses_a_layer_above_its_own()
    {
        string root = Root();
        var layers = Layers(File.ReadAllText(Path.Combine(root, "README.md")));
        var rank = layers.SelectMany((row, i) => row.Select(ns => (ns, i))).ToDictionary(p => p.ns, p => p.i);
        var reference = new Regex(@"(?<![\w.])(?:IlgpuBert\.)?(" + string.Join("|", rank.Keys) + @")\.[A-Z]\w*");
        var violations = new List<string>();
        var files = Directory.EnumerateFiles(Path.Combine(root, "src", "IlgpuBert"), "*.cs", SearchOption.AllDirectories)
            .Concat(Directory.EnumerateFiles(Path.Combine(root, "kernels", "IlgpuBert.Kernels"), "*.cs", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"));
        int checkedFiles = 0;
        foreach (var file in files)
        {
            string relative = Path.GetRelativePath(root, file);
            string own = relative.StartsWith("kernels", StringComparison.Ordinal) ? "Kernels" : relative.Split(Path.DirectorySeparatorChar)[2];
            checkedFiles++;
            foreach (var (line, number) in File.ReadLines(file).Select((l, i) => (l, i + 1)))
            {
                string code = Code(line);
                var names = UsingLine().Match(code) is { Success: true } u ? [u.Groups[1].Value] : reference.Matches(code).Select(m => m.Groups[1].Value);
                foreach (var ns in names)
                {
                    if (!rank.TryGetValue(ns, out int r) || ns == own) continue;
                    bool up = own == "Kernels" || r > rank[own];
                    if (up) violations.Add($"{relative}:{number}: {own} uses {ns}: {line.Trim()}");
                }
            }
        }
        Assert.True(checkedFiles > 50, $"only {checkedFiles} files found");
        Assert.True(violations.Count == 0, $"{violations.Count} imports point up the layers of README.md's table:\n" + string.Join("\n", violations));
    }

    [GeneratedRegex(@"^\s*using\s+(?:static\s+)?IlgpuBert\.(\w+)")]
    private static partial Regex UsingLine();

    /// <summary>The line without its comment and string literals (a namespace named in prose is not a dependency).</summary>
    private static string Code(string line)
    {
        string trimmed = line.TrimStart();
        if (trimmed.StartsWith("//", StringComparison.Ordinal)) return "";
        line = Regex.Replace(line, "\"(?:[^\"\\\\]|\\\\.)*\"", "\"\"");
        int comment = line.IndexOf("//", StringComparison.Ordinal);
        return comment >= 0 ? line[..comment] : line;
    }
}
