// Labelled data for fine-tuning, read from the files users have:
// - classification / regression: TSV (GLUE's layout: header row, tab-separated, no quoting), CSV
//   (RFC 4180 quoting) or JSONL (one object per line), with the text, text-pair and label columns
//   chosen by name or 0-based index;
// - token classification: CoNLL (one token per line, its tag in the last column, a blank line
//   between sentences, -DOCSTART- lines skipped);
// - question answering: SQuAD v1.1 JSON (data → paragraphs → context, qas → id, question, answers).
// Every bad row is reported with its file and line (or SQuAD question id), never skipped silently.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;

namespace IlgpuBert.FineTuning;

public sealed class DataFormatException(string message) : Exception(message);

/// <summary>An answer span of a QA example: its text and character offset in the context.</summary>
public sealed record QaAnswer(string Text, int Start);

/// <summary>
/// One labelled example. Text (the question for QA) and TextPair (the second text, or the QA
/// context); Label for classification, Target for regression, Words and Tags for token
/// classification, Answers for QA. Source says where it came from ("file:line").
/// </summary>
public sealed record TaskExample
{
    public string Text { get; init; } = "";
    public string? TextPair { get; init; }
    public string? Label { get; init; }
    public float? Target { get; init; }
    public IReadOnlyList<string>? Words { get; init; }
    public IReadOnlyList<string>? Tags { get; init; }
    public IReadOnlyList<QaAnswer>? Answers { get; init; }
    public string? Id { get; init; }
    public string Source { get; init; } = "";
    /// <summary>The input line it was read from (plain text read by <see cref="TaskData.ReadPlain"/>), so outputs can line up with inputs.</summary>
    public int Line { get; init; }
    /// <summary>CoNLL: the file and the line of each word, so an error about one tag names its own line.</summary>
    public (string File, IReadOnlyList<int> Lines)? WordLines { get; init; }

    /// <summary>Where word <paramref name="w"/> came from: its own line for CoNLL, else <see cref="Source"/>.</summary>
    public string WordSource(int w) => WordLines is var (file, lines) ? $"{file}:{lines[w]}" : Source;
}

/// <summary>Which columns (names, or 0-based indices) hold the text, the second text and the label; whether the file has a header row.</summary>
public sealed record ColumnSpec(string Text = "text", string? TextPair = null, string Label = "label", bool Header = true);

