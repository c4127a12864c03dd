using System.Text.Json;
using IlgpuBert.Cli;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Tests;

public class RuntimeTests
{
    [Theory]
    [InlineData("auto", DeviceKind.Auto, null)]
    [InlineData("", DeviceKind.Auto, null)]
    [InlineData("cpu", DeviceKind.Cpu, null)]
    [InlineData("CUDA:1", DeviceKind.Cuda, 1)]
    [InlineData("opencl:0", DeviceKind.OpenCL, 0)]
    public void Device_specs_parse(string text, DeviceKind kind, int? index) =>
        Assert.Equal(new DeviceSpec(kind, index), DeviceSpec.Parse(text));

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:x")]
    [InlineData("cpu:-1")]
    public void Bad_device_specs_are_clear_errors(string text) =>
        Assert.Contains(text, Assert.Throws<DeviceException>(() => DeviceSpec.Parse(text)).Message);

    [Fact]
    public void Cpu_device_opens_with_its_kernels_and_absent_devices_are_errors()
    {
        using (var device = BertDevice.Open(DeviceSpec.Parse("cpu")))
        {
            Assert.Equal("cpu:0", device.Spec);
            Assert.Equal(DeviceKind.Cpu, device.Kind);
            Assert.Same(device.Kernels.Gemm, device.Kernels.Gemm); // loaded once, cached
        }
        Assert.Contains("cuda device 99", Assert.Throws<DeviceException>(() => BertDevice.Open(DeviceSpec.Parse("cuda:99"))).Message);
        Assert.Throws<DeviceException>(() => BertDevice.Open(DeviceSpec.Parse("opencl:99")));
        Assert.Throws<DeviceException>(() => BertDevice.Open(DeviceSpec.Parse("cpu:1")));
    }

    [Fact]
    public void Device_list_marks_exactly_the_auto_choice()
    {
        var list = BertDevice.List();
        Assert.Single(list, d => d.IsAutoChoice);
        Assert.True(list[0].IsAutoChoice);
        Assert.Contains(list, d => d.Kind == DeviceKind.Cpu && d.MemoryBytes > 0 && d.MaxGroupSize >= 1);
    }

