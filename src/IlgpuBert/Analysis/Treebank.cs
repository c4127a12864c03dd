// Dependency trees from CoNLL-U files (Universal Dependencies' format): one word per line with ten
// tab-separated columns, ID and HEAD the first and seventh; sentences end at a blank line, comments
// start with '#'. Multiword-token lines ("1-2") and empty nodes ("8.1") are not words of the basic
// tree and are skipped. Each tree is checked: IDs 1..n in order, every HEAD in 0..n, one root, no cycle.
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;

namespace IlgpuBert.Analysis;

/// <summary>A sentence's words and its tree: Heads[i] is word i's head (0-based), −1 for the root.</summary>
public sealed record DependencyTree(string[] Words, int[] Heads)
{
    /// <summary>Each word's relation to its head (DEPREL: nsubj, obj, …), where the file gives them.</summary>
    public string[]? Relations { get; init; }

    /// <summary>Each word's universal part of speech (UPOS: NOUN, PUNCT, …), where the file gives them.</summary>
    public string[]? Upos { get; init; }

    public int Root => Array.IndexOf(Heads, -1);

    /// <summary>The number of edges between every two words.</summary>
    public int[,] Distances()
    {
        int n = Words.Length;
        var neighbours = new List<int>[n];
        for (int i = 0; i < n; i++) neighbours[i] = [];
        for (int i = 0; i < n; i++)
            if (Heads[i] >= 0) { neighbours[i].Add(Heads[i]); neighbours[Heads[i]].Add(i); }
        var d = new int[n, n];
        var queue = new Queue<int>();
        for (int s = 0; s < n; s++)
        {
            for (int j = 0; j < n; j++) d[s, j] = -1;
            d[s, s] = 0;
            queue.Enqueue(s);
            while (queue.Count > 0)
            {
                int u = queue.Dequeue();
                foreach (int v in neighbours[u])
                    if (d[s, v] < 0) { d[s, v] = d[s, u] + 1; queue.Enqueue(v); }
            }
        }
        return d;
    }

    /// <summary>Each word's number of edges to the root.</summary>
    public int[] Depths()
    {
        var depth = new int[Words.Length];
        for (int i = 0; i < depth.Length; i++)
            for (int h = Heads[i]; h >= 0; h = Heads[h]) depth[i]++;
        return depth;
    }

    /// <summary>The undirected edges as (smaller, larger) index pairs.</summary>
    public HashSet<(int, int)> Edges() =>
        Enumerable.Range(0, Words.Length).Where(i => Heads[i] >= 0).Select(i => (Math.Min(i, Heads[i]), Math.Max(i, Heads[i]))).ToHashSet();
}

public static class Treebank
{
    /// <summary>Every sentence of a CoNLL-U file, checked as the header says.</summary>
    public static List<DependencyTree> Read(string path)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: no such CoNLL-U file");
        var trees = new List<DependencyTree>();
        var words = new List<string>();
        var heads = new List<int>();
        var relations = new List<string>();
        var upos = new List<string>();
        int start = 0, line = 0;
        void Flush()
        {
            if (words.Count == 0) return;
            string where = $"{path}:{start}";
            int n = words.Count;
            var h = heads.ToArray();
            for (int i = 0; i < n; i++)
                if (h[i] < 0 || h[i] > n) throw new DataFormatException($"{where}: word {i + 1} has head {h[i]}, outside 0..{n}");
            int roots = h.Count(v => v == 0);
            if (roots != 1) throw new DataFormatException($"{where}: a tree has one root (HEAD 0), this sentence has {roots}");
            var tree = new DependencyTree([.. words], h.Select(v => v - 1).ToArray()) { Relations = [.. relations], Upos = [.. upos] };
            for (int i = 0; i < n; i++)
            {
                int steps = 0;
                for (int k = tree.Heads[i]; k >= 0; k = tree.Heads[k])
                    if (++steps > n) throw new DataFormatException($"{where}: the heads of word {i + 1} form a cycle");
            }
            trees.Add(tree);
            words.Clear();
            heads.Clear();
            relations.Clear();
            upos.Clear();
        }
        foreach (var raw in BoundedFile.ReadAllLines(path, BoundedFile.DataBytes, "CoNLL-U file"))
        {
            line++;
            if (raw.Trim().Length == 0) { Flush(); continue; }
            if (raw.StartsWith('#')) continue;
            var columns = raw.Split('\t');
            if (columns.Length != 10) throw new DataFormatException($"{path}:{line}: a CoNLL-U line has 10 tab-separated columns, this one {columns.Length}");
            string id = columns[0];
            if (id.Contains('-') || id.Contains('.')) continue; // a multiword token or an empty node
            if (words.Count == 0) start = line;
            if (!int.TryParse(id, out int number) || number != words.Count + 1)
                throw new DataFormatException($"{path}:{line}: word ID \"{id}\" where {words.Count + 1} comes next");
            if (!int.TryParse(columns[6], out int head))
                throw new DataFormatException($"{path}:{line}: HEAD \"{columns[6]}\" is not a number");
            words.Add(columns[1]);
            heads.Add(head);
            relations.Add(columns[7]);
            upos.Add(columns[3]);
        }
        Flush();
        if (trees.Count == 0) throw new DataFormatException($"{path}: no sentences");
        return trees;
    }
}
