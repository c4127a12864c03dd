namespace IlgpuBert.Tests;

/// <summary>Runs the ilgpu-bert entry point in-process and captures what it prints.</summary>
public static class CliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Cli.Cli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// A small pretraining run's arguments (BERT-tiny, vocabulary 600, batch 8 × 32, 80 documents of
    /// the default corpus written into <paramref name="dir"/>), for the tests that run it as processes.
    /// </summary>
    public static string[] SmallPretraining(TempDir dir, string output, int steps, params string[] extra)
    {
        string corpus = dir.File("corpus.txt");
        if (!File.Exists(corpus))
            File.WriteAllLines(corpus, Text.DefaultCorpus.TypeDocuments().Take(80).SelectMany(d => d.Texts.Append("")));
        return ["pretrain", "--corpus", corpus, "--vocab-size", "600", "--size", "tiny", "--batch-size", "8", "--seq-len", "32",
            "--steps", steps.ToString(), "--eval-every", "0", "--out", dir.File(output), "--device", "cpu", .. extra];
    }
}
