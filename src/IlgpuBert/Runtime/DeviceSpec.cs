namespace IlgpuBert.Runtime;

/// <summary>The kinds of accelerator ILGPU offers.</summary>
public enum DeviceKind
{
    /// <summary>The first that works: CUDA, then OpenCL, then the CPU.</summary>
    Auto,
    /// <summary>An NVIDIA GPU through CUDA.</summary>
    Cuda,
    /// <summary>An OpenCL 2.0 device (AMD and Intel GPUs; PoCL on CPUs).</summary>
    OpenCL,
    /// <summary>ILGPU's CPU accelerator (hot ops as host SIMD code).</summary>
    Cpu,
}

/// <summary>
/// What the user asked for with <c>--device auto|cuda|opencl|cpu[:N]</c> or ILGPU_BERT_DEVICE.
/// N counts devices of that kind from 0 (for auto: among all, in the order auto tries them).
/// </summary>
public readonly record struct DeviceSpec(DeviceKind Kind, int? Index)
{
    /// <summary>The environment variable that sets the default device.</summary>
    public const string EnvironmentVariable = "ILGPU_BERT_DEVICE";

    /// <summary>The first device auto finds (CUDA, then OpenCL, then the CPU).</summary>
    public static DeviceSpec Auto => new(DeviceKind.Auto, null);

    /// <summary>Parses auto, cuda, opencl or cpu, each optionally :N; null or blank means auto.</summary>
    public static DeviceSpec Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
            return Auto;
        string s = text.Trim().ToLowerInvariant();
        int? index = null;
        int colon = s.IndexOf(':');
        if (colon >= 0)
        {
            if (!int.TryParse(s[(colon + 1)..], out int n) || n < 0)
                throw new DeviceException($"invalid device \"{text}\": the index after ':' must be a non-negative integer");
            index = n;
            s = s[..colon];
        }
        var kind = s switch
        {
            "auto" => DeviceKind.Auto,
            "cuda" => DeviceKind.Cuda,
            "opencl" or "cl" => DeviceKind.OpenCL,
            "cpu" => DeviceKind.Cpu,
            _ => throw new DeviceException($"invalid device \"{text}\": expected auto, cuda, opencl or cpu, optionally with :N"),
        };
        return new DeviceSpec(kind, index);
    }

    /// <summary>The spec from ILGPU_BERT_DEVICE, or auto when it is unset.</summary>
    public static DeviceSpec FromEnvironment() => Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>The spec as --device takes it.</summary>
    public override string ToString() =>
        (Kind == DeviceKind.OpenCL ? "opencl" : Kind.ToString().ToLowerInvariant()) + (Index is { } i ? $":{i}" : "");
}

/// <summary>A device that was asked for is absent or unusable. The CLI prints the message and exits with 2.</summary>
public sealed class DeviceException(string message) : Exception(message);
