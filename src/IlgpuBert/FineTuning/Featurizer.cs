// Examples → word-piece rows and the labels each head trains on, as HF's run_glue / run_ner /
// run_qa scripts prepare them:
// - sequence tasks: [CLS] a [SEP] (b [SEP]), longest-first truncation;
// - token classification: each word tokenized on its own, its tag on the first piece and −100 on
//   the rest and on the special tokens (predictions are read from first pieces too);
// - QA: [CLS] question [SEP] context [SEP]; the context is split into words the way BERT's basic
//   tokenizer splits (runs of letters and digits, single punctuation marks) so every piece maps
//   back to exact character offsets; an answer's span is the pieces of its words. A context longer
//   than the window is truncated (no sliding window); an answer cut off that way points at [CLS],
//   as in HF, and is counted so the caller can say so.
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.FineTuning;

/// <summary>One example as model input, with what is needed to read predictions back.</summary>
public sealed class Feature
{
    public required TaskExample Example { get; init; }
    public required int[] Ids { get; init; }
    public required int[] Types { get; init; }
    public int Label { get; init; } = -100;
    public float Target { get; init; }
    public int[]? TokenLabels { get; init; }   // [Ids.Length], −100 where no tag applies
    public int[]? WordPiece { get; init; }     // token classification: each word's first piece, −1 if it had none
    public int Start { get; init; }            // QA: answer start / end piece (0 = [CLS] when cut off)
    public int End { get; init; }
    public int ContextOffset { get; init; }    // QA: index of the first context piece
    public int[]? PieceWord { get; init; }     // QA: context piece → context word
    public (int Start, int End)[]? WordSpans { get; init; } // QA: character span of each context word
    public bool AnswerTruncated { get; init; }
}

public sealed class Featurizer(BertTextEncoder encoder, TaskSpec task, int maxLength)
{
    /// <summary>Questions longer than this many pieces are cut (as run_qa's max_query_length).</summary>
    public const int MaxQuestionPieces = 64;

    public TaskSpec Task { get; } = task;

