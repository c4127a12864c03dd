using System.Diagnostics;
using System.Security.Cryptography;
using IlgpuBert.Checkpoints;
using IlgpuBert.Pretraining;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

/// <summary>
/// What a crash or a full disk leaves behind, with the tool run as its own process: SIGKILL while a
/// checkpoint is being written, and writes that fail part-way. The full disk is a file-size limit
/// (RLIMIT_FSIZE with SIGXFSZ ignored, so a write past it fails with EFBIG where a full disk fails
/// with ENOSPC, at the same calls), which needs neither root nor a mount.
/// </summary>
public class CrashSafetyTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private string[] Pretrain(string output, int steps, params string[] extra) => CliRunner.SmallPretraining(dir, output, steps, extra);

    /// <summary>dotnet ilgpu-bert.dll ARGS as a child process; with <paramref name="fileSizeKiB"/>, no file it writes may grow past that.</summary>
    private Process Start(string[] args, int? fileSizeKiB = null)
    {
        var start = fileSizeKiB is { } limit
            ? new ProcessStartInfo("bash") { ArgumentList = { "-c", $"trap '' XFSZ; ulimit -f {limit}; exec \"$@\"", "bash" } }
            : new ProcessStartInfo();
        if (fileSizeKiB is null) start.FileName = "dotnet";
        else start.ArgumentList.Add("dotnet");
        start.ArgumentList.Add(typeof(Cli.Cli).Assembly.Location);
        foreach (var a in args) start.ArgumentList.Add(a);
        start.RedirectStandardOutput = start.RedirectStandardError = true;
        start.Environment["XDG_CACHE_HOME"] = dir.File("cache");
        // The runtime's W^X double mapping sizes a memory file, which a file-size limit would refuse at start-up.
        start.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        return Process.Start(start)!;
    }

    private static (int Code, string Out, string Err) Finish(Process p, int seconds = 300)
    {
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(seconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"ilgpu-bert did not finish within {seconds} s");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static Dictionary<string, string> Hashes(string folder) =>
        Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Where(f => Path.GetFileName(f) != OutputLock.FileName)
            .ToDictionary(f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))));

    private static string[] Unfinished(string folder) =>
        [.. Directory.EnumerateFileSystemEntries(folder, "*.tmp", SearchOption.AllDirectories).Select(Path.GetFileName)!];

    /// <summary>A checkpoint folder that loads whole: state, weights (every tensor finite and tiling its file) and Adam moments.</summary>
    private static void AssertComplete(string checkpoint)
    {
        Assert.True(Trainer.ReadState(checkpoint).Step > 0, checkpoint);
        Assert.NotEmpty(SafeTensors.Read(Path.Combine(checkpoint, "model.safetensors")));
        Assert.NotEmpty(SafeTensors.Read(Path.Combine(checkpoint, Trainer.OptimizerFile)));
        Assert.True(File.Exists(Path.Combine(checkpoint, "config.json")) && File.Exists(Path.Combine(checkpoint, "vocab.txt")), checkpoint);
    }

    [Fact]
    public void Killing_the_process_while_a_checkpoint_is_written_loses_nothing_and_the_next_run_cleans_up()
    {
        string output = dir.File("killed");
        var run = Start(Pretrain("killed", 400, "--save-every", "1"));
        // Poll for a checkpoint being written (its .tmp folder) after at least one finished one, then SIGKILL.
        var watch = Stopwatch.StartNew();
        bool duringWrite = false;
        while (!run.HasExited && watch.Elapsed < TimeSpan.FromSeconds(240))
        {
            if (Directory.Exists(output)
                && Directory.EnumerateDirectories(output, "checkpoint-*").Any(d => !d.EndsWith(".tmp"))
                && Directory.EnumerateDirectories(output, "checkpoint-*.tmp").Any())
            {
                run.Kill(); // SIGKILL: no handler runs, nothing is flushed
                duringWrite = true;
                break;
            }
            Thread.Sleep(1);
        }
        Finish(run);
        Assert.True(duringWrite, "the run ended before a checkpoint write could be interrupted");

        var finished = Directory.GetDirectories(output, "checkpoint-*").Where(d => !d.EndsWith(".tmp")).ToList();
        Assert.NotEmpty(finished);
        foreach (var checkpoint in finished) AssertComplete(checkpoint);
        // What the kill interrupted is recognisably unfinished: no verb takes it for a model.
        File.WriteAllText(dir.File("batch.json"), "{\"input_ids\": [[2, 10, 11, 3]]}");
        foreach (var partial in Directory.GetDirectories(output, "checkpoint-*.tmp"))
        {
            var (code, _, err) = CliRunner.Run("forward", "--model", partial, "--input", dir.File("batch.json"), "--out", dir.File("o.safetensors"), "--device", "cpu");
            Assert.Equal(2, code);
            Assert.Contains("unfinished checkpoint", err);
        }

        // The newest finished checkpoint continues the run to its end in the same folder, and the leftovers go.
        string newest = finished.OrderBy(d => int.Parse(Path.GetFileName(d)["checkpoint-".Length..])).Last();
        int step = Trainer.ReadState(newest).Step;
        var (resumed, stdout, stderr) = Finish(Start(Pretrain("killed", step + 2, "--save-every", "1", "--resume", newest)));
        Assert.True(resumed == 0, stderr);
        Assert.Empty(Unfinished(output));
        AssertComplete(Path.Combine(output, $"checkpoint-{step + 2}"));
        Assert.NotEmpty(SafeTensors.Read(Path.Combine(output, "model.safetensors")));
        Assert.Contains($"resuming {newest} at step {step}", stdout);
    }

    [Fact]
    public void A_full_disk_fails_with_one_line_naming_the_file_and_leaves_every_earlier_file_as_it_was()
    {
        // A new model folder that cannot be written completely is not left half-written.
        string vocab = dir.File("vocab.txt");
        File.WriteAllLines(vocab, WordPieceTrainer.SpecialTokens.Concat(["the", "a", "of"]));
        var (code, _, err) = Finish(Start(["init", "--size", "tiny", "--vocab", vocab, "--out", dir.File("new"), "--device", "cpu"], fileSizeKiB: 64));
        Assert.Equal(2, code);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.Contains("model.safetensors", err);
        Assert.False(Directory.Exists(dir.File("new")));

        // A run with checkpoints, then its continuation on a "full disk": the continuation fails at its
        // first checkpoint and every file the first run wrote is byte for byte what it was.
        var (first, _, firstErr) = Finish(Start(Pretrain("run", 2, "--save-every", "1")));
        Assert.True(first == 0, firstErr);
        string output = dir.File("run");
        var before = Hashes(output);
        (code, _, err) = Finish(Start(Pretrain("run", 4, "--save-every", "1", "--resume", Path.Combine(output, "checkpoint-2")), fileSizeKiB: 256));
        Assert.Equal(2, code);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.Matches(@"error: \S+: could not be written", err);
        Assert.Equal(before, Hashes(output));
        Assert.Empty(Unfinished(output));
        AssertComplete(Path.Combine(output, "checkpoint-2"));
    }
}
