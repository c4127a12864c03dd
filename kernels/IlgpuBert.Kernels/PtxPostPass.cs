// What the tensor-core GEMM's PTX needs between ILGPU's code generator and the driver. ILGPU 1.5.3's
// inline PTX has one output per statement and stores that output to a stack slot of its own
// (`.local .b8 __local_depotN[4]`, `st.local` after the instruction, `ld.local` where the value is
// used); ptxas keeps those slots as local memory, so a kernel full of mma would spend most of its time
// on STL/LDL. Two rewrites, each exact:
//  1. Fuse: the four pseudo-instructions `ilgpubert.mma.m16n8k8.tf32.partI d_I, a0..a3, b0, b1, c_I`
//     (TensorCores.Mma) become the one `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`, at the last
//     part's place (every input is defined by then), followed by the parts' stores of their outputs.
//     Only those stores may stand between the parts.
//  2. Promote: a 4-byte stack slot whose address register is only ever used as the address of st.local
//     and ld.local of one 32-bit type becomes a register (`st.local [slot], v` → `mov v'`, `ld.local r,
//     [slot]` → `mov r, v'`). A slot is one variable, so this is exactly what the stores and loads did.
// Anything else that mentions a pseudo-instruction is an error, not something to pass on.
using System.Text;
using System.Text.RegularExpressions;

namespace IlgpuBert.Kernels;

public static partial class PtxPostPass
{
    /// <summary>Whether the PTX has pseudo-instructions that <see cref="Apply"/> must rewrite before it can be assembled.</summary>
    public static bool Needed(string ptx) => ptx.Contains(TensorCores.PseudoMma, StringComparison.Ordinal);

    /// <summary>The PTX with the mma parts fused and single-variable stack slots in registers.</summary>
    public static string Apply(string ptx) => PromoteSlots(FuseMma(ptx));

    [GeneratedRegex(@"^\s*ilgpubert\.mma\.m16n8k8\.tf32\.part(\d)\s+(.*);\s*$")]
    private static partial Regex Part();

    [GeneratedRegex(@"^\s*st\.local\.")]
    private static partial Regex LocalStore();

    internal static string FuseMma(string ptx)
    {
        var lines = ptx.Split('\n');
        var output = new List<string>(lines.Length);
        for (int i = 0; i < lines.Length; i++)
        {
            var first = Part().Match(lines[i]);
            if (!first.Success)
            {
                if (lines[i].Contains(TensorCores.PseudoMma, StringComparison.Ordinal))
                    throw new InvalidOperationException($"PTX line {i + 1}: a pseudo mma the post-pass cannot read: {lines[i].Trim()}");
                output.Add(lines[i]);
                continue;
            }
            var parts = new List<string[]>();
            var stores = new List<string>();
            int j = i;
            for (; j < lines.Length && parts.Count < 4; j++)
            {
                var m = Part().Match(lines[j]);
                if (m.Success)
                {
                    if (int.Parse(m.Groups[1].Value) != parts.Count)
                        throw new InvalidOperationException($"PTX line {j + 1}: mma part {m.Groups[1].Value} where part {parts.Count} was due");
                    var operands = m.Groups[2].Value.Split(',').Select(o => o.Trim()).ToArray();
                    if (operands.Length != 8) throw new InvalidOperationException($"PTX line {j + 1}: an mma part needs 8 operands, has {operands.Length}");
                    parts.Add(operands);
                }
                else if (LocalStore().IsMatch(lines[j])) stores.Add(lines[j]);
                else throw new InvalidOperationException($"PTX line {j + 1}: `{lines[j].Trim()}` between the parts of one mma (only their stores may be)");
            }
            if (parts.Count < 4) throw new InvalidOperationException($"PTX line {i + 1}: an mma with only {parts.Count} of its 4 parts");
            for (int p = 1; p < 4; p++)
                if (!parts[p].AsSpan(1, 6).SequenceEqual(parts[0].AsSpan(1, 6)))
                    throw new InvalidOperationException($"PTX line {i + 1}: the parts of one mma read different A or B registers");
            output.Add($"\tmma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {{{string.Join(", ", parts.Select(p => p[0]))}}}, " +
                $"{{{string.Join(", ", parts[0][1..5])}}}, {{{string.Join(", ", parts[0][5..7])}}}, {{{string.Join(", ", parts.Select(p => p[7]))}}};");
            output.AddRange(stores);
            i = j - 1;
        }
        return string.Join('\n', output);
    }

