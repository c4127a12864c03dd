using IlgpuBert.FineTuning;
using IlgpuBert.Model;

namespace IlgpuBert.Tests;

/// <summary>The data formats fine-tuning reads, the bad rows they reject, and the task metrics against hand-computed values.</summary>
public class TaskDataTests
{
    [Fact]
    public void Tsv_reads_GLUE_style_columns_by_name_or_index()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("train.tsv"), "id\tsentence\tlabel\n1\ta fine film\tpositive\n2\tdull , slow\tnegative\n\n");
        var rows = TaskData.Read(dir.File("train.tsv"), TaskKind.Classification, new ColumnSpec(Text: "sentence"));
        Assert.Equal(2, rows.Count);
        Assert.Equal("dull , slow", rows[1].Text);
        Assert.Equal("negative", rows[1].Label);
        Assert.EndsWith("train.tsv:3", rows[1].Source);
        File.WriteAllText(dir.File("nohead.tsv"), "x\t0.5\tthe cat\n");
        var r = TaskData.Read(dir.File("nohead.tsv"), TaskKind.Regression, new ColumnSpec(Text: "2", Label: "1", Header: false));
        Assert.Equal(0.5f, r[0].Target);
        Assert.Equal("the cat", r[0].Text);
    }

    [Fact]
    public void Csv_handles_quotes_commas_doubled_quotes_and_line_breaks_and_pairs()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("pairs.csv"), "premise,hypothesis,label\n\"one, two\",\"say \"\"hi\"\"\",yes\n\"multi\nline\",b,no\nplain,c,yes\n");
        var rows = TaskData.Read(dir.File("pairs.csv"), TaskKind.PairClassification, new ColumnSpec("premise", "hypothesis"));
        Assert.Equal(3, rows.Count);
        Assert.Equal("one, two", rows[0].Text);
        Assert.Equal("say \"hi\"", rows[0].TextPair);
        Assert.Equal("multi\nline", rows[1].Text);
        Assert.EndsWith("pairs.csv:5", rows[2].Source); // the row after a two-line field starts on line 5
    }

    [Fact]
    public void Jsonl_reads_classification_and_regression()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("d.jsonl"), "{\"text\": \"a\", \"label\": 3.5}\n\n{\"text\": \"b\", \"label\": \"-1\"}\n");
        var rows = TaskData.Read(dir.File("d.jsonl"), TaskKind.Regression, new ColumnSpec());
        Assert.Equal([3.5f, -1f], rows.Select(r => r.Target!.Value));
        var cls = TaskData.Read(dir.File("d.jsonl"), TaskKind.Classification, new ColumnSpec());
        Assert.Equal(["3.5", "-1"], cls.Select(r => r.Label));
    }

    [Fact]
    public void Conll_reads_sentences_and_skips_docstart()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("ner.conll"), "-DOCSTART- -X- O O\n\nAlice NNP B-PER\nlives VBZ O\nin IN O\nNew NNP B-LOC\nYork NNP I-LOC\n\nHi UH O\n");
        var rows = TaskData.Read(dir.File("ner.conll"), TaskKind.TokenClassification, new ColumnSpec());
        Assert.Equal(2, rows.Count);
        Assert.Equal(["Alice", "lives", "in", "New", "York"], rows[0].Words!);
        Assert.Equal(["B-PER", "O", "O", "B-LOC", "I-LOC"], rows[0].Tags!);
        Assert.EndsWith("ner.conll:3", rows[0].Source);
    }

    [Fact]
    public void Squad_reads_questions_with_checked_answer_offsets()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("qa.json"), """
            {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "The sky is blue today.",
              "qas": [{"id": "q1", "question": "What color?", "answers": [{"text": "blue", "answer_start": 11}]}]}]}]}
            """);
        var rows = TaskData.Read(dir.File("qa.json"), TaskKind.QuestionAnswering, new ColumnSpec());
        var e = Assert.Single(rows);
        Assert.Equal("What color?", e.Text);
        Assert.Equal("q1", e.Id);
        Assert.Equal(new QaAnswer("blue", 11), e.Answers![0]);
        File.WriteAllText(dir.File("bad.json"), File.ReadAllText(dir.File("qa.json")).Replace("\"answer_start\": 11", "\"answer_start\": 4"));
        var error = Assert.Throws<DataFormatException>(() => TaskData.Read(dir.File("bad.json"), TaskKind.QuestionAnswering, new ColumnSpec()));
        Assert.Contains("question q1", error.Message);
        Assert.Contains("not at character 4", error.Message);

        // A hostile id (a whole object) and a huge answer never flood the message.
        File.WriteAllText(dir.File("hostile.json"), File.ReadAllText(dir.File("bad.json")).Replace("\"id\": \"q1\"", "\"id\": {\"x\": \"" + new string('y', 100_000) + "\"}")
            .Replace("\"text\": \"blue\"", "\"text\": \"" + new string('z', 100_000) + "\""));
        error = Assert.Throws<DataFormatException>(() => TaskData.Read(dir.File("hostile.json"), TaskKind.QuestionAnswering, new ColumnSpec()));
        Assert.True(error.Message.Length < 400, error.Message[..Math.Min(400, error.Message.Length)]);

        // answer_start counts code points, as Python's str does: an emoji before the answer is one character, two UTF-16 units.
        File.WriteAllText(dir.File("emoji.json"), File.ReadAllText(dir.File("qa.json")).Replace("The sky", "\U0001F600 The sky").Replace("\"answer_start\": 11", "\"answer_start\": 13"));
        var answer = Assert.Single(TaskData.Read(dir.File("emoji.json"), TaskKind.QuestionAnswering, new ColumnSpec())).Answers![0];
        Assert.Equal(new QaAnswer("blue", 14), answer); // held as a .NET string index
    }

    [Theory]
    [InlineData("t.tsv", "text\tlabel\nfine\tpos\nshort row\n", "t.tsv:3", "1 columns, the header has 2")]
    [InlineData("t.tsv", "sentence\tlabel\nfine\tpos\n", "t.tsv", "no text column \"text\"")]
    [InlineData("r.tsv", "text\tlabel\nfine\tlots\n", "r.tsv:2", "not a finite number")]
    [InlineData("c.csv", "text,label\n\"open,pos\n", "c.csv:2", "unterminated quoted field")]
    [InlineData("c.csv", "text,label\nfine,pos\nab\"cd,neg\n", "c.csv:3", "a quote inside unquoted field 1")]
    [InlineData("c.csv", "text,label\n\"ab\"cd,neg\n", "c.csv:2", "text after the closing quote of field 1")]
    [InlineData("c.csv", "text,label\nfine,\"pos\" \n", "c.csv:2", "text after the closing quote of field 2")]
    [InlineData("j.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"\n", "j.jsonl:2", "invalid JSON")]
    [InlineData("j.jsonl", "{\"text\": \"a\"}\n", "j.jsonl:1", "no \"label\" field")]
    [InlineData("j.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"text\": \"c\", \"label\": \"y\"}\n", "j.jsonl:2", "key \"text\" appears twice")]
    [InlineData("j.jsonl", "{\"text\": \"\\ud800 lone\", \"label\": \"x\"}\n", "j.jsonl:1", "lone UTF-16 surrogate")]
    [InlineData("n.conll", "Alice B-PER\nlives\n", "n.conll:2", "has no tag")]
    [InlineData("n.conll", "Alice PERSON\n", "n.conll:1", "is not O, B-TYPE or I-TYPE")]
    public void Bad_rows_are_reported_with_file_and_line(string name, string content, string where, string message)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File(name), content);
        var kind = name switch
        {
            "r.tsv" => TaskKind.Regression,
            "n.conll" => TaskKind.TokenClassification,
            _ => TaskKind.Classification,
        };
        var e = Assert.Throws<DataFormatException>(() => TaskData.Read(dir.File(name), kind, new ColumnSpec()));
        Assert.Contains(where, e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void A_tag_the_model_lacks_is_reported_at_its_own_line_not_its_sentences_first()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir.File("vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "alice", "lives", "in", "paris", "bob"]);
        File.WriteAllText(dir.File("n.conll"), "Bob B-PER\n\nAlice B-PER\nlives O\nin O\nParis B-LOC\n");
        var examples = TaskData.Read(dir.File("n.conll"), TaskKind.TokenClassification, new ColumnSpec());
        var featurizer = new Featurizer(Text.BertTextEncoder.FromVocab(dir.File("vocab.txt")), new TaskSpec(TaskKind.TokenClassification, ["B-PER", "O"]), 32);
        featurizer.Make(examples[0], labelled: true);
        var e = Assert.Throws<DataFormatException>(() => featurizer.Make(examples[1], labelled: true));
        Assert.Equal($"{dir.File("n.conll")}:6: tag \"B-LOC\" is not one of the model's tags (B-PER, O)", e.Message);
    }

    [Fact]
    public void Classification_metrics_match_hand_computed_values()
    {
        int[] gold = [0, 0, 1, 1, 2, 2, 2, 0];
        int[] pred = [0, 1, 1, 1, 2, 0, 2, 0];
        Assert.Equal(6 / 8.0, TaskMetrics.Accuracy(gold, pred), 12);
        // Per class F1: 0: tp 2 fp 1 fn 1 → 4/6; 1: tp 2 fp 1 fn 0 → 4/5; 2: tp 2 fp 0 fn 1 → 4/5.
        Assert.Equal((4 / 6.0 + 0.8 + 0.8) / 3, TaskMetrics.MacroF1(gold, pred), 12);
        // Gorodkin: c = 6, s = 8, Σ p_k t_k = 3·3 + 3·2 + 2·3 = 21, Σ p² = 9 + 9 + 4 = 22, Σ t² = 9 + 4 + 9 = 22.
        Assert.Equal((6 * 8 - 21) / Math.Sqrt((64 - 22) * (64.0 - 22)), TaskMetrics.Mcc(gold, pred), 12);
        Assert.Equal(1.0, TaskMetrics.Mcc([0, 1, 0, 1], [0, 1, 0, 1]), 12);
        Assert.Equal(0.0, TaskMetrics.Mcc([0, 1, 0, 1], [0, 0, 0, 0]), 12);
        var (label, accuracy) = TaskMetrics.MajorityBaseline([2, 2, 1, 0, 2], gold);
        Assert.Equal(2, label);
        Assert.Equal(3 / 8.0, accuracy, 12);
    }

    [Fact]
    public void Correlations_match_hand_computed_values_with_ties()
    {
        double[] x = [1, 2, 3, 4, 5];
        double[] y = [2, 4, 5, 4, 5];
        // Pearson: mean 3 and 4; Σdxdy = 6; Σdx² = 10; Σdy² = 6 → 6/√60.
        Assert.Equal(6 / Math.Sqrt(60), TaskMetrics.Pearson(x, y), 12);
        // Spearman with average ranks of y: [1, 2.5, 4.5, 2.5, 4.5].
        Assert.Equal(TaskMetrics.Pearson([1, 2, 3, 4, 5], [1, 2.5, 4.5, 2.5, 4.5]), TaskMetrics.Spearman(x, y), 12);
        Assert.Equal(-1, TaskMetrics.Spearman([1, 2, 3], [9, 4, 1]), 12);
    }

    [Fact]
    public void Entity_f1_counts_exact_BIO_spans_like_conlleval()
    {
        Assert.Equal([("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)],
            TaskMetrics.Entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]));
        Assert.Equal([("PER", 0, 0), ("LOC", 1, 1)], TaskMetrics.Entities(["B-PER", "I-LOC"])); // type change starts a new entity
        IReadOnlyList<string>[] gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]];
        IReadOnlyList<string>[] pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-ORG"]];
        var (p, r, f1) = TaskMetrics.EntityF1(gold, pred);
        // Predicted: PER(0,0) wrong, LOC right, ORG right, ORG(1) wrong → P = 2/4; gold 3 → R = 2/3.
        Assert.Equal(0.5, p, 12);
        Assert.Equal(2 / 3.0, r, 12);
        Assert.Equal(2 * 0.5 * (2 / 3.0) / (0.5 + 2 / 3.0), f1, 12);
    }

    [Fact]
    public void Squad_exact_match_and_f1_normalise_like_the_official_script()
    {
        Assert.Equal("eiffel tower", TaskMetrics.NormalizeAnswer("The Eiffel  Tower!"));
        Assert.Equal(1, TaskMetrics.ExactMatch("the Eiffel Tower.", ["Eiffel Tower", "Paris"]));
        Assert.Equal(0, TaskMetrics.ExactMatch("tower", ["Eiffel Tower"]));
        // "big red tower" vs "red tower": common 2, P = 2/3, R = 1 → 0.8.
        Assert.Equal(0.8, TaskMetrics.TokenF1("big red tower", ["red tower", "nothing"]), 12);
    }

    [Fact]
    public void The_default_task_is_ten_families_with_a_fixed_disjoint_held_out_split()
    {
        var (train, held) = DefaultTask.Build();
        var (train2, held2) = DefaultTask.Build();
        Assert.Equal(train.Select(e => e.Text), train2.Select(e => e.Text));
        Assert.Equal(held.Select(e => e.Text), held2.Select(e => e.Text));
        Assert.Equal(DefaultTask.Families, train.Select(e => e.Label).Distinct().Count());
        Assert.Empty(train.Select(e => e.Text).Intersect(held.Select(e => e.Text)));
        Assert.InRange(held.Count / (double)(train.Count + held.Count), 0.18, 0.22);
        Assert.Contains("System.IO", train.Select(e => e.Label));
        Assert.Contains("System.Collections", train.Select(e => e.Label));
        Assert.All(train, e => Assert.DoesNotContain(". ", e.Text));
        Assert.Equal("System.IO", DefaultTask.FamilyOf("M:System.IO.File.Copy(System.String,System.String)"));
        Assert.Equal("System.Net", DefaultTask.FamilyOf("T:System.Net.Http.HttpClient"));
        Assert.Equal("System", DefaultTask.FamilyOf("T:System.String"));
    }
}
