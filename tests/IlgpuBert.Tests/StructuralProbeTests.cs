// Structural probes (Hewitt & Manning 2019) where the answer is known: features that embed each tree
// exactly (word i = the sum of one direction per edge on its path to the root, so squared distances
// are tree distances and squared norms depths) are probed to UUAS, Spearman and root accuracy 1, and
// random features of the same trees are not; a treebank of linear chains on an encoder that encodes
// position gives the distance probe UUAS 1; CoNLL-U parsing and its refusals; MST and Spearman.
using IlgpuBert.Analysis;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class StructuralProbeTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static List<DependencyTree> RandomTrees(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            int n = rng.Next(5, 16);
            // A random tree over a random order of the words: each word after the first (in that order) attaches to an earlier one.
            var order = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
            var heads = new int[n];
            heads[order[0]] = -1;
            for (int i = 1; i < n; i++) heads[order[i]] = order[rng.Next(i)];
            return new DependencyTree(Enumerable.Range(0, n).Select(i => $"w{i}").ToArray(), heads);
        }).ToList();
    }

    /// <summary>Word i: one direction per edge on its path to the root (the edge from word c to its head is direction c).</summary>
    private static float[][] TreeEmbedding(DependencyTree tree, int dims) =>
        Enumerable.Range(0, tree.Words.Length).Select(i =>
        {
            var x = new float[dims];
            for (int c = i; tree.Heads[c] >= 0; c = tree.Heads[c]) x[c] = 1;
            return x;
        }).ToArray();

    [Fact]
    public void Features_that_embed_the_trees_are_probed_to_one_and_random_features_are_not()
    {
        const int dims = 16;
        var train = RandomTrees(300, 1);
        var eval = RandomTrees(100, 2);
        var options = new StructuralProbeOptions(Rank: dims, Epochs: 40);
        var exact = StructuralProbe.TrainAndEvaluate(train.Select(t => TreeEmbedding(t, dims)).ToList(), train, eval.Select(t => TreeEmbedding(t, dims)).ToList(), eval, options);
        Assert.True(exact.Uuas == 1.0, $"UUAS {exact.Uuas}");
        Assert.True(exact.RootAccuracy == 1.0, $"root accuracy {exact.RootAccuracy}");
        // Gold distances and depths are integers with many ties; a fit that is right to within less
        // than ½ but not exact breaks those ties at random, which alone costs Spearman a few hundredths.
        Assert.True(exact.DistanceSpearman > 0.9, $"distance Spearman {exact.DistanceSpearman}");
        Assert.True(exact.DepthSpearman > 0.9, $"depth Spearman {exact.DepthSpearman}");

        var rng = new Random(3);
        float[][] Noise(DependencyTree t) => t.Words.Select(_ => Enumerable.Range(0, dims).Select(_ => (float)rng.NextDouble()).ToArray()).ToArray();
        var random = StructuralProbe.TrainAndEvaluate(train.Select(Noise).ToList(), train, eval.Select(Noise).ToList(), eval, options);
        Assert.True(random.Uuas < 0.4, $"random features: UUAS {random.Uuas}");
        Assert.True(random.RootAccuracy < 0.4, $"random features: root accuracy {random.RootAccuracy}");
        Assert.True(random.DistanceSpearman < 0.3, $"random features: distance Spearman {random.DistanceSpearman}");
    }

    [Fact]
    public void Excluding_punctuation_scores_only_the_other_words()
    {
        const int dims = 16;
        var rng = new Random(8);
        // Each tree gains a final "." attached to a word that is not the root, whose features are noise in dimensions of
        // their own: the probe still fits every other word exactly, and only its view of "." is wrong.
        List<DependencyTree> WithPeriods(List<DependencyTree> trees) => trees.Select(t => new DependencyTree([.. t.Words, "."], [.. t.Heads, t.Root == 0 ? 1 : 0])
            { Upos = [.. t.Words.Select(_ => "NOUN"), "PUNCT"] }).ToList();
        float[][] Features(DependencyTree t) => [.. TreeEmbedding(t with { Words = t.Words[..^1], Heads = t.Heads[..^1] }, dims + 4)
            .Select(x => x.ToArray()), Enumerable.Range(0, dims + 4).Select(j => j < dims ? 0f : (float)rng.NextDouble() * 3).ToArray()];
        var train = WithPeriods(RandomTrees(300, 1));
        var eval = WithPeriods(RandomTrees(100, 2));
        var options = new StructuralProbeOptions(Rank: dims + 4, Epochs: 40);
        var (trainX, evalX) = (train.Select(Features).ToList(), eval.Select(Features).ToList());
        var without = StructuralProbe.TrainAndEvaluate(trainX, train, evalX, eval, options with { ExcludePunctuation = true });
        var with = StructuralProbe.TrainAndEvaluate(trainX, train, evalX, eval, options);
        Assert.True(without.Uuas == 1.0, $"punctuation excluded: UUAS {without.Uuas}");
        Assert.True(without.RootAccuracy == 1.0, $"punctuation excluded: root accuracy {without.RootAccuracy}");
        Assert.True(with.Uuas < 0.97, $"punctuation scored: UUAS {with.Uuas}");
        // The linear baseline drops the periods too: then every chain edge it proposes is between words.
        Assert.NotEqual(StructuralProbe.Linear(eval).Uuas, StructuralProbe.Linear(eval, excludePunctuation: true).Uuas);
    }

    private static string Conllu(IEnumerable<DependencyTree> trees) =>
        string.Concat(trees.Select((t, k) => $"# sent_id = {k}\n" + string.Concat(t.Words.Select((w, i) => $"{i + 1}\t{w}\t_\t_\t_\t_\t{t.Heads[i] + 1}\t_\t_\t_\n")) + "\n"));

    [Fact]
    public void Linear_chains_are_recovered_from_an_encoder_that_encodes_position_and_other_trees_are_not()
    {
        string[] words = ["a", "b", "c", "d", "e", "f"];
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(words));
        var encoder = BertTextEncoder.FromVocab(dir.File("vocab.txt"));
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = BertConfig.ForSize("tiny", encoder.Vocabulary.Count) with { HiddenSize = 32, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 24 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(1);
        // Words carry nothing: the embedding layer's output is a function of the position alone.
        model.Parameters.Set("bert.embeddings.word_embeddings.weight", new float[encoder.Vocabulary.Count * config.HiddenSize]);
        var analyzer = new Analyzer(model, encoder, [.. encoder.Vocabulary]);
        var rng = new Random(4);
        List<DependencyTree> Chains(int count) => Enumerable.Range(0, count).Select(_ =>
        {
            int n = rng.Next(5, 16);
            return new DependencyTree(Enumerable.Range(0, n).Select(_ => words[rng.Next(words.Length)]).ToArray(), Enumerable.Range(-1, n).ToArray());
        }).ToList();
        File.WriteAllText(dir.File("train.conllu"), Conllu(Chains(200)));
        File.WriteAllText(dir.File("eval.conllu"), Conllu(Chains(60)));
        var train = Treebank.Read(dir.File("train.conllu"));
        var eval = Treebank.Read(dir.File("eval.conllu"));
        Assert.Equal(200, train.Count);
        Assert.All(eval, t => Assert.Equal(Enumerable.Range(-1, t.Words.Length), t.Heads));
        var options = new StructuralProbeOptions(Rank: 32, Epochs: 80);
        var trainX = StructuralProbe.WordFeatures(analyzer, encoder, train, out var kept);
        var evalX = StructuralProbe.WordFeatures(analyzer, encoder, eval, out _);
        Assert.Equal(train.Count, kept.Count);
        var chain = StructuralProbe.TrainAndEvaluate(trainX[0], train, evalX[0], eval, options);
        Assert.True(chain.Uuas == 1.0, $"chains from position: UUAS {chain.Uuas}");
        Assert.True(chain.RootAccuracy == 1.0, $"chains from position: root accuracy {chain.RootAccuracy}");
        Assert.Equal(1.0, StructuralProbe.Linear(eval).Uuas);

        // The same position-only features cannot give trees that position does not determine.
        var trees = RandomTrees(200, 5).Select(t => t with { Words = t.Words.Select(_ => words[rng.Next(words.Length)]).ToArray() }).ToList();
        var evalTrees = RandomTrees(60, 6).Select(t => t with { Words = t.Words.Select(_ => words[rng.Next(words.Length)]).ToArray() }).ToList();
        var other = StructuralProbe.TrainAndEvaluate(StructuralProbe.WordFeatures(analyzer, encoder, trees, out _)[0], trees,
            StructuralProbe.WordFeatures(analyzer, encoder, evalTrees, out _)[0], evalTrees, options);
        Assert.True(other.Uuas < 0.5, $"random trees from position: UUAS {other.Uuas}");
    }

    [Fact]
    public void CoNLL_U_skips_multiword_tokens_empty_nodes_and_comments_and_refuses_broken_trees()
    {
        File.WriteAllText(dir.File("ok.conllu"),
            "# text = Don't go.\n1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tDo\tdo\tAUX\t_\t_\t3\taux\t_\t_\n2\tn't\tnot\tPART\t_\t_\t3\tadvmod\t_\t_\n"
            + "3\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n3.1\tgo\tgo\tVERB\t_\t_\t_\t_\t3:conj\t_\n4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n\n"
            + "1\tYes\tyes\tINTJ\t_\t_\t0\troot\t_\t_\n");
        var trees = Treebank.Read(dir.File("ok.conllu"));
        Assert.Equal(2, trees.Count);
        Assert.Equal(["Do", "n't", "go", "."], trees[0].Words);
        Assert.Equal([2, 2, -1, 2], trees[0].Heads);
        Assert.Equal(["AUX", "PART", "VERB", "PUNCT"], trees[0].Upos);
        Assert.Equal(2, trees[0].Root);
        Assert.Equal([1, 1, 0, 1], trees[0].Depths());
        Assert.Equal(2, trees[0].Distances()[0, 3]);
        Assert.Equal([-1], trees[1].Heads);

        void Refused(string text, string message)
        {
            File.WriteAllText(dir.File("bad.conllu"), text);
            var e = Assert.Throws<DataFormatException>(() => Treebank.Read(dir.File("bad.conllu")));
            Assert.Contains(message, e.Message);
        }
        Refused("1\ta\t_\t_\t_\t_\t0\t_\t_\t_\n2\tb\t_\t_\t_\t_\t0\t_\t_\t_\n", "has 2");
        Refused("1\ta\t_\t_\t_\t_\t2\t_\t_\t_\n2\tb\t_\t_\t_\t_\t1\t_\t_\t_\n3\tc\t_\t_\t_\t_\t0\t_\t_\t_\n", "cycle");
        Refused("1\ta\t_\t_\t_\t_\t5\t_\t_\t_\n2\tb\t_\t_\t_\t_\t0\t_\t_\t_\n", "outside 0..2");
        Refused("1\ta\t_\t_\t_\t_\t0\t_\t_\t_\n3\tb\t_\t_\t_\t_\t1\t_\t_\t_\n", "where 2 comes next");
        Refused("1\ta\t_\t_\t_\t_\t0\n", "10 tab-separated columns");
        Refused("1\ta\t_\t_\t_\t_\tx\t_\t_\t_\n", "is not a number");
        Refused("# only a comment\n", "no sentences");
    }

    [Fact]
    public void The_spanning_tree_and_Spearman_are_the_textbook_ones()
    {
        // Four points on a line at 0, 1, 3, 7: the MST is the chain.
        double[] at = [0, 1, 3, 7];
        var d = at.Select(a => at.Select(b => Math.Abs(a - b)).ToArray()).ToArray();
        Assert.Equal(new HashSet<(int, int)> { (0, 1), (1, 2), (2, 3) }, StructuralProbe.MinimumSpanningTree(d));
        Assert.Equal(1.0, StructuralProbe.Spearman([1, 2, 3, 4], [10, 20, 30, 40]), 12);
        Assert.Equal(-1.0, StructuralProbe.Spearman([1, 2, 3, 4], [4, 3, 2, 1]), 12);
        // Ties take their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2) → ρ = 1.5 / √(1.5 · 2).
        Assert.Equal(1.5 / Math.Sqrt(3.0), StructuralProbe.Spearman([5, 5, 9], [1, 2, 3]), 12);
        Assert.True(double.IsNaN(StructuralProbe.Spearman([1, 1, 1], [1, 2, 3])));
    }

    [Fact]
    public void The_cli_writes_per_layer_scores_and_baselines_and_refuses_a_broken_treebank()
    {
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(["a", "b", "c"]));
        var (code, _, err) = CliRunner.Run("init", "--size", "tiny", "--vocab", dir.File("vocab.txt"), "--out", dir.File("m"), "--device", "cpu");
        Assert.True(code == 0, err);
        var trees = RandomTrees(30, 7).Select(t => t with { Words = t.Words.Select((_, i) => "abc"[i % 3].ToString()).ToArray() }).ToList();
        File.WriteAllText(dir.File("train.conllu"), Conllu(trees[..20]));
        File.WriteAllText(dir.File("eval.conllu"), Conllu(trees[20..]));
        (code, var stdout, err) = CliRunner.Run("analyze", "structural-probe", "--model", dir.File("m"), "--train", dir.File("train.conllu"), "--eval", dir.File("eval.conllu"),
            "--epochs", "3", "--out", dir.File("out"), "--device", "cpu");
        Assert.True(code == 0, err);
        var csv = File.ReadAllLines(dir.File("out/structural-probe.csv"));
        Assert.Equal("layer,uuas,distance_spearman,root_accuracy,depth_spearman,random_model_uuas,random_model_distance_spearman,random_model_root_accuracy,random_model_depth_spearman", csv[0]);
        Assert.Equal(["embeddings", "1", "2"], csv.Skip(1).Select(l => l.Split(',')[0]));
        Assert.Equal(["position", "linear"], File.ReadAllLines(dir.File("out/baselines.csv")).Skip(1).Select(l => l.Split(',')[0]));
        Assert.True(File.Exists(dir.File("out/structural-probe.png")));
        Assert.Contains("Hewitt and Manning (2019)", stdout);

        File.WriteAllText(dir.File("bad.conllu"), "1\ta\t_\t_\t_\t_\t2\t_\t_\t_\n2\tb\t_\t_\t_\t_\t1\t_\t_\t_\n");
        (code, _, err) = CliRunner.Run("analyze", "structural-probe", "--model", dir.File("m"), "--train", dir.File("bad.conllu"), "--eval", dir.File("eval.conllu"),
            "--out", dir.File("out2"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("bad.conllu:1: a tree has one root", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(Directory.Exists(dir.File("out2")));
    }
}
