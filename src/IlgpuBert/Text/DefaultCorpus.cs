// The embedded default corpus: the English reference documentation that ships with the .NET SDK
// (the XML doc files next to the reference assemblies in packs/Microsoft.NETCore.App.Ref/*/ref/*/).
// It is real prose present on every machine that can build IlgpuBert. Each documented member is
// one document: its summary, remarks, parameter and return descriptions, with cross-references
// (<see cref="T:System.String"/>) reduced to the referenced name.
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using System.Xml;
using System.Xml.Linq;

namespace IlgpuBert.Text;

/// <summary>One documented member: its doc ID (e.g. "M:System.IO.File.Copy(...)") and its prose.</summary>
public sealed record DocDocument(string Member, string Text);

public static partial class DefaultCorpus
{
    /// <summary>The folder of the newest reference pack's XML docs; throws when the SDK has none.</summary>
    public static string Folder()
    {
        foreach (var root in Roots())
        {
            var packs = Path.Combine(root, "packs", "Microsoft.NETCore.App.Ref");
            if (!Directory.Exists(packs)) continue;
            var best = Directory.GetDirectories(packs)
                .Select(d => (Dir: d, Version: Version.TryParse(Path.GetFileName(d).Split('-')[0], out var v) ? v : null))
                .Where(x => x.Version is not null).OrderByDescending(x => x.Version).Select(x => x.Dir)
                .SelectMany(d => Directory.Exists(Path.Combine(d, "ref")) ? Directory.GetDirectories(Path.Combine(d, "ref")) : [])
                .FirstOrDefault(d => Directory.GetFiles(d, "*.xml").Length > 0);
            if (best is not null) return best;
        }
        throw new InvalidOperationException("the default corpus needs the .NET SDK's reference pack (packs/Microsoft.NETCore.App.Ref); pass --corpus instead");
    }

    private static IEnumerable<string> Roots()
    {
        if (Environment.GetEnvironmentVariable("DOTNET_ROOT") is { Length: > 0 } env) yield return env;
        // .../shared/Microsoft.NETCore.App/<version>/ → the dotnet root three levels up.
        var runtime = new DirectoryInfo(RuntimeEnvironment.GetRuntimeDirectory());
        if (runtime.Parent?.Parent?.Parent is { } root) yield return root.FullName;
        yield return "/usr/share/dotnet";
        yield return "/usr/lib/dotnet";
    }

    /// <summary>Every &lt;member&gt; element of the reference docs, file by file in name order (unreadable files skipped).</summary>
    private static IEnumerable<XElement> Members()
    {
        foreach (var file in Directory.GetFiles(Folder(), "*.xml").Order(StringComparer.Ordinal))
        {
            XDocument doc;
            try { doc = XDocument.Load(file); }
            catch (XmlException) { continue; }
            foreach (var member in doc.Descendants("member")) yield return member;
        }
    }

    /// <summary>Every documented member with non-empty prose, file by file in name order.</summary>
    public static IEnumerable<DocDocument> Documents()
    {
        foreach (var member in Members())
        {
            var parts = member.Elements().Where(e => e.Name.LocalName is "summary" or "remarks" or "param" or "returns" or "value")
                .Select(Prose).Where(t => t.Length > 0);
            string text = string.Join(" ", parts);
            if (text.Length > 0) yield return new DocDocument((string?)member.Attribute("name") ?? "", text);
        }
    }

    /// <summary>Every documented member's summary (references reduced to names), file by file in name order.</summary>
    public static IEnumerable<DocDocument> Summaries() => Members().Select(SummaryOf).OfType<DocDocument>();

    /// <summary>A member's summary as a document, or null when it has none (or only an empty one).</summary>
    private static DocDocument? SummaryOf(XElement member) =>
        member.Element("summary") is { } summary && Prose(summary) is { Length: > 0 } text ? new DocDocument((string?)member.Attribute("name") ?? "", text) : null;

    /// <summary>
    /// The summaries of the documented types only (members named "T:…"), as <see cref="Summaries"/>
    /// gives them, read without building each file's tree: a fifth of the time of the whole corpus.
    /// </summary>
    public static IEnumerable<DocDocument> TypeSummaries()
    {
        // Whitespace-only text dropped, as XDocument.Load drops it for Summaries (the same texts).
        var settings = new XmlReaderSettings { DtdProcessing = DtdProcessing.Ignore, XmlResolver = null, IgnoreWhitespace = true };
        foreach (var file in Directory.GetFiles(Folder(), "*.xml").Order(StringComparer.Ordinal))
        {
            var found = new List<DocDocument>();
            try
            {
                using var reader = XmlReader.Create(file, settings);
                // ReadFrom leaves the reader on the node after the member, which may be the next member.
                while (reader.NodeType == XmlNodeType.Element && reader.Name == "member" || reader.ReadToFollowing("member"))
                {
                    string name = reader.GetAttribute("name") ?? "";
                    if (!name.StartsWith("T:", StringComparison.Ordinal))
                    {
                        reader.Skip();
                        continue;
                    }
                    if (SummaryOf((XElement)XNode.ReadFrom(reader)) is { } document) found.Add(document);
                }
            }
            catch (XmlException) { continue; } // as Members(): an unreadable file is skipped whole
            foreach (var d in found) yield return d;
        }
    }

    /// <summary>
    /// The documentation of one type as one document: the type's own text, then its members' in
    /// file order. Members alone are a sentence or two, too short for BERT's segment pairs.
    /// </summary>
    public static IEnumerable<(string Type, List<string> Texts)> TypeDocuments()
    {
        string? current = null;
        var texts = new List<string>();
        foreach (var d in Documents())
        {
            string type = TypeOf(d.Member);
            if (type != current && texts.Count > 0)
            {
                yield return (current!, texts);
                texts = new List<string>();
            }
            current = type;
            texts.Add(d.Text);
        }
        if (texts.Count > 0) yield return (current!, texts);
    }

    /// <summary>"M:System.IO.File.Copy(System.String)" → "System.IO.File"; "T:System.IO.File" → itself.</summary>
    public static string TypeOf(string member)
    {
        if (member.Length < 2 || member[1] != ':') return member;
        string name = member[2..];
        int paren = name.IndexOf('(');
        if (paren >= 0) name = name[..paren];
        if (member[0] == 'T') return name;
        int dot = name.LastIndexOf('.');
        return dot > 0 ? name[..dot] : name;
    }

    /// <summary>The text of a doc element with references reduced to names and whitespace collapsed.</summary>
    public static string Prose(XElement element)
    {
        var sb = new System.Text.StringBuilder();
        void Walk(XNode node)
        {
            switch (node)
            {
                case XText t:
                    sb.Append(t.Value);
                    break;
                case XElement e when e.Name.LocalName is "see" or "seealso" or "paramref" or "typeparamref":
                    string? target = (string?)e.Attribute("cref") ?? (string?)e.Attribute("name") ?? (string?)e.Attribute("langword");
                    if (e.Nodes().Any()) foreach (var n in e.Nodes()) Walk(n);
                    else if (target is not null) sb.Append(ShortName(target));
                    break;
                case XElement e:
                    foreach (var n in e.Nodes()) Walk(n);
                    break;
            }
        }
        Walk(element);
        return Whitespace().Replace(sb.ToString(), " ").Trim();
    }

    private static string ShortName(string cref)
    {
        string s = cref.Contains(':') ? cref[(cref.IndexOf(':') + 1)..] : cref;
        int paren = s.IndexOf('(');
        if (paren >= 0) s = s[..paren];
        s = s.Split('`')[0];
        return s[(s.LastIndexOf('.') + 1)..];
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();
}
