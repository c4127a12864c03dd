// Writing and reading the small files around a model safely: atomic writes (temporary file, then
// rename), bounded reads of text files, strict JSON, and a lock that keeps two runs out of one output folder.
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace IlgpuBert.Checkpoints;

/// <summary>Write to a temporary file beside the target, then rename over it.</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        string temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or ArgumentOutOfRangeException) // a full disk is an IOException; a file-size limit (EFBIG) an ArgumentOutOfRangeException
        {
            throw new IOException($"{full}: could not be written ({e.Message}){(File.Exists(full) ? "; the previous file is unchanged" : "")}", e);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    public static void WriteText(string path, string text) =>
        Write(path, s => s.Write(Encoding.UTF8.GetBytes(text)));
}

/// <summary>
/// Reads small text files (config.json, vocab.txt, tokenizer_config.json) with a size limit, so
/// a path that is /dev/zero, /dev/urandom or a huge file fails at once instead of reading forever.
/// </summary>
public static class BoundedFile
{
    public const int ConfigBytes = 1 << 20, VocabularyBytes = 64 << 20, DataBytes = 1 << 30;

    public static string ReadAllText(string path, int maxBytes, string what)
    {
        RegularFile.Require(path, what);
        using var stream = File.OpenRead(path);
        var buffer = new byte[Math.Min(maxBytes + 1L, stream.CanSeek && stream.Length > 0 ? stream.Length + 1 : maxBytes + 1L)];
        int total = 0, read;
        while (total < buffer.Length && (read = stream.Read(buffer, total, buffer.Length - total)) > 0)
            total += read;
        if (total > maxBytes)
            throw new CheckpointException($"{path}: larger than {maxBytes:N0} bytes; not a {what}");
        try
        {
            string text = new UTF8Encoding(false, true).GetString(buffer, 0, total);
            return text.Length > 0 && text[0] == '\uFEFF' ? text[1..] : text;
        }
        catch (DecoderFallbackException)
        {
            throw new CheckpointException($"{path}: not UTF-8 text; not a {what}");
        }
    }

    /// <summary>Lines as File.ReadAllLines splits them (\n or \r\n; no empty last line for a final newline).</summary>
    public static string[] ReadAllLines(string path, int maxBytes, string what)
    {
        var lines = ReadAllText(path, maxBytes, what).Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        if (lines[^1].Length == 0) lines.RemoveAt(lines.Count - 1);
        return [.. lines];
    }
}

/// <summary>
/// An exclusive hold on an output folder for one run (an OS file lock, released when the process
/// ends, however it ends): a second run writing into the same folder stops at once with a clear
/// error instead of interleaving checkpoints with the first.
/// </summary>
public sealed class OutputLock : IDisposable
{
    public const string FileName = ".ilgpu-bert.lock";
    private readonly FileStream stream;

    private OutputLock(FileStream stream) => this.stream = stream;

    public static OutputLock Acquire(string dir)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, FileName);
        OutputLock held;
        try
        {
            held = new OutputLock(new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose));
        }
        catch (IOException)
        {
            throw new IOException($"{dir} is in use by another ilgpu-bert run (it holds {FileName}); wait for it or choose another --out");
        }
        held.Leftovers = RemoveLeftovers(dir);
        return held;
    }

    /// <summary>Unfinished writes a killed run left in the folder (removed when the lock was taken).</summary>
    public IReadOnlyList<string> Leftovers { get; private set; } = [];

    /// <summary>
    /// With the lock held nobody else writes here, so every temporary this tool writes (AtomicFile's
    /// ".NAME.PID.GUID.tmp" files, a checkpoint's "checkpoint-N.tmp" folder) is a killed run's unfinished write.
    /// </summary>
    private static List<string> RemoveLeftovers(string dir)
    {
        var removed = new List<string>();
        foreach (var file in Directory.EnumerateFiles(dir, ".*.tmp"))
        {
            File.Delete(file);
            removed.Add(Path.GetFileName(file));
        }
        foreach (var folder in Directory.EnumerateDirectories(dir, "checkpoint-*.tmp"))
        {
            Directory.Delete(folder, true);
            removed.Add(Path.GetFileName(folder));
        }
        return removed;
    }

    public void Dispose() => stream.Dispose();
}

