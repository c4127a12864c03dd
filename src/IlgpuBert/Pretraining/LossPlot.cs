using IlgpuBert.Checkpoints;

namespace IlgpuBert.Pretraining;

/// <summary>
/// The loss-curve PNG of a run: total, MLM, sentence and auxiliary-head losses per step (for ELECTRA also
/// the detection loss of a detector that knows only the replaced share), held-out perplexity's log where measured.
/// </summary>
public static class LossPlot
{
    public static void Write(string path, IReadOnlyList<StepMetrics> metrics)
    {
        if (metrics.Count == 0) return;
        var plot = new ScottPlot.Plot();
        double[] steps = metrics.Select(m => (double)m.Step).ToArray();
        var total = plot.Add.Scatter(steps, metrics.Select(m => m.Loss).ToArray());
        total.LegendText = "loss";
        var mlm = plot.Add.Scatter(steps, metrics.Select(m => m.MlmLoss).ToArray());
        mlm.LegendText = "MLM loss";
        if (metrics.Any(m => m.SentenceLoss != 0))
            plot.Add.Scatter(steps, metrics.Select(m => m.SentenceLoss).ToArray()).LegendText = "sentence loss";
        foreach (var head in metrics[0].AuxLosses.Keys)
            plot.Add.Scatter(steps, metrics.Select(m => m.AuxLosses[head]).ToArray()).LegendText = $"{head} loss";
        if (metrics.All(m => m.ReplacedShare is not null))
            plot.Add.Scatter(steps, metrics.Select(m => m.RateOnlyDetectionLoss!.Value).ToArray()).LegendText = "replaced loss knowing only the rate";
        var evals = metrics.Where(m => m.EvalPerplexity is not null).ToList();
        if (evals.Count > 0)
            plot.Add.Scatter(evals.Select(m => (double)m.Step).ToArray(), evals.Select(m => Math.Log(m.EvalPerplexity!.Value)).ToArray()).LegendText = "held-out MLM loss";
        plot.Title("IlgpuBert pretraining");
        plot.XLabel("step");
        plot.YLabel("cross-entropy (nats)");
        plot.ShowLegend();
        var bytes = plot.GetImageBytes(900, 500, ScottPlot.ImageFormat.Png);
        AtomicFile.Write(path, s => s.Write(bytes));
    }
}
