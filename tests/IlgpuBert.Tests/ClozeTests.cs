// Cloze probing (LAMA): a model trained to answer a facts file answers it (P@1 1.0), the same model
// before training does not, multi-piece objects are counted and skipped, ranks and per-relation
// scores are what the logits say, bad facts files and a model without an MLM head are refused.
using IlgpuBert.Analysis;
using IlgpuBert.Autograd;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;
using IlgpuBert.Training;

namespace IlgpuBert.Tests;

public class ClozeTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static readonly string[] Words =
        ["paris", "berlin", "rome", "madrid", "france", "germany", "italy", "spain", "is", "the", "capital", "of", "speaks", "french", "german", "italian", "spanish", "in", ".", "new", "##york", "usa"];

    private static readonly ClozeFact[] Facts =
    [
        new("capital", "[X] is the capital of [Y].", "Paris", "France"),
        new("capital", "[X] is the capital of [Y].", "Berlin", "Germany"),
        new("capital", "[X] is the capital of [Y].", "Rome", "Italy"),
        new("capital", "[X] is the capital of [Y].", "Madrid", "Spain"),
        new("language", "[X] speaks [Y].", "France", "French"),
        new("language", "[X] speaks [Y].", "Germany", "German"),
        new("language", "[X] speaks [Y].", "Italy", "Italian"),
        new("language", "[X] speaks [Y].", "Spain", "Spanish"),
        new("capital", "[X] is in [Y].", "USA", "New York"), // two pieces (new ##york): skipped, as LAMA skips it
    ];

    private BertTextEncoder Encoder()
    {
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Words));
        return BertTextEncoder.FromVocab(dir.File("vocab.txt"));
    }

    private static BertForPreTraining Model(BertDevice device, int vocab)
    {
        var config = BertConfig.ForSize("tiny", vocab) with { HiddenSize = 32, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 16 };
        var model = new BertForPreTraining(device, config);
        model.Parameters.Initialize(5);
        return model;
    }

    /// <summary>MLM on exactly the cloze queries, the object as the label at [MASK]: the model learns the facts by heart.</summary>
    private static void TrainOnFacts(BertForPreTraining model, BertTextEncoder encoder, IEnumerable<ClozeFact> facts, int steps)
    {
        var rows = facts.Select(f => (Ids: encoder.EncodeRow(f.Query, null, 16).Ids, Object: encoder.Encode(f.Object))).Where(r => r.Object.Length == 1).ToList();
        var inputs = encoder.Pad(rows.Select(r => (r.Ids, new int[r.Ids.Length])).ToList());
        var labels = Enumerable.Repeat(-100, inputs.Batch * inputs.SeqLen).ToArray();
        for (int r = 0; r < rows.Count; r++) labels[r * inputs.SeqLen + Array.IndexOf(rows[r].Ids, encoder.MaskId)] = rows[r].Object[0];
        using var optimizer = new AdamWOptimizer(model.Device, model.Parameters.All.ToList(), new AdamWSettings(WeightDecay: 0));
        for (int step = 0; step < steps; step++)
        {
            model.ZeroGrad();
            using (var tape = new Tape())
            {
                model.Forward(tape, inputs with { Labels = labels }, Dropouts.Off, maskedOnly: true);
                tape.Backward();
            }
            optimizer.GradNorm();
            optimizer.Update(1e-2f);
        }
    }

    [Fact]
    public void A_model_trained_on_the_facts_answers_them_and_the_untrained_one_does_not()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var encoder = Encoder();
        using var model = Model(device, encoder.Vocabulary.Count);
        var (before, _) = Cloze.Run(model, encoder, Facts);
        Assert.All(before, s => Assert.True(s.PrecisionAt1 < 0.5, $"{s.Relation}: P@1 {s.PrecisionAt1} before training"));
        TrainOnFacts(model, encoder, Facts, 150);
        var (scores, answers) = Cloze.Run(model, encoder, Facts, batchSize: 3); // batches across relations
        Assert.Equal(["capital", "language"], scores.Select(s => s.Relation));
        var capital = scores[0];
        Assert.Equal((5, 4, 1), (capital.Facts, capital.Scored, capital.Skipped));
        Assert.All(scores, s => Assert.Equal((1.0, 1.0, 1.0), (s.PrecisionAt1, s.PrecisionAt10, s.Mrr)));
        Assert.Equal(["france", "germany", "italy", "spain", "french", "german", "italian", "spanish", ""], answers.Select(a => a.Top1));
        Assert.Equal(0, answers[^1].Rank);
    }

    [Fact]
    public void Ranks_and_scores_are_what_the_logits_say()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var encoder = Encoder();
        using var model = Model(device, encoder.Vocabulary.Count);
        var facts = Facts[..8];
        var (scores, answers) = Cloze.Run(model, encoder, facts);
        var special = new[] { encoder.PadId, encoder.UnknownId, encoder.ClsId, encoder.SepId, encoder.MaskId };
        for (int i = 0; i < facts.Length; i++)
        {
            // The reference: the full [B, S, V] logits of the query alone, ranked here.
            var (ids, _) = encoder.EncodeRow(facts[i].Query, null, 16);
            using var tape = new Tape(recording: false);
            var logits = model.Forward(tape, BertInputs.FromRows([ids]), Dropouts.Off).PredictionLogits.Value.ToHost();
            int v = encoder.Vocabulary.Count, at = Array.IndexOf(ids, encoder.MaskId), target = encoder.Encode(facts[i].Object)[0];
            var candidates = Enumerable.Range(0, v).Where(j => !special.Contains(j)).ToList();
            int rank = 1 + candidates.Count(j => logits[at * v + j] > logits[at * v + target]);
            Assert.Equal(rank, answers[i].Rank);
            Assert.Equal(encoder.Vocabulary[candidates.MaxBy(j => logits[at * v + j])], answers[i].Top1);
        }
        foreach (var s in scores)
        {
            var ranks = answers.Where(a => a.Fact.Relation == s.Relation).Select(a => a.Rank).ToList();
            Assert.Equal(ranks.Average(r => r == 1 ? 1.0 : 0), s.PrecisionAt1, 12);
            Assert.Equal(ranks.Average(r => r <= 10 ? 1.0 : 0), s.PrecisionAt10, 12);
            Assert.Equal(ranks.Average(r => 1.0 / r), s.Mrr, 12);
        }
    }

    [Theory]
    [InlineData("""{"template": "[X] is the capital.", "subject": "Paris", "object": "France"}""", "must hold [Y] once, it holds it 0 times")]
    [InlineData("""{"template": "[X] [X] of [Y].", "subject": "Paris", "object": "France"}""", "must hold [X] once, it holds it 2 times")]
    [InlineData("""{"template": "[X] of [Y].", "subject": "Paris"}""", "no \"object\" field")]
    [InlineData("""{"template": "[X] of [Y].", "subject": 3, "object": "France"}""", "\"subject\" must be a string")]
    [InlineData("""{"template": "[X] of [MASK] [Y].", "subject": "Paris", "object": "France"}""", "[MASK] belongs only where [Y] is")]
    [InlineData("""{"template": "[X] of [Y].", "subject": "Paris", "object": "France" """, "invalid JSON")]
    public void A_bad_facts_file_is_refused_naming_the_line(string line, string message)
    {
        string path = dir.File("facts.jsonl");
        File.WriteAllLines(path, ["""{"template": "[X] of [Y].", "subject": "Rome", "object": "Italy", "predicate_id": "P36"}""", line]);
        var e = Assert.Throws<DataFormatException>(() => Cloze.Read(path));
        Assert.Contains($"{path}:2", e.Message);
        Assert.Contains(message, e.Message);
        File.WriteAllLines(path, ["""{"template": "[X] of [Y].", "subject": "Rome", "object": "Italy", "predicate_id": "P36"}"""]);
        Assert.Equal("P36", Assert.Single(Cloze.Read(path)).Relation);
    }

    [Fact]
    public void The_cli_writes_scores_and_answers_and_refuses_a_model_without_an_mlm_head()
    {
        string facts = dir.File("facts.jsonl");
        File.WriteAllLines(facts, Facts.Select(f => System.Text.Json.JsonSerializer.Serialize(new { template = f.Template, subject = f.Subject, @object = f.Object, relation = f.Relation })));
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Words));
        var (code, _, err) = CliRunner.Run("init", "--size", "tiny", "--vocab", dir.File("vocab.txt"), "--out", dir.File("m"), "--device", "cpu");
        Assert.True(code == 0, err);
        (code, var stdout, err) = CliRunner.Run("analyze", "cloze", "--model", dir.File("m"), "--facts", facts, "--out", dir.File("out"), "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("1 fact with a multi-piece object was skipped", stdout);
        var csv = File.ReadAllLines(dir.File("out/cloze.csv"));
        Assert.Equal("relation,facts,scored,skipped,p_at_1,p_at_10,mrr", csv[0]);
        Assert.StartsWith("capital,5,4,1,", csv[1]);
        Assert.Equal(10, File.ReadAllLines(dir.File("out/answers.csv")).Length);
        Assert.True(File.Exists(dir.File("out/cloze.png")));
        (code, _, err) = CliRunner.Run("analyze", "cloze", "--model", RealModelTests.ImportedMiniLm.Value, "--facts", facts, "--out", dir.File("out2"), "--device", "cpu");
        Assert.Equal(2, code);
        Assert.Contains("has no masked-language-model head", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(Directory.Exists(dir.File("out2")));
    }
}