/// <summary>
/// Model files must be regular files: opening a FIFO blocks until something writes to it, and a
/// device such as /dev/zero or /dev/urandom never ends. .NET reports no file type on Unix, so the
/// type comes from statx(2) (glibc ≥ 2.28; its struct is the same on every architecture). Where
/// statx is missing (other systems) the size caps of the readers still apply.
/// </summary>
public static unsafe class RegularFile
{
    private const int AtFdCwd = -100, StatxType = 1, ModeOffset = 28;
    private const int TypeMask = 0xF000, Regular = 0x8000, Directory = 0x4000, Fifo = 0x1000, CharacterDevice = 0x2000, BlockDevice = 0x6000, Socket = 0xC000;

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "statx")]
    private static extern int Statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    public static void Require(string path, string what)
    {
        if (!OperatingSystem.IsLinux()) return;
        byte* buffer = stackalloc byte[256];
        int result;
        try { result = Statx(AtFdCwd, path, 0, StatxType, buffer); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { return; }
        if (result != 0) return; // missing or unreadable: the open that follows reports it in its own words
        string? kind = (*(ushort*)(buffer + ModeOffset) & TypeMask) switch
        {
            Regular => null,
            Directory => "a directory",
            Fifo => "a FIFO (named pipe)",
            CharacterDevice or BlockDevice => "a device",
            Socket => "a socket",
            _ => "not a regular file",
        };
        if (kind is not null) throw new CheckpointException($"{path}: {kind}, not a {what} file");
    }
}

/// <summary>
/// JSON as every input file must be: valid UTF-8 and syntax, no key twice in one object (System.Text.Json
/// would keep one or throw later, far from the file), no string with a lone surrogate; each failure is
/// one line naming the file and the place in it. <c>error</c> makes the exception a
/// caller's users expect (a checkpoint, data or argument error).
/// </summary>
public static class StrictJson
{
    public static JsonNode? Parse(string text, string source, Func<string, Exception>? error = null) =>
        Parse(Encoding.UTF8.GetBytes(text), source, error);

    public static JsonNode? Parse(byte[] utf8, string source, Func<string, Exception>? error = null)
    {
        error ??= message => new CheckpointException(message);
        try
        {
            using (var document = JsonDocument.Parse(utf8))
                Check(document.RootElement, "the top level");
            return JsonNode.Parse(utf8);
        }
        catch (JsonException e)
        {
            throw error($"{source}: invalid JSON at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1} ({Reason(e)})");
        }
        catch (InvalidDataException e)
        {
            throw error($"{source}: {e.Message}");
        }
    }

    private static void Check(JsonElement element, string where)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                var keys = new HashSet<string>(StringComparer.Ordinal);
                foreach (var property in element.EnumerateObject())
                {
                    string key = Text(() => property.Name, where);
                    if (!keys.Add(key)) throw new InvalidDataException($"key \"{Short(key)}\" appears twice in {where}");
                    Check(property.Value, $"\"{Short(key)}\"");
                }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in element.EnumerateArray()) Check(item, $"{where}[{i++}]");
                break;
            case JsonValueKind.String:
                Text(element.GetString, where);
                break;
        }
    }

    private static string Text(Func<string?> read, string where)
    {
        try { return read() ?? ""; }
        catch (InvalidOperationException) { throw new InvalidDataException($"a string in {where} holds a lone UTF-16 surrogate (\\ud800–\\udfff without its pair)"); }
    }

    /// <summary>The parser's reason without its position suffix and without quoting the rest of the file.</summary>
    private static string Reason(JsonException e)
    {
        string m = e.Message;
        int at = m.IndexOf(" LineNumber:", StringComparison.Ordinal);
        if (at >= 0) m = m[..at];
        return Short(string.Join(' ', m.Split((char[])['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries)).TrimEnd('.'));
    }

    /// <summary>Text quoted in a message, cut to <paramref name="max"/> characters (a key, a label, a bad value).</summary>
    internal static string Short(string s, int max = 80) => s.Length <= max ? s : s[..max] + "…";
}

/// <summary>A private temporary folder, deleted with everything in it on dispose.</summary>
public sealed class ScratchFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("ilgpu-bert-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(Path, true); }
        catch (IOException) { } // a file still open elsewhere: the OS's temp cleaning takes it
    }
}
