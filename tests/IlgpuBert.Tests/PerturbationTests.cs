// Sensitivity to malformed input (Ettinger 2020): a model with no position information is a bag of
// words, so shuffling whole words leaves its predictions exactly as they were (classifier and MLM),
// while the same model with position embeddings moves; the perturbations do what they are named
// (n-grams kept whole, halves, tagged words gone), the masked word survives every one of them, and
// tag files that do not fit the texts are refused.
using IlgpuBert.Analysis;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class PerturbationTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static readonly string[] Vocabulary = ["red", "green", "blue", "cat", "dog", "sees", "runs", "big", "small", "the", "a", "and"];

    private BertTextEncoder Encoder()
    {
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Vocabulary));
        return BertTextEncoder.FromVocab(dir.File("vocab.txt"));
    }

    private static List<string> Texts(int count, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => string.Join(' ', Enumerable.Range(0, rng.Next(4, 11)).Select(_ => Vocabulary[rng.Next(Vocabulary.Length)]))).ToList();
    }

    private static BertConfig Config(BertTextEncoder encoder) =>
        BertConfig.ForSize("tiny", encoder.Vocabulary.Count) with { HiddenSize = 32, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 16 };

    /// <summary>Random weights scaled up (so that predictions depend on the input), position embeddings zeroed when <paramref name="bagOfWords"/>.</summary>
    private static void Randomise(BertParameters parameters, int seed, bool bagOfWords)
    {
        parameters.Initialize(seed);
        foreach (var name in parameters.Names.Where(n => !n.Contains("LayerNorm")).ToList())
            parameters.Set(name, parameters.Get(name).Select(v => v * 25).ToArray());
        if (bagOfWords) parameters.Set("bert.embeddings.position_embeddings.weight", new float[parameters.Get("bert.embeddings.position_embeddings.weight").Length]);
    }

    [Fact]
    public void A_bag_of_words_model_is_exactly_insensitive_to_shuffled_words_and_a_positional_one_is_not()
    {
        var encoder = Encoder();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var texts = Texts(200, 1);
        var labels = new[] { "x", "y", "z" };
        var examples = texts.Select((t, i) => new TaskExample { Text = t, Label = labels[i % 3] }).ToList();
        foreach (bool bag in new[] { true, false })
        {
            using var classifier = new BertForTask(device, Config(encoder), new TaskSpec(TaskKind.Classification, labels));
            Randomise(classifier.Parameters, 3, bag);
            var rows = Perturbation.Classifier(classifier, encoder, examples, null, seed: 5);
            Assert.Equal(["none", "shuffle-1", "shuffle-2", "shuffle-3", "truncate"], rows.Select(r => r.Perturbation));
            Assert.Equal(1.0, rows[0].SamePrediction);
            using var mlm = new BertForPreTraining(device, Config(encoder));
            Randomise(mlm.Parameters, 4, bag);
            var masked = Perturbation.MaskedLanguageModel(mlm, encoder, texts, null, out int skipped, seed: 5);
            Assert.Equal(0, skipped);
            foreach (var shuffle in new[] { "shuffle-1", "shuffle-2", "shuffle-3" })
            {
                double same = rows.Single(r => r.Perturbation == shuffle).SamePrediction, sameTop1 = masked.Single(r => r.Perturbation == shuffle).SamePrediction;
                if (bag)
                {
                    Assert.True(same == 1.0, $"bag of words, {shuffle}: {same} of the classifier's predictions unchanged");
                    Assert.True(sameTop1 == 1.0, $"bag of words, {shuffle}: {sameTop1} of the MLM's top-1 unchanged");
                }
                else
                {
                    Assert.True(same < 0.95, $"with positions, {shuffle}: {same} of the classifier's predictions unchanged");
                    Assert.True(sameTop1 < 0.95, $"with positions, {shuffle}: {sameTop1} of the MLM's top-1 unchanged");
                }
            }
            // A truncated input is another bag: it moves even the bag-of-words model.
            Assert.True(masked.Single(r => r.Perturbation == "truncate").SamePrediction < 1.0);
        }
    }

    [Fact]
    public void Each_perturbation_does_what_it_is_named_and_the_mask_survives()
    {
        string[] words = ["a", "b", "c", "d", "e", "f", "g"];
        var rng = new Random(2);
        for (int n = 1; n <= 3; n++)
            for (int trial = 0; trial < 20; trial++)
            {
                var shuffled = Perturbation.Apply($"shuffle-{n}", words, null, rng);
                Assert.Equal(words.Order(), shuffled.Order());
                // Every n-gram of the original (cut from the start) is still contiguous and in order.
                var joined = string.Join(' ', shuffled);
                foreach (var gram in words.Chunk(n)) Assert.Contains(string.Join(' ', gram), joined);
            }
        Assert.Equal(["a", "b", "c", "d"], Perturbation.Apply("truncate", words, null, rng));
        Assert.Equal(["a", "b"], Perturbation.Apply("truncate", ["a", "b", "c"], null, rng));
        string[] tags = ["SUBJ", "_", "OBJ", "O", "SUBJ", "_", "_"];
        Assert.Equal(["b", "c", "d", "f", "g"], Perturbation.Apply("remove-SUBJ", words, tags, rng));
        Assert.Equal(["shuffle-1", "shuffle-2", "shuffle-3", "truncate", "remove-OBJ", "remove-SUBJ"], Perturbation.Names(tags));
        Assert.Throws<ArgumentException>(() => Perturbation.Apply("reverse", words, null, rng));

        // The MLM's masked word is a one-piece, untagged word of the first half: present after every perturbation.
        var encoder = Encoder();
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var mlm = new BertForPreTraining(device, Config(encoder));
        Randomise(mlm.Parameters, 1, bagOfWords: false);
        var texts = new List<string> { "the cat sees a dog", "red zzzz blue", "zzzz qqqq" };
        File.WriteAllLines(dir.File("tags.txt"), ["SUBJ O O O OBJ", "_ _ _", "_ _"]);
        var tagLines = Perturbation.ReadTags(dir.File("tags.txt"), texts);
        var rows = Perturbation.MaskedLanguageModel(mlm, encoder, texts, tagLines, out int skipped);
        Assert.Equal(1, skipped); // "zzzz qqqq": no word of the vocabulary
        Assert.All(rows, r => Assert.Equal(2, r.Examples));
        Assert.Equal(["none", "shuffle-1", "shuffle-2", "shuffle-3", "truncate", "remove-OBJ", "remove-SUBJ"], rows.Select(r => r.Perturbation));
        Assert.Equal(2, rows.Single(r => r.Perturbation == "truncate").InputsChanged);
        Assert.Equal(1, rows.Single(r => r.Perturbation == "remove-SUBJ").InputsChanged); // "red zzzz blue" has no tag

        File.WriteAllLines(dir.File("short.txt"), ["SUBJ O O O", "_ _ _", "_ _"]);
        Assert.Contains("4 tags for the 5 words", Assert.Throws<DataFormatException>(() => Perturbation.ReadTags(dir.File("short.txt"), texts)).Message);
        File.WriteAllLines(dir.File("few.txt"), ["SUBJ O O O OBJ"]);
        Assert.Contains("1 lines of tags for 3", Assert.Throws<DataFormatException>(() => Perturbation.ReadTags(dir.File("few.txt"), texts)).Message);
    }

    [Fact]
    public void The_cli_scores_a_classifier_and_an_mlm_and_refuses_a_model_with_neither_head()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        string pretrained = FineTuningTests.PretrainedModel(dir, device);
        FineTuningTests.WriteClassification(dir.File("train.tsv"), 48, 1);
        FineTuningTests.WriteClassification(dir.File("dev.tsv"), 24, 2);
        var (code, stdout, err) = CliRunner.Run("finetune", "--model", pretrained, "--train", dir.File("train.tsv"), "--eval", dir.File("dev.tsv"), "--out", dir.File("clf"),
            "--epochs", "1", "--batch-size", "16", "--text-column", "sentence", "--device", "cpu");
        Assert.True(code == 0, err);
        var texts = File.ReadAllLines(dir.File("dev.tsv")).Skip(1).Select(l => l.Split('\t')[1]).ToList();
        File.WriteAllLines(dir.File("tags.txt"), texts.Select(t => string.Join(' ', Perturbation.Words(t).Select((_, i) => i == 0 ? "SUBJ" : "_"))));
        (code, stdout, err) = CliRunner.Run("analyze", "perturbation", "--model", dir.File("clf"), "--eval", dir.File("dev.tsv"), "--tags", dir.File("tags.txt"),
            "--text-column", "sentence", "--out", dir.File("out"), "--device", "cpu");
        Assert.True(code == 0, err);
        var csv = File.ReadAllLines(dir.File("out/perturbation.csv"));
        Assert.Equal("perturbation,examples,inputs_changed,accuracy,same_prediction_as_unperturbed", csv[0]);
        Assert.Equal(["none", "shuffle-1", "shuffle-2", "shuffle-3", "truncate", "remove-SUBJ"], csv.Skip(1).Select(l => l.Split(',')[0]));
        Assert.StartsWith("none,24,0,", csv[1]);
        Assert.StartsWith("remove-SUBJ,24,24,", csv[^1]); // every text's first word is tagged
        Assert.EndsWith(",1", csv[1]);
        Assert.Contains("Ettinger (2020)", stdout);
        Assert.True(File.Exists(dir.File("out/perturbation.png")));

        // A treebank: unlabelled (accuracy blank, flips measured), subjects and objects tagged from its relations.
        File.WriteAllText(dir.File("t.conllu"), "1\tthe\t_\t_\t_\t_\t2\tdet\t_\t_\n2\tcat\t_\t_\t_\t_\t3\tnsubj\t_\t_\n3\tsees\t_\t_\t_\t_\t0\troot\t_\t_\n"
            + "4\ta\t_\t_\t_\t_\t5\tdet\t_\t_\n5\tdog\t_\t_\t_\t_\t3\tobj\t_\t_\n\n");
        Assert.Equal(["SUBJ", "SUBJ", "_", "OBJ", "OBJ"], Perturbation.TagsFromTrees(IlgpuBert.Analysis.Treebank.Read(dir.File("t.conllu")))[0]);
        (code, stdout, err) = CliRunner.Run("analyze", "perturbation", "--model", dir.File("clf"), "--eval", dir.File("t.conllu"), "--out", dir.File("out-tb"), "--device", "cpu");
        Assert.True(code == 0, err);
        var tb = File.ReadAllLines(dir.File("out-tb/perturbation.csv"));
        Assert.Equal(["none,1,0,,1", "remove-OBJ", "remove-SUBJ"], [tb[1], tb[^2].Split(',')[0], tb[^1].Split(',')[0]]);

        File.WriteAllLines(dir.File("texts.txt"), texts);
        (code, stdout, err) = CliRunner.Run("analyze", "perturbation", "--model", pretrained, "--eval", dir.File("texts.txt"), "--out", dir.File("out-mlm"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal("perturbation,examples,inputs_changed,top1_is_original_word,same_prediction_as_unperturbed", File.ReadAllLines(dir.File("out-mlm/perturbation.csv"))[0]);

        (code, _, err) = CliRunner.Run("analyze", "perturbation", "--model", RealModelTests.ImportedMiniLm.Value, "--out", dir.File("out2"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("neither a fine-tuned classifier nor", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(Directory.Exists(dir.File("out2")));
    }
}