public static class TaskData
{
    /// <summary>
    /// Reads <paramref name="path"/> for <paramref name="kind"/>. With <paramref name="labelled"/>
    /// false (prediction) the label column may be absent.
    /// </summary>
    public static List<TaskExample> Read(string path, TaskKind kind, ColumnSpec columns, bool labelled = true)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: no such file");
        var examples = kind switch
        {
            TaskKind.TokenClassification => ReadConll(path, labelled),
            TaskKind.QuestionAnswering => ReadSquad(path, labelled),
            _ => Path.GetExtension(path).ToLowerInvariant() switch
            {
                ".jsonl" or ".json" => ReadJsonl(path, kind, columns, labelled),
                ".csv" => ReadTable(path, kind, columns, ',', labelled),
                _ => ReadTable(path, kind, columns, '\t', labelled),
            },
        };
        if (examples.Count == 0) throw new DataFormatException($"{path}: no examples");
        return examples;
    }

    private static DataFormatException Error(string message) => new(message);

    /// <summary>The lines of a data file, read as strict UTF-8 (a bad byte is an error naming the line, not a silent U+FFFD); regular files only.</summary>
    private static IEnumerable<string> Lines(string path)
    {
        RegularFile.Require(path, "data");
        using var reader = new StreamReader(path, new UTF8Encoding(false, throwOnInvalidBytes: true));
        for (int line = 1; ; line++)
        {
            string? text;
            try { text = reader.ReadLine(); }
            catch (DecoderFallbackException) { throw new DataFormatException($"{path}:{line}: not UTF-8 text"); }
            if (text is null) yield break;
            yield return text;
        }
    }

    private static List<TaskExample> ReadTable(string path, TaskKind kind, ColumnSpec columns, char separator, bool labelled)
    {
        var rows = separator == ',' ? CsvRows(path) : Lines(path).Select((l, i) => (Line: i + 1, Cells: l.TrimEnd('\r').Split('\t')));
        var result = new List<TaskExample>();
        int textAt = -1, pairAt = -1, labelAt = -1, width = -1;
        bool pair = kind == TaskKind.PairClassification || (kind == TaskKind.Regression && columns.TextPair is not null);
        foreach (var (line, cells) in rows)
        {
            if (width < 0)
            {
                width = cells.Length;
                var header = columns.Header ? cells : null;
                textAt = Column(path, header, columns.Text, "text", width);
                if (pair) pairAt = Column(path, header, columns.TextPair ?? "text_pair", "text-pair", width);
                labelAt = labelled || (header?.Contains(columns.Label) ?? false) ? Column(path, header, columns.Label, "label", width) : -1;
                if (columns.Header) continue;
            }
            if (cells.Length == 1 && cells[0].Length == 0) continue; // blank line
            string where = $"{path}:{line}";
            if (cells.Length != width) throw new DataFormatException($"{where}: {cells.Length} columns, the header has {width}");
            result.Add(Example(kind, where, cells[textAt], pairAt >= 0 ? cells[pairAt] : null, labelAt >= 0 ? cells[labelAt] : null, labelled));
        }
        return result;
    }

    private static int Column(string path, string[]? header, string name, string what, int width)
    {
        if (header is not null)
        {
            int at = Array.IndexOf(header, name);
            if (at >= 0) return at;
        }
        if (int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out int index))
        {
            if (index < width) return index;
            throw new DataFormatException($"{path}: {what} column {index} is beyond the {width} columns");
        }
        throw new DataFormatException(header is null
            ? $"{path}: without a header row the {what} column must be a 0-based index, got \"{name}\""
            : $"{path}: no {what} column \"{name}\" (the header has {string.Join(", ", header.Take(8).Select(h => $"\"{StrictJson.Short(h.ReplaceLineEndings(" "))}\""))}{(header.Length > 8 ? $" and {header.Length - 8} more" : "")}); choose one with --{what}-column");
    }

    private static TaskExample Example(TaskKind kind, string where, string text, string? pair, string? label, bool labelled)
    {
        if (pair is null && kind == TaskKind.PairClassification) throw new DataFormatException($"{where}: no second text");
        var e = new TaskExample { Text = text, TextPair = pair, Source = where };
        if (label is null || (!labelled && label.Length == 0)) return e;
        if (kind == TaskKind.Regression)
        {
            if (!float.TryParse(label, NumberStyles.Float, CultureInfo.InvariantCulture, out float target) || !float.IsFinite(target))
                throw new DataFormatException($"{where}: regression label \"{label}\" is not a finite number");
            return e with { Target = target };
        }
        if (label.Length == 0) throw new DataFormatException($"{where}: empty label");
        return e with { Label = label };
    }

    /// <summary>RFC 4180 rows: quoted fields may hold commas, doubled quotes and line breaks. Yields the line each row starts on.</summary>
    private static IEnumerable<(int Line, string[] Cells)> CsvRows(string path)
    {
        using var lines = Lines(path).GetEnumerator();
        int line = 0;
        while (lines.MoveNext())
        {
            string text = lines.Current;
            line++;
            int start = line;
            var cells = new List<string>();
            var cell = new StringBuilder();
            bool quoted = false, closed = false; // closed: this field's quotes have ended, only a comma may follow
            for (int i = 0; ; i++)
            {
                if (i == text.Length)
                {
                    if (!quoted) break;
                    text = lines.MoveNext() ? lines.Current : throw new DataFormatException($"{path}:{start}: unterminated quoted field");
                    line++;
                    cell.Append('\n');
                    i = -1;
                    continue;
                }
                char c = text[i];
                if (quoted)
                {
                    if (c != '"') cell.Append(c);
                    else if (i + 1 < text.Length && text[i + 1] == '"') { cell.Append('"'); i++; }
                    else (quoted, closed) = (false, true);
                }
                else if (c == ',') { cells.Add(cell.ToString()); cell.Clear(); closed = false; }
                else if (c == '\r') { }
                else if (closed) throw new DataFormatException($"{path}:{line}: text after the closing quote of field {cells.Count + 1} (RFC 4180: a quoted field ends at a comma or the line's end)");
                else if (c == '"' && cell.Length == 0) quoted = true;
                else if (c == '"') throw new DataFormatException($"{path}:{line}: a quote inside unquoted field {cells.Count + 1} (quote the whole field and double its quotes: \"ab\"\"cd\")");
                else cell.Append(c);
            }
            cells.Add(cell.ToString());
            yield return (start, cells.ToArray());
        }
    }

    private static List<TaskExample> ReadJsonl(string path, TaskKind kind, ColumnSpec columns, bool labelled)
    {
        var result = new List<TaskExample>();
        int line = 0;
        bool pair = kind == TaskKind.PairClassification || (kind == TaskKind.Regression && columns.TextPair is not null);
        foreach (var raw in Lines(path))
        {
            line++;
            if (raw.Trim().Length == 0) continue;
            string where = $"{path}:{line}";
            var obj = StrictJson.Parse(raw, where, Error) as JsonObject ?? throw new DataFormatException($"{where}: not a JSON object");
            string? Field(string key, bool required)
            {
                if (!obj.TryGetPropertyValue(key, out var node) || node is null)
                    return required ? throw new DataFormatException($"{where}: no \"{key}\" field") : null;
                return node.GetValueKind() switch
                {
                    JsonValueKind.String => node.GetValue<string>(),
                    JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => node.ToJsonString(),
                    _ => throw new DataFormatException($"{where}: \"{key}\" must be a string or a number"),
                };
            }
            try
            {
                result.Add(Example(kind, where, Field(columns.Text, true)!, pair ? Field(columns.TextPair ?? "text_pair", true) : null,
                    Field(columns.Label, labelled), labelled));
            }
            catch (InvalidOperationException e) // e.g. a lone surrogate (\ud800) that is no UTF-16 text
            {
                throw new DataFormatException($"{where}: unreadable string ({e.Message})");
            }
        }
        return result;
    }

    private static List<TaskExample> ReadConll(string path, bool labelled)
    {
        var result = new List<TaskExample>();
        var words = new List<string>();
        var tags = new List<string>();
        var lines = new List<int>();
        int line = 0, start = 1;
        void Flush()
        {
            if (words.Count > 0)
                result.Add(new TaskExample { Text = string.Join(" ", words), Words = words.ToList(), Tags = labelled ? tags.ToList() : null, Source = $"{path}:{start}", WordLines = (path, lines.ToList()) });
            words.Clear();
            tags.Clear();
            lines.Clear();
        }
        foreach (var raw in Lines(path))
        {
            line++;
            string text = raw.Trim();
            if (text.Length == 0 || text.StartsWith("-DOCSTART-", StringComparison.Ordinal))
            {
                Flush();
                start = line + 1;
                continue;
            }
            var cells = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (labelled && cells.Length < 2) throw new DataFormatException($"{path}:{line}: \"{text}\" has no tag (a CoNLL line is a token, optional columns, and its tag last)");
            string tag = cells[^1];
            if (labelled && !(tag == "O" || (tag.Length > 2 && tag[1] == '-' && tag[0] is 'B' or 'I')))
                throw new DataFormatException($"{path}:{line}: tag \"{tag}\" is not O, B-TYPE or I-TYPE");
            if (words.Count == 0) start = line;
            words.Add(cells[0]);
            tags.Add(tag);
            lines.Add(line);
        }
        Flush();
        return result;
    }

    private static List<TaskExample> ReadSquad(string path, bool labelled)
    {
        var root = StrictJson.Parse(BoundedFile.ReadAllText(path, BoundedFile.DataBytes, "SQuAD JSON"), path, Error);
        if ((root as JsonObject)?["data"] is not JsonArray data) throw new DataFormatException($"{path}: not SQuAD JSON (no \"data\" array)");
        var result = new List<TaskExample>();
        try
        {
            foreach (var article in data)
                foreach (var paragraph in article?["paragraphs"] as JsonArray ?? throw new DataFormatException($"{path}: an article has no \"paragraphs\""))
                {
                    string context = paragraph?["context"]?.GetValue<string>() ?? throw new DataFormatException($"{path}: a paragraph has no \"context\"");
                    foreach (var qa in paragraph["qas"] as JsonArray ?? [])
                    {
                        string id = qa?["id"] is JsonValue idValue ? StrictJson.Short(idValue.ToString()) : $"#{result.Count}"; // never a whole nested object in a message
                        string where = $"{path}: question {id}";
                        string question = qa?["question"]?.GetValue<string>() ?? throw new DataFormatException($"{where}: no \"question\"");
                        var answers = new List<QaAnswer>();
                        foreach (var a in qa!["answers"] as JsonArray ?? [])
                        {
                            string text = a?["text"]?.GetValue<string>() ?? throw new DataFormatException($"{where}: an answer has no \"text\"");
                            int startCodePoint = a["answer_start"]?.GetValue<int>() ?? throw new DataFormatException($"{where}: an answer has no \"answer_start\"");
                            // SQuAD counts characters as Python does (code points); .NET strings count UTF-16 units.
                            int startChar = Utf16Index(context, startCodePoint);
                            if (startChar < 0 || startChar + text.Length > context.Length || string.CompareOrdinal(context, startChar, text, 0, text.Length) != 0)
                                throw new DataFormatException($"{where}: answer \"{StrictJson.Short(text)}\" is not at character {startCodePoint} of its context");
                            answers.Add(new QaAnswer(text, startChar));
                        }
                        if (labelled && answers.Count == 0) throw new DataFormatException($"{where}: no answers (SQuAD v1.1 questions all have one)");
                        result.Add(new TaskExample { Text = question, TextPair = context, Answers = answers, Id = id, Source = where });
                    }
                }
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new DataFormatException($"{path}: unexpected SQuAD field type ({e.Message})");
        }
        return result;
    }

    /// <summary>Texts to predict: one per line, a tab between the two texts of a pair (QA: question, tab, context).</summary>
    public static List<TaskExample> ReadPlain(TextReader reader, TaskKind kind, string source)
    {
        var result = new List<TaskExample>();
        int line = 0;
        string? text;
        while ((text = reader.ReadLine()) is not null)
        {
            line++;
            if (text.Trim().Length == 0) continue;
            string where = $"{source}:{line}";
            var parts = text.Split('\t');
            bool pair = kind is TaskKind.PairClassification or TaskKind.QuestionAnswering;
            if (pair && parts.Length != 2) throw new DataFormatException($"{where}: expected two tab-separated texts{(kind == TaskKind.QuestionAnswering ? " (question, context)" : "")}");
            if (!pair && parts.Length != 1 && kind != TaskKind.Regression) throw new DataFormatException($"{where}: a tab in a single text (this task takes one text per line)");
            var e = new TaskExample { Text = parts[0], TextPair = parts.Length > 1 ? parts[1] : null, Source = where, Line = line };
            if (kind == TaskKind.TokenClassification) e = e with { Words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries) };
            result.Add(e);
        }
        return result;
    }

    /// <summary>Text for an error message: at most 80 characters.</summary>

    /// <summary>The UTF-16 index of code point <paramref name="codePoints"/> of <paramref name="s"/> (−1 when out of range).</summary>
    internal static int Utf16Index(string s, int codePoints)
    {
        if (codePoints < 0) return -1;
        int i = 0;
        for (int c = 0; c < codePoints; c++)
        {
            if (i >= s.Length) return -1;
            i += char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;
        }
        return i;
    }
}