    private readonly Dictionary<string, int> labelIds = task.Labels.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i, StringComparer.Ordinal);

    public Feature Make(TaskExample e, bool labelled)
    {
        return Task.Kind switch
        {
            TaskKind.TokenClassification => Tokens(e, labelled),
            TaskKind.QuestionAnswering => Question(e, labelled),
            _ => Sequence(e, labelled),
        };
    }

    private Feature Sequence(TaskExample e, bool labelled)
    {
        var (ids, types) = encoder.EncodeRow(e.Text, e.TextPair, maxLength);
        int label = -100;
        if (labelled && Task.Kind != TaskKind.Regression)
        {
            if (!labelIds.TryGetValue(e.Label ?? throw new DataFormatException($"{e.Source}: no label"), out label))
                throw new DataFormatException($"{e.Source}: label \"{e.Label}\" is not one of the model's labels ({string.Join(", ", Task.Labels)})");
        }
        if (labelled && Task.Kind == TaskKind.Regression && e.Target is null) throw new DataFormatException($"{e.Source}: no regression target");
        return new Feature { Example = e, Ids = ids, Types = types, Label = label, Target = e.Target ?? 0f };
    }

    private Feature Tokens(TaskExample e, bool labelled)
    {
        var words = e.Words ?? throw new DataFormatException($"{e.Source}: no words");
        var ids = new List<int> { encoder.ClsId };
        var labels = new List<int> { -100 };
        var first = new int[words.Count];
        for (int w = 0; w < words.Count; w++)
        {
            var pieces = encoder.Encode(words[w]);
            if (pieces.Length == 0 || ids.Count + pieces.Length > maxLength - 1)
            {
                first[w] = -1;
                continue;
            }
            first[w] = ids.Count;
            int tag = -100;
            if (labelled)
            {
                if (!labelIds.TryGetValue(e.Tags![w], out tag))
                    throw new DataFormatException($"{e.WordSource(w)}: tag \"{e.Tags[w]}\" is not one of the model's tags ({string.Join(", ", Task.Labels)})");
            }
            ids.AddRange(pieces);
            labels.Add(tag);
            labels.AddRange(Enumerable.Repeat(-100, pieces.Length - 1));
        }
        ids.Add(encoder.SepId);
        labels.Add(-100);
        return new Feature { Example = e, Ids = ids.ToArray(), Types = new int[ids.Count], TokenLabels = labels.ToArray(), WordPiece = first };
    }

    private Feature Question(TaskExample e, bool labelled)
    {
        string context = e.TextPair ?? throw new DataFormatException($"{e.Source}: no context");
        var question = encoder.Encode(e.Text).Take(MaxQuestionPieces).ToArray();
        var words = encoder.TokenizeWords(context);
        var spans = words.Select(w => (w.Start, w.End)).ToArray();
        int offset = question.Length + 2, room = maxLength - offset - 1;
        if (room < 1) throw new ArgumentException($"max length {maxLength} leaves no room for a context");
        var ids = new List<int> { encoder.ClsId };
        ids.AddRange(question);
        ids.Add(encoder.SepId);
        var pieceWord = new List<int>();
        var wordFirst = new int[spans.Length];
        var wordLast = new int[spans.Length];
        for (int w = 0; w < spans.Length; w++)
        {
            var pieces = words[w].Pieces.Select(p => p.Id).ToArray();
            wordFirst[w] = wordLast[w] = -1;
            if (pieces.Length == 0 || pieceWord.Count + pieces.Length > room) continue;
            wordFirst[w] = ids.Count;
            ids.AddRange(pieces);
            pieceWord.AddRange(Enumerable.Repeat(w, pieces.Length));
            wordLast[w] = ids.Count - 1;
        }
        ids.Add(encoder.SepId);
        var types = Enumerable.Range(0, ids.Count).Select(i => i < offset ? 0 : 1).ToArray();

        int start = 0, end = 0;
        bool truncated = false;
        if (labelled)
        {
            var answer = e.Answers?.FirstOrDefault() ?? throw new DataFormatException($"{e.Source}: no answer");
            int a0 = answer.Start, a1 = answer.Start + answer.Text.Length;
            // The words the answer overlaps; its span runs from the first one's first piece to the last one's last piece.
            var inside = Enumerable.Range(0, spans.Length).Where(w => spans[w].Item1 < a1 && spans[w].Item2 > a0).ToList();
            if (inside.Count == 0) throw new DataFormatException($"{e.Source}: answer \"{answer.Text}\" covers no word of the context");
            if (wordFirst[inside[0]] < 0 || wordLast[inside[^1]] < 0) truncated = true;
            else
            {
                start = wordFirst[inside[0]];
                end = wordLast[inside[^1]];
            }
        }
        return new Feature
        {
            Example = e, Ids = ids.ToArray(), Types = types, Start = start, End = end, ContextOffset = offset,
            PieceWord = pieceWord.ToArray(), WordSpans = spans, AnswerTruncated = truncated,
        };
    }

    /// <summary>Pads features into one batch with the labels the head's loss needs (none when unlabelled).</summary>
    public TaskBatch Collate(IReadOnlyList<Feature> features, bool labelled)
    {
        var inputs = encoder.Pad(features.Select(f => (f.Ids, f.Types)).ToList());
        if (!labelled) return new TaskBatch(inputs);
        int s = inputs.SeqLen;
        return Task.Kind switch
        {
            TaskKind.Regression => new TaskBatch(inputs, Targets: features.Select(f => f.Target).ToArray()),
            TaskKind.TokenClassification => new TaskBatch(inputs,
                Labels: features.SelectMany(f => f.TokenLabels!.Concat(Enumerable.Repeat(-100, s - f.Ids.Length))).ToArray()),
            TaskKind.QuestionAnswering => new TaskBatch(inputs, StartPositions: features.Select(f => f.Start).ToArray(),
                EndPositions: features.Select(f => f.End).ToArray()),
            _ => new TaskBatch(inputs, Labels: features.Select(f => f.Label).ToArray()),
        };
    }
}
