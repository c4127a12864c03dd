// A model folder in HF's layout: config.json, model.safetensors, vocab.txt (and optionally
// tokenizer_config.json). This is what `init` writes, `forward`/`grad` read, and what HF's
// save_pretrained produces.
using IlgpuBert.Checkpoints;
using IlgpuBert.Runtime;

namespace IlgpuBert.Model;

public static class BertFolder
{
    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors", VocabFile = "vocab.txt";

    /// <summary>Loads config and weights; messages about initialised or unused tensors go to <paramref name="log"/>.</summary>
    public static BertForPreTraining Load(BertDevice device, string dir, TextWriter? log = null) => Load(device, dir, log, out _);

    /// <summary>As <see cref="Load(BertDevice, string, TextWriter?)"/>, also naming the parameters the file lacked (initialised instead).</summary>
    public static BertForPreTraining Load(BertDevice device, string dir, TextWriter? log, out IReadOnlyList<string> initializedNames)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException($"{dir}: no such model folder");
        if (Path.TrimEndingDirectorySeparator(dir).EndsWith(".tmp", StringComparison.Ordinal))
            throw new CheckpointException($"{dir}: an unfinished checkpoint (a run stopped while writing it); use the folder without .tmp");
        var config = BertConfig.Read(Path.Combine(dir, ConfigFile));
        string weights = Path.Combine(dir, WeightsFile);
        if (!File.Exists(weights)) throw new CheckpointException($"{weights}: no such file (a model folder needs model.safetensors)");
        var model = new BertForPreTraining(device, config);
        try
        {
            var (initialized, unused) = model.Parameters.Load(weights);
            initializedNames = initialized;
            if (initialized.Count > 0)
                log?.WriteLine($"note: {weights} has no {string.Join(", ", initialized)}; initialised them (a BertModel checkpoint has no pre-training heads)");
            if (unused.Count > 0)
                log?.WriteLine($"note: ignored tensors not in BertForPreTraining: {string.Join(", ", unused)}");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Writes config.json and model.safetensors (each atomically), and copies the vocabulary if given.</summary>
    public static void Save(BertForPreTraining model, string dir, string? vocabSource = null) => Save(model.Config, model.Parameters, dir, vocabSource);

    /// <summary>Writes config.json and model.safetensors (each atomically), and copies the vocabulary if given.</summary>
    public static void Save(BertConfig config, BertParameters parameters, string dir, string? vocabSource = null)
    {
        bool existed = Directory.Exists(dir);
        Directory.CreateDirectory(dir);
        try
        {
            parameters.Save(Path.Combine(dir, WeightsFile)); // the large file first: a full disk fails here, before the config says "model"
            config.Write(Path.Combine(dir, ConfigFile));
            if (vocabSource is not null) CopyInto(vocabSource, dir, VocabFile);
        }
        catch when (!existed)
        {
            // A folder this call created holds nothing usable: remove it rather than leave half a model.
            try { Directory.Delete(dir, true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Copies a file into <paramref name="dir"/> as <paramref name="name"/> (atomically), unless it is already that file.</summary>
    public static void CopyInto(string source, string dir, string name)
    {
        string target = Path.Combine(dir, name);
        if (Path.GetFullPath(source) != Path.GetFullPath(target))
            AtomicFile.Write(target, s => { using var src = File.OpenRead(source); src.CopyTo(s); });
    }
}
