using System.CommandLine;
using IlgpuBert.Runtime;

namespace IlgpuBert.Cli;

/// <summary><c>ilgpu-bert devices</c>: every accelerator ILGPU finds; '*' marks the one auto picks.</summary>
public static class DevicesCommand
{
    public static Command Create(TextWriter stdout)
    {
        var command = new Command("devices", "List the accelerators ILGPU finds; * marks the one --device auto picks.");
        command.SetAction(parse =>
        {
            var devices = BertDevice.List();
            if (parse.GetValue(Cli.DeviceOption) is { } wanted && DeviceSpec.Parse(wanted) is { Kind: not DeviceKind.Auto } spec)
            {
                // --device narrows the list; one that names nothing present is an error, not an empty table.
                bool Matches(DeviceInfo d) => d.Kind == spec.Kind && (spec.Index is null || d.Spec == spec.ToString());
                devices = [.. devices.Where(Matches)];
                if (devices.Count == 0)
                    throw new DeviceException($"no device {spec}; present: {string.Join(", ", BertDevice.List().Select(d => d.Spec))}");
            }
            stdout.WriteLine($"{"",1} {"device",-9} {"type",-6} {"name",-40} {"memory",10} {"warp",5} {"max group",9} {"SMs/cores",9} {"compute",7}");
            foreach (var d in devices)
            {
                string memory = d.MemoryBytes >= 1L << 30 ? $"{d.MemoryBytes / (double)(1L << 30):F1} GiB" : $"{d.MemoryBytes / (double)(1L << 20):F0} MiB";
                string name = d.Name.Length > 40 ? d.Name[..40] : d.Name;
                string type = d.Kind switch { DeviceKind.Cuda => "CUDA", DeviceKind.OpenCL => "OpenCL", _ => "CPU" };
                stdout.WriteLine($"{(d.IsAutoChoice ? "*" : " "),1} {d.Spec,-9} {type,-6} {name,-40} {memory,10} {d.WarpSize,5} {d.MaxGroupSize,9} {d.Multiprocessors,9} {d.ComputeCapability ?? "-",7}");
            }
            return 0;
        });
        return command;
    }
}