    [Fact]
    public void Pool_reuses_buffers_so_a_steady_state_allocates_nothing()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var pool = device.Pool;
        void Step()
        {
            using var a = pool.Rent(1000);
            using var b = pool.Rent(333);
            using var c = pool.Rent(1000);
        }
        Step();
        long after = pool.Allocations;
        Assert.Equal(3, after);
        for (int i = 0; i < 5; i++) Step();
        Assert.Equal(after, pool.Allocations);
        Assert.Equal(0, pool.BytesInUse);
        Assert.Equal(2333 * 4, pool.PeakBytesInUse);
        Assert.Equal(1000, pool.LargestRequest);
        pool.Trim();
        Assert.Equal(0, pool.BytesAllocated);
    }

    [Fact]
    public void Pool_serves_a_length_that_changes_every_step_from_a_few_size_classes()
    {
        // A pretraining step's logits are [M, V] with M, the masked positions, drawn anew each step:
        // kept by exact length, every step allocated fresh buffers (and faulted in their pages).
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var pool = device.Pool;
        var rng = new Random(3);
        void Step()
        {
            long m = rng.Next(580, 650);
            using var weights = pool.Rent(100_000);
            using var logits = pool.Rent(m * 8192);
            using var gradient = pool.Rent(m * 8192);
            Assert.Equal(m * 8192, logits.View.Length);
        }
        for (int i = 0; i < 10; i++) Step();
        long after = pool.Allocations;
        Assert.InRange(after, 3, 5); // the weights and two buffers of each of at most two classes
        for (int i = 0; i < 50; i++) Step();
        Assert.Equal(after, pool.Allocations);
        Assert.Equal(0, pool.BytesInUse);
        Assert.Equal(16384, BufferPool.Capacity(16384));
        Assert.Equal(16384 + 2048, BufferPool.Capacity(16385));
        Assert.Equal(9L << 19, BufferPool.Capacity((4L << 20) + 1)); // 2^22 + 1 → 2^22 + 2^19
        Assert.Equal(1, BufferPool.Capacity(0));
    }

    [Fact]
    public void Pool_of_ever_changing_lengths_stays_within_the_idle_floor_of_its_peak()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var pool = device.Pool;
        long asked = 0;
        for (int k = 20; k <= 22; k++)
            for (int j = 0; j < 8; j++)
            {
                long length = (1L << k) + j * (1L << (k - 3)); // 24 size classes, 4 to 30 MB
                using (pool.Rent(length)) asked += length * sizeof(float);
                Assert.InRange(pool.BytesAllocated, 0, pool.PeakBytesInUse + BufferPool.IdleFloor);
            }
        Assert.Equal(24, pool.Allocations);
        Assert.True(asked > pool.PeakBytesInUse + BufferPool.IdleFloor, "the test must rent more than the pool may keep");
    }

    [Fact]
    public void Pool_refuses_what_the_budget_cannot_hold_after_freeing_idle_buffers_and_stays_usable()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var pool = device.Pool;
        Assert.InRange(pool.Budget, 1L << 30, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes); // this machine: 75% of its memory
        pool.Budget = 4000 * sizeof(float);
        using (pool.Rent(3000)) { }                  // idle now, still held
        using (var a = pool.Rent(2000)) { }          // fits only once the idle 3000 are freed
        Assert.Equal(2000 * sizeof(float), pool.BytesAllocated);
        using var held = pool.Rent(2000);
        var e = Assert.Throws<DeviceException>(() => pool.Rent(2001));
        Assert.Equal($"out of memory on {device.Name}: 0.00 GiB more are needed with 0.00 GiB in use, and 0.00 GiB are usable; use a smaller batch, sequence length or model", e.Message);
        Assert.Equal(2000 * sizeof(float), pool.BytesInUse);
        using var fits = pool.Rent(2000);            // the failure left the accounting intact
    }

    [Fact]
    public void A_batch_too_big_for_the_device_is_a_clear_error_before_any_work()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = BertConfig.ForSize("tiny", 100);
        using var model = new BertForPreTraining(device, config);
        device.Pool.Budget = device.Pool.BytesAllocated + (64L << 20); // the weights and 64 MiB
        var rows = Enumerable.Range(0, 4096).Select(_ => Enumerable.Repeat(5, 128).ToArray()).ToArray();
        var inputs = BertInputs.FromRows(rows, rows.Select(r => new int[r.Length]).ToArray(), rows.Select(r => r.Select(_ => 1).ToArray()).ToArray());
        using var tape = new Autograd.Tape(recording: false);
        var e = Assert.Throws<DeviceException>(() => model.Forward(tape, inputs, Dropouts.Off));
        Assert.StartsWith($"out of memory on {device.Name}: ", e.Message);
    }

    [Fact]
    public void Tensor_round_trips_through_device_memory()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var data = Rand.Normal(new Random(1), 12);
        using var t = Tensor.FromHost(device, data, 3, 4);
        Assert.Equal([3, 4], t.Shape);
        Assert.Equal(data, t.ToHost());
        Assert.Throws<ArgumentException>(() => Tensor.FromHost(device, data, 5, 5));
    }


    [Fact]
    public void Cli_devices_lists_and_marks_the_auto_device()
    {
        var (code, output, _) = CliRunner.Run("devices");
        Assert.Equal(0, code);
        var marked = output.Split('\n').Where(l => l.StartsWith('*')).ToList();
        Assert.Single(marked);
        Assert.Contains("cpu:0", output);
    }

    [Theory]
    [InlineData("gemm", "--m", "33", "--n", "17", "--k", "9", "--trans", "TN")]
    [InlineData("gelu", "--rows", "7", "--cols", "33")]
    [InlineData("layernorm", "--rows", "7", "--cols", "33")]
    [InlineData("softmax-xent", "--rows", "3", "--cols", "129")]
    [InlineData("adamw", "--params", "1000")]
    [InlineData("attention", "--b", "2", "--s", "33", "--nh", "2", "--hd", "32")]
    [InlineData("bert-step", "--b", "2", "--s", "16", "--size", "tiny")]
    public void Cli_bench_json_reports_each_op(string op, params string[] sizes)
    {
        var (code, output, err) = CliRunner.Run(["bench", op, "--device", "cpu", "--json", .. sizes]);
        Assert.True(code == 0, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(lines);
        foreach (var line in lines)
        {
            using var doc = JsonDocument.Parse(line);
            var root = doc.RootElement;
            Assert.StartsWith(op == "adamw" ? "" : op, root.GetProperty("op").GetString());
            Assert.Equal("cpu:0", root.GetProperty("device").GetString());
            Assert.False(string.IsNullOrEmpty(root.GetProperty("shape").GetString()));
            Assert.True(root.GetProperty("ms").GetDouble() > 0);
            bool hasRate = root.TryGetProperty("gflops", out var gflops) ? gflops.GetDouble() > 0
                : root.TryGetProperty("tokens_per_s", out var tps) ? tps.GetDouble() > 0 : root.GetProperty("gbps").GetDouble() > 0;
            Assert.True(hasRate, line);
        }
        if (op == "gemm") Assert.Contains("m=33 n=17 k=9 op=TN", output);
    }

    [Fact]
    public void Cli_bench_forward_times_a_model_folders_encoder()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir.File("vocab.txt"), Text.WordPieceTrainer.SpecialTokens.Concat(["the", "a", "of"]));
        Assert.Equal(0, CliRunner.Run("init", "--size", "tiny", "--vocab", dir.File("vocab.txt"), "--out", dir.File("m"), "--device", "cpu").Code);
        var (code, output, err) = CliRunner.Run("bench", "forward", "--model", dir.File("m"), "--b", "2", "--s", "16", "--json", "--device", "cpu");
        Assert.True(code == 0, err);
        using var doc = JsonDocument.Parse(output);
        Assert.Equal("forward", doc.RootElement.GetProperty("op").GetString());
        Assert.Equal("m b=2 s=16", doc.RootElement.GetProperty("shape").GetString());
        Assert.True(doc.RootElement.GetProperty("tokens_per_s").GetDouble() > 0);

        // Several folders are timed in turn, one line each in the order given.
        Assert.Equal(0, CliRunner.Run("init", "--size", "tiny", "--vocab", dir.File("vocab.txt"), "--out", dir.File("m2"), "--device", "cpu").Code);
        (code, output, err) = CliRunner.Run("bench", "forward", "--model", dir.File("m2"), "--model", dir.File("m"), "--rounds", "2", "--b", "1", "--s", "8", "--json", "--device", "cpu");
        Assert.True(code == 0, err);
        var shapes = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("shape").GetString()!).ToArray();
        Assert.Equal(["m2 b=1 s=8", "m b=1 s=8"], shapes);
        Assert.NotEqual(0, CliRunner.Run("bench", "forward", "--model", dir.File("m"), "--rounds", "0", "--device", "cpu").Code);
    }

    [Theory]
    [InlineData("bench", "gemm", "--device", "cuda:99")]
    [InlineData("bench", "gemm", "--device", "tpu")]
    [InlineData("bench", "gemm", "--m", "0", "--device", "cpu")]
    [InlineData("bench", "sort")]
    [InlineData("bench", "forward", "--device", "cpu")]
    public void Cli_errors_are_one_line_and_exit_code_2(params string[] args)
    {
        var (code, output, err) = CliRunner.Run(args);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.StartsWith("error: ", err);
        Assert.DoesNotContain("   at ", err); // no stack trace
    }

    [Fact]
    public void A_bench_row_timed_below_the_clock_has_no_rate_rather_than_infinity()
    {
        var row = new Bench.BenchResult("adamw", "cpu:0", "n=10", 0, 4.0 * 10 / 0.0, double.NaN) { TokensPerSecond = double.PositiveInfinity };
        Assert.Null(row.Gflops);
        Assert.Null(row.Gbps);
        Assert.Null(row.TokensPerSecond);
        var timed = new Bench.BenchResult("gemm", "cpu:0", "m=1", 0.5, 2.0, 3.0) { TokensPerSecond = 7.0 };
        Assert.Equal((2.0, 3.0, 7.0), (timed.Gflops!.Value, timed.Gbps!.Value, timed.TokensPerSecond!.Value));
        Assert.Contains("\"gflops\":null", System.Text.Json.JsonSerializer.Serialize(row, new System.Text.Json.JsonSerializerOptions { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower }));
    }

    [Fact]
    public void Cli_device_defaults_to_the_environment_variable()
    {
        string? old = Environment.GetEnvironmentVariable(DeviceSpec.EnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(DeviceSpec.EnvironmentVariable, "cuda:42");
            var (code, _, err) = CliRunner.Run("bench", "adamw", "--params", "10", "--json");
            Assert.Equal(2, code);
            Assert.Contains("cuda device 42", err);
            Environment.SetEnvironmentVariable(DeviceSpec.EnvironmentVariable, "cpu");
            var (cpuCode, _, cpuErr) = CliRunner.Run("bench", "adamw", "--params", "10", "--json");
            Assert.True(cpuCode == 0, $"exit code {cpuCode}: {cpuErr}");
        }
        finally
        {
            Environment.SetEnvironmentVariable(DeviceSpec.EnvironmentVariable, old);
        }
    }
}
