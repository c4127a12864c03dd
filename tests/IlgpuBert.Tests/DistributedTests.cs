using System.Diagnostics;
using IlgpuBert.Checkpoints;
using IlgpuBert.Pretraining;

namespace IlgpuBert.Tests;

/// <summary>
/// Data-parallel pretraining under a real mpirun (Open MPI): 2 ranks on this machine's cores. .ci/run
/// installs openmpi-bin and sets ILGPU_BERT_REQUIRE_MPI, so a missing mpirun fails there instead
/// of skipping.
/// </summary>
public class DistributedTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static string? MpiRun()
    {
        string? found = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
            .Select(p => Path.Combine(p, "mpirun")).FirstOrDefault(File.Exists);
        if (found is null)
        {
            Assert.False(Environment.GetEnvironmentVariable("ILGPU_BERT_REQUIRE_MPI") == "1", "ILGPU_BERT_REQUIRE_MPI is set but mpirun is not on PATH");
            Assert.Skip("Open MPI is not installed (apt-get install openmpi-bin)");
        }
        return found;
    }

    private string[] Pretrain(string output, int steps, params string[] extra) => CliRunner.SmallPretraining(dir, output, steps, extra);

    /// <summary>
    /// mpirun -np <paramref name="ranks"/> dotnet ilgpu-bert.dll …, as the README shows it. As root,
    /// Open MPI wants OMPI_ALLOW_RUN_AS_ROOT and its confirmation; the vader transport's single-copy
    /// (CMA) needs ptrace rights a container may lack, so it is off.
    /// </summary>
    private Process StartMpi(int ranks, string marker, string[] args)
    {
        var start = new ProcessStartInfo(MpiRun()!) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["-np", ranks.ToString(), "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none",
                     "dotnet", typeof(Cli.Cli).Assembly.Location, .. args])
            start.ArgumentList.Add(a);
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
        start.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        start.Environment["XDG_CACHE_HOME"] = dir.File("cache");
        start.Environment["ILGPU_BERT_TEST_RUN"] = marker; // finds this run's ranks in /proc
        return Process.Start(start)!;
    }

    private static (int Code, string Output) Finish(Process p, TimeSpan limit)
    {
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"mpirun still running after {limit.TotalSeconds} s");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void Two_ranks_with_one_micro_batch_each_train_the_model_one_process_trains_with_two_step_accumulation()
    {
        var mpi = StartMpi(2, Guid.NewGuid().ToString(), Pretrain("two", 20, "--distributed", "mpi", "--save-every", "10"));
        var (code, output) = Finish(mpi, TimeSpan.FromMinutes(4));
        Assert.True(code == 0, output);
        Assert.Contains("data-parallel over 2 ranks (mpi): 1 micro-batch(es) of 8 per rank and step", output);
        var (single, stdout, err) = CliRunner.Run(Pretrain("one", 20, "--grad-accum", "2", "--save-every", "10"));
        Assert.True(single == 0, err + stdout);

        // The same files, byte for byte where no float sum is involved.
        string[] Files(string root) => Directory.GetFiles(dir.File(root), "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(dir.File(root), f)).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(Files("one"), Files("two"));
        foreach (string same in (string[])["config.json", "vocab.txt", "checkpoint-10/trainer_state.json", "checkpoint-20/trainer_state.json"])
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.File("one"), same)), File.ReadAllBytes(Path.Combine(dir.File("two"), same)));

        // Losses: the same micro-batches, masks and dropout; only the order of float sums differs.
        var a = Trainer.ReadMetrics(Path.Combine(dir.File("one"), Trainer.MetricsFile));
        var b = Trainer.ReadMetrics(Path.Combine(dir.File("two"), Trainer.MetricsFile));
        Assert.Equal(20, b.Count);
        for (int i = 0; i < a.Count; i++)
        {
            Assert.True(Math.Abs(a[i].Loss - b[i].Loss) <= 1e-5 * Math.Abs(a[i].Loss), $"step {i + 1}: loss {a[i].Loss} vs {b[i].Loss}");
            Assert.True(Math.Abs(a[i].GradNorm - b[i].GradNorm) <= 1e-5 * a[i].GradNorm, $"step {i + 1}: gradient norm {a[i].GradNorm} vs {b[i].GradNorm}");
        }

        // Weights and Adam moments: ‖Δ‖/‖w‖ per tensor within 1e-5 (measured: 1.7e-9 over the whole
        // model). Attention key biases are left out: their true gradient is 0 (softmax ignores a
        // shift shared by all keys), so what they get is rounding noise, which Adam scales up to
        // lr-sized steps of either sign in any run; two single-process runs that sum in another
        // order differ there as much.
        foreach (string file in (string[])["model.safetensors", "checkpoint-20/optimizer.safetensors"])
        {
            var x = SafeTensors.Read(Path.Combine(dir.File("one"), file));
            var y = SafeTensors.Read(Path.Combine(dir.File("two"), file));
            Assert.Equal(x.Keys.Order(), y.Keys.Order());
            foreach (var (name, t) in x)
            {
                if (name.Contains("attention.self.key.bias")) continue;
                double diff = 0, norm = 0;
                for (int i = 0; i < t.Data.Length; i++)
                {
                    diff += Math.Pow(t.Data[i] - y[name].Data[i], 2);
                    norm += Math.Pow(t.Data[i], 2);
                }
                Assert.True(Math.Sqrt(diff) <= 1e-5 * Math.Sqrt(norm), $"{file} {name}: ‖Δ‖ {Math.Sqrt(diff):E2} vs ‖w‖ {Math.Sqrt(norm):E2}");
            }
        }

        // Fine-tuning the result on 2 ranks: each takes half of every batch of 16; rank 0 writes.
        var tune = StartMpi(2, Guid.NewGuid().ToString(), ["finetune", "--model", dir.File("two"), "--out", dir.File("tuned"), "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--distributed", "mpi"]);
        (code, output) = Finish(tune, TimeSpan.FromMinutes(4));
        Assert.True(code == 0, output);
        Assert.Contains("data-parallel over 2 ranks (mpi): about 8 examples per rank and step", output);
        Assert.True(File.Exists(Path.Combine(dir.File("tuned"), FineTuning.FineTuner.EvalFile)), output);
        Assert.Equal(1, output.Split("wrote ").Length - 1); // rank 0 alone reports (and writes)
    }

    [Fact]
    public void Killing_one_rank_stops_both_with_a_line_naming_it_and_the_last_checkpoint_resumes_on_one_process()
    {
        string marker = Guid.NewGuid().ToString();
        var mpi = StartMpi(2, marker, Pretrain("killed", 40, "--distributed", "mpi", "--save-every", "3"));
        var clock = Stopwatch.StartNew();
        while (!Directory.Exists(Path.Combine(dir.File("killed"), "checkpoint-3")))
        {
            Assert.False(mpi.HasExited, "the run ended before its first checkpoint");
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(3), "no checkpoint-3 after 3 minutes");
            Thread.Sleep(100);
        }
        var ranks = RanksOf(marker);
        Assert.Equal([0, 1], ranks.Keys.Order());
        Process.GetProcessById(ranks[1]).Kill();
        var (code, output) = Finish(mpi, TimeSpan.FromSeconds(30)); // fails the test past 30 s
        Assert.NotEqual(0, code);
        Assert.Matches(@"rank 1 .*(signal 9|Killed)", output.Replace('\n', ' ')); // mpirun's line naming the dead rank
        Assert.All(ranks.Values, pid => Assert.True(!Alive(pid), $"rank process {pid} outlived mpirun"));

        // No half checkpoint passes for the latest: every checkpoint-N folder is complete, and the
        // newest resumes, here on one process (the run's --grad-accum 2 splits over 1 or 2 ranks).
        var checkpoints = Directory.GetDirectories(dir.File("killed"), "checkpoint-*");
        Assert.All(checkpoints, c => Assert.True(File.Exists(Path.Combine(c, Trainer.StateFile)) && !c.EndsWith(".tmp"), c));
        string latest = checkpoints.OrderBy(c => int.Parse(Path.GetFileName(c)["checkpoint-".Length..])).Last();
        int step = Trainer.ReadState(latest).Step;
        var (resumed, stdout, err) = CliRunner.Run("pretrain", "--resume", latest, "--out", dir.File("resumed"), "--device", "cpu");
        Assert.True(resumed == 0, err + stdout);
        Assert.Contains($"resuming {latest} at step {step} of 40", stdout);
        Assert.Equal(Enumerable.Range(1, 40), Trainer.ReadMetrics(Path.Combine(dir.File("resumed"), Trainer.MetricsFile)).Select(m => m.Step));
    }

    /// <summary>The PIDs of this test run's ranks, by rank: processes whose environment carries the run's marker.</summary>
    private static Dictionary<int, int> RanksOf(string marker)
    {
        var ranks = new Dictionary<int, int>();
        foreach (string proc in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out int pid)) continue;
            string[] env;
            try { env = File.ReadAllText(Path.Combine(proc, "environ")).Split('\0'); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            if (!env.Contains($"ILGPU_BERT_TEST_RUN={marker}")) continue;
            string? rank = env.FirstOrDefault(v => v.StartsWith("OMPI_COMM_WORLD_RANK=", StringComparison.Ordinal));
            if (rank is not null) ranks[int.Parse(rank["OMPI_COMM_WORLD_RANK=".Length..])] = pid;
        }
        return ranks;
    }

    /// <summary>Running (a zombie, killed but not yet reaped, counts as gone).</summary>
    private static bool Alive(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/stat").Split(')')[^1].Trim()[0] != 'Z'; }
        catch (IOException) { return false; }
    }
}
