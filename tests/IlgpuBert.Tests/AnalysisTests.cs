using IlgpuBert.Analysis;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class AnalysisTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Head_statistics_match_hand_computed_values_on_constructed_maps()
    {
        // Tokens: [CLS] a , b [SEP]; head 0 attends to the previous token (the first row to itself),
        // head 1 spreads evenly over [CLS] and [SEP].
        string[] tokens = ["[CLS]", "a", ",", "b", "[SEP]"];
        int s = 5;
        var probs = new float[2 * s * s];
        for (int i = 0; i < s; i++)
        {
            probs[i * s + Math.Max(i - 1, 0)] = 1f;
            probs[(s + i) * s + 0] = 0.5f;
            probs[(s + i) * s + 4] = 0.5f;
        }
        var kinds = HeadStatistics.Kinds(tokens);
        Assert.Equal("cwpws", new string(kinds));
        var prev = HeadStatistics.Compute(probs, s, 0, kinds);
        Assert.Equal(0, prev.Entropy, 12);
        Assert.Equal(4 / 5.0, prev.ToPrevious, 12);
        Assert.Equal(1 / 5.0, prev.ToSelf, 12);     // row 0 attends to itself
        Assert.Equal(2 / 5.0, prev.ToCls, 12);      // rows 0 and 1
        Assert.Equal(1 / 5.0, prev.ToPunctuation, 12); // row 3 → ","
        Assert.Equal(0, prev.ToNext, 12);
        Assert.Equal(HeadPattern.Diagonal, HeadStatistics.Classify(prev, 1.0));
        var vertical = HeadStatistics.Compute(probs, s, 1, kinds);
        Assert.Equal(Math.Log(2), vertical.Entropy, 6);
        Assert.Equal(0.5, vertical.ToCls, 6);
        Assert.Equal(0.5, vertical.ToSep, 6);
        Assert.Equal((0.5 + 0.5) / 5, vertical.ToSelf, 6); // rows 0 and 4 attend to themselves by half
        Assert.Equal(HeadPattern.Vertical, HeadStatistics.Classify(vertical, 1.0));
        // Two segments [0..2] and [3..4]: head 1 keeps 0.5 inside for rows 0–2 and 0.5 for rows 3–4.
        Assert.Equal(0.5, HeadStatistics.WithinSegment(probs, s, 1, [0, 0, 0, 1, 1]), 6);
        Assert.Equal(HeadPattern.Block, HeadStatistics.Classify(new HeadStats(1, 0.1, 0.1, 0, 0.1, 0.1, 0.1), 0.9));
        Assert.Equal(HeadPattern.Heterogeneous, HeadStatistics.Classify(new HeadStats(1, 0.1, 0.1, 0, 0.1, 0.1, 0.1), 0.5));
    }

    [Fact]
    public void Probe_learns_is_sep_near_perfectly_at_every_layer_of_a_random_model()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Enumerable.Range(0, 40).Select(i => $"w{i}")));
        var encoder = BertTextEncoder.FromVocab(dir.File("vocab.txt"));
        var config = BertConfig.ForSize("tiny", 45) with { HiddenSize = 32, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 32 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(3);
        var rng = new Random(4);
        List<ProbeItem> Items(int n) => Enumerable.Range(0, n).Select(_ =>
        {
            var ids = new[] { 2 }.Concat(Enumerable.Range(0, rng.Next(3, 8)).Select(_ => rng.Next(5, 45))).Append(3)
                .Concat(Enumerable.Range(0, rng.Next(2, 5)).Select(_ => rng.Next(5, 45))).Append(3).ToArray();
            var input = BertInputs.FromRows([ids]);
            return new ProbeItem(input, Enumerable.Range(0, ids.Length).ToArray(), ids.Select(t => t == 3 ? 1 : 0).ToArray());
        }).ToList();
        var analyzer = new Analyzer(model, encoder, File.ReadAllLines(dir.File("vocab.txt")));
        var accuracy = analyzer.Probe(Items(40), Items(20), 2);
        Assert.Equal(config.NumHiddenLayers + 1, accuracy.Length);
        Assert.All(accuracy, a => Assert.True(a >= 0.97, $"accuracy {a}"));
    }

    [Fact]
    public void Similarity_of_identical_texts_is_one_within_words()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(["a", "b", "c", "d"]));
        var config = BertConfig.ForSize("tiny", 9) with { HiddenSize = 16, NumAttentionHeads = 2, IntermediateSize = 32, MaxPositionEmbeddings = 16 };
        using var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(5);
        var analyzer = new Analyzer(model, BertTextEncoder.FromVocab(dir.File("vocab.txt")), File.ReadAllLines(dir.File("vocab.txt")));
        // The same word in the same context is the same vector: self-similarity 1 at every layer.
        var (aniso, intra, self) = analyzer.Similarity(["a b c", "a b c", "a b c"]);
        Assert.All(self, v => Assert.Equal(1.0, v, 5));
        Assert.All(intra, v => Assert.InRange(v, -1.0, 1.0));
        Assert.All(aniso, v => Assert.InRange(v, -1.0, 1.0));
    }

    [Fact]
    public void Every_analyze_command_works_on_a_random_and_a_pretrained_model()
    {
        File.WriteAllLines(dir.File("corpus.txt"), DefaultCorpus.TypeDocuments().Take(30).SelectMany(d => d.Texts.Append("")));
        var (code, _, err) = CliRunner.Run("init", "--size", "tiny", "--vocab-size", "500", "--out", dir.File("random"), "--device", "cpu");
        Assert.True(code == 0, err);
        (code, _, err) = CliRunner.Run("pretrain", "--corpus", dir.File("corpus.txt"), "--vocab-size", "500", "--steps", "5", "--batch-size", "4",
            "--seq-len", "32", "--eval-every", "0", "--out", dir.File("trained"), "--device", "cpu");
        Assert.True(code == 0, err);
        File.WriteAllLines(dir.File("tags.conll"), ["Gets VERB", "the DET", "value NOUN", "", "Returns VERB", "a DET", "collection NOUN", "",
            "Copies VERB", "the DET", "file NOUN", ""]);
        File.WriteAllLines(dir.File("sent.tsv"), ["Gets the value.\tget", "Returns a collection.\tret", "Gets a file.\tget", "Returns the value.\tret"]);
        foreach (var model in new[] { "random", "trained" })
        {
            string m = dir.File(model), o = dir.File($"out-{model}");
            (code, _, err) = CliRunner.Run("analyze", "attention", "--model", m, "--text", "Gets the value.", "--pair", "Returns it.", "--out", o + "/att", "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.True(File.Exists(o + "/att/layer1-head1.png") && File.Exists(o + "/att/all-heads.png"));
            var att = SafeTensors.Read(o + "/att/attentions.safetensors");
            Assert.Equal(2, att["attentions.0"].Shape[0]);
            (code, var heads, err) = CliRunner.Run("analyze", "heads", "--model", m, "--corpus", dir.File("corpus.txt"), "--max-texts", "20", "--out", o + "/heads", "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.Contains("pattern rule", heads);
            Assert.Equal(1 + 2 * 2, File.ReadAllLines(o + "/heads/heads.csv").Length);
            Assert.True(File.Exists(o + "/heads/entropy.png"));
            (code, var probe, err) = CliRunner.Run("analyze", "probe", "--model", m, "--train", dir.File("tags.conll"), "--eval", dir.File("tags.conll"), "--out", o + "/probe", "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.StartsWith("layer,accuracy,random_model_accuracy", probe);
            Assert.Equal(4, File.ReadAllLines(o + "/probe/probe.csv").Length);
            (code, _, err) = CliRunner.Run("analyze", "probe", "--model", m, "--train", dir.File("sent.tsv"), "--eval", dir.File("sent.tsv"), "--out", o + "/probe-s", "--device", "cpu");
            Assert.True(code == 0, err);
            (code, _, err) = CliRunner.Run("analyze", "similarity", "--model", m, "--corpus", dir.File("corpus.txt"), "--max-texts", "20", "--out", o + "/sim", "--device", "cpu");
            Assert.True(code == 0, err);
            Assert.True(File.Exists(o + "/sim/similarity.png"));
        }
        File.WriteAllLines(dir.File("bad.tsv"), ["Gets the value.\tunseen"]);
        (code, _, err) = CliRunner.Run("analyze", "probe", "--model", dir.File("random"), "--train", dir.File("sent.tsv"), "--eval", dir.File("bad.tsv"), "--out", dir.File("x"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("does not occur in the training file", err);
    }
}