    [GeneratedRegex(@"^\s*\.local\s+\.align\s+\d+\s+\.b8\s+(__local_depot\d+)\[4\];\s*$")]
    private static partial Regex Slot();

    [GeneratedRegex(@"^\s*mov\.(?:b|u)64\s+(%rd\d+),\s*(__local_depot\d+);\s*$")]
    private static partial Regex SlotAddress();

    [GeneratedRegex(@"^(\s*)st\.local\.([bfsu]32)\s+\[(%rd\d+)\],\s*([^;]+);\s*$")]
    private static partial Regex SlotStore();

    [GeneratedRegex(@"^(\s*)ld\.local\.([bfsu]32)\s+(%\w+),\s*\[(%rd\d+)\];\s*$")]
    private static partial Regex SlotLoad();

    [GeneratedRegex(@"%rd\d+\b")]
    private static partial Regex AddressRegister();

    internal static string PromoteSlots(string ptx)
    {
        var lines = ptx.Split('\n').ToList();
        var slots = lines.Select(l => Slot().Match(l)).Where(m => m.Success).Select(m => m.Groups[1].Value).ToHashSet();
        // slot → its address register, where the slot's name appears in exactly one mov and nowhere else.
        var address = new Dictionary<string, string>();
        foreach (string slot in slots)
        {
            var uses = lines.Where(l => Regex.IsMatch(l, $@"\b{slot}\b")).ToList();
            var movs = uses.Select(l => SlotAddress().Match(l)).Where(m => m.Success).ToList();
            if (uses.Count == 2 && movs.Count == 1) address[slot] = movs[0].Groups[1].Value;
        }
        // An address register qualifies when every other line that names it is a whole-slot 32-bit store or load of one type.
        var promoted = new Dictionary<string, (string Slot, string Type)>();
        foreach (var (slot, reg) in address)
        {
            string? type = null;
            bool ok = true;
            foreach (string line in lines)
            {
                if (!AddressRegister().Matches(line).Any(m => m.Value == reg) || SlotAddress().IsMatch(line)) continue;
                var s = SlotStore().Match(line);
                var l = SlotLoad().Match(line);
                string? t = s.Success && s.Groups[3].Value == reg ? s.Groups[2].Value : l.Success && l.Groups[4].Value == reg ? l.Groups[2].Value : null;
                if (t is null || (type is not null && type != t)) { ok = false; break; }
                type = t;
            }
            if (ok && type is not null) promoted[reg] = (slot, type);
        }
        if (promoted.Count == 0) return ptx;

        string Register(string reg) => $"%slot{reg[3..]}";
        var output = new StringBuilder(ptx.Length);
        var declarations = promoted.GroupBy(p => p.Value.Type == "f32" ? "f32" : "b32")
            .Select(g => $"\t.reg .{g.Key} {string.Join(", ", g.Select(p => Register(p.Key)))};");
        bool declared = false;
        foreach (string line in lines)
        {
            var slot = Slot().Match(line);
            if (slot.Success && promoted.Values.Any(p => p.Slot == slot.Groups[1].Value)) continue;
            var mov = SlotAddress().Match(line);
            if (mov.Success && promoted.ContainsKey(mov.Groups[1].Value)) continue;
            var store = SlotStore().Match(line);
            if (store.Success && promoted.TryGetValue(store.Groups[3].Value, out var ps))
            {
                output.Append($"{store.Groups[1].Value}mov.{MovType(ps.Type)} {Register(store.Groups[3].Value)}, {store.Groups[4].Value.Trim()};\n");
                continue;
            }
            var load = SlotLoad().Match(line);
            if (load.Success && promoted.TryGetValue(load.Groups[4].Value, out var pl))
            {
                output.Append($"{load.Groups[1].Value}mov.{MovType(pl.Type)} {load.Groups[3].Value}, {Register(load.Groups[4].Value)};\n");
                continue;
            }
            output.Append(line).Append('\n');
            // Registers are declared at the top of the entry's body, after its opening brace.
            if (!declared && line.Trim() == "{")
            {
                foreach (string d in declarations) output.Append(d).Append('\n');
                declared = true;
            }
        }
        if (!declared) throw new InvalidOperationException("PTX without a function body to declare the promoted registers in");
        return output.ToString(0, output.Length - 1);
    }

    private static string MovType(string type) => type == "f32" ? "f32" : "b32";
}

/// <summary>A kernel whose PTX must go through <see cref="PtxPostPass"/> before it is loaded or assembled.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class NeedsPtxPostPassAttribute : Attribute;
