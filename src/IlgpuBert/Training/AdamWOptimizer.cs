// AdamW over a model's parameters with the global-norm clipping BERT uses, on the device: one
// norm over all gradients, then one fused update per tensor (weight decay skipped for biases and
// LayerNorm weights, as Parameter.Decay says). Its moments save and load with a checkpoint so a
// resumed run continues bit for bit.
using ILGPU;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Kernels;
using IlgpuBert.Model;
using IlgpuBert.Runtime;

namespace IlgpuBert.Training;

public sealed record AdamWSettings(double Beta1 = 0.9, double Beta2 = 0.999, double Eps = 1e-6, double WeightDecay = 0.01, double MaxGradNorm = 1.0);

public sealed class AdamWOptimizer : IDisposable
{
    private readonly BertDevice device;
    private readonly IReadOnlyList<Parameter> parameters;
    private readonly Tensor[] m, v;
    private readonly Tensor norm;
    private readonly IReadOnlyList<float>? lrScales;

    /// <param name="lrScales">Per-parameter multipliers of the learning rate (layer-wise decay); all 1 when null.</param>
    public AdamWOptimizer(BertDevice device, IReadOnlyList<Parameter> parameters, AdamWSettings settings, IReadOnlyList<float>? lrScales = null)
    {
        if (lrScales is not null && lrScales.Count != parameters.Count) throw new ArgumentException($"{lrScales.Count} learning-rate scales for {parameters.Count} parameters");
        this.device = device;
        this.parameters = parameters;
        this.lrScales = lrScales;
        Settings = settings;
        m = parameters.Select(p => Zeros(p.Var.Shape)).ToArray();
        v = parameters.Select(p => Zeros(p.Var.Shape)).ToArray();
        norm = new Tensor(device, 1);
    }

    public AdamWSettings Settings { get; }

    /// <summary>Steps taken so far (bias correction uses Step + 1 for the next one).</summary>
    public int Step { get; set; }

    private Tensor Zeros(int[] shape)
    {
        var t = new Tensor(device, shape);
        device.Kernels.Elementwise.Zero(t.View);
        return t;
    }

    /// <summary>The global L2 norm of the current gradients (before clipping); also left on the device for the update.</summary>
    public float GradNorm()
    {
        var grads = parameters.Select(p => (ArrayView<float>)p.Var.EnsureGrad().View).ToList();
        device.Kernels.AdamW.GlobalNorm(grads, norm.View);
        return norm.ToHost()[0];
    }

    /// <summary>One update with learning rate <paramref name="lr"/>; call <see cref="GradNorm"/> first.</summary>
    public void Update(float lr)
    {
        Step++;
        var s = Settings;
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            float scaled = lr * (lrScales?[i] ?? 1f);
            var step = new AdamWStep(scaled, (float)s.Beta1, (float)s.Beta2, (float)s.Eps, p.Decay ? (float)s.WeightDecay : 0f, Step, (float)s.MaxGradNorm);
            device.Kernels.AdamW.Update(p.Var.Value.View, p.Var.EnsureGrad().View, m[i].View, v[i].View, norm.View, p.Var.Length, step);
        }
    }

    public void Save(string path)
    {
        var tensors = new Dictionary<string, HostTensor>();
        for (int i = 0; i < parameters.Count; i++)
        {
            string name = parameters[i].Var.Name ?? $"param{i}";
            tensors[$"exp_avg.{name}"] = new HostTensor(parameters[i].Var.Shape, m[i].ToHost());
            tensors[$"exp_avg_sq.{name}"] = new HostTensor(parameters[i].Var.Shape, v[i].ToHost());
        }
        SafeTensors.Write(path, tensors, new Dictionary<string, string> { ["step"] = Step.ToString() });
    }

    public void Load(string path, int step)
    {
        var tensors = SafeTensors.Read(path);
        for (int i = 0; i < parameters.Count; i++)
        {
            string name = parameters[i].Var.Name ?? $"param{i}";
            foreach (var (prefix, target) in new[] { ("exp_avg.", m[i]), ("exp_avg_sq.", v[i]) })
            {
                if (!tensors.TryGetValue(prefix + name, out var t) || t.Length != target.Length)
                    throw new CheckpointException($"{path}: optimizer state {prefix}{name} is missing or misshapen");
                target.CopyFrom(t.Data);
            }
        }
        Step = step;
    }

    public void Dispose()
    {
        foreach (var t in m.Concat(v)) t.Dispose();
        norm.Dispose();
    }
}

/// <summary>Linear warmup from 0 to the peak over <c>warmup</c> steps, then linear decay to 0 at <c>total</c> (BERT's schedule).</summary>
public static class LinearSchedule
{
    public static float At(int step, float peak, int warmup, int total)
    {
        if (warmup > 0 && step <= warmup) return peak * step / warmup;
        return peak * Math.Max(0f, (float)(total - step) / Math.Max(1, total - warmup));
    }
}
