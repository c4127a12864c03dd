// The pictures of the analysis commands: attention heatmaps with word pieces on the axes, a grid
// of all heads, layer × head statistic maps, and per-layer line plots. Every picture has a title,
// axis labels and a colour scale.
using IlgpuBert.Checkpoints;
using ScottPlot;

namespace IlgpuBert.Analysis;

public static class AnalysisPlots
{
    private static void Save(Plot plot, string path, int width, int height) =>
        AtomicFile.Write(path, s => s.Write(plot.GetImageBytes(width, height, ImageFormat.Png)));

    /// <summary>One head's map: rows are queries (top to bottom), columns keys, tokens on both axes.</summary>
    public static void AttentionMap(string path, string[] tokens, float[] probs, int s, int head, string title)
    {
        var data = new double[s, s];
        for (int i = 0; i < s; i++) for (int j = 0; j < s; j++) data[i, j] = probs[((long)head * s + i) * s + j];
        var plot = new Plot();
        var map = plot.Add.Heatmap(data);
        map.Colormap = new ScottPlot.Colormaps.Viridis();
        plot.Add.ColorBar(map).Label = "attention probability";
        var ticks = Enumerable.Range(0, s).Select(i => (double)i).ToArray();
        plot.Axes.Bottom.SetTicks(ticks, tokens);
        plot.Axes.Bottom.TickLabelStyle.Rotation = 90;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
        plot.Axes.Left.SetTicks(ticks.Select(t => s - 1 - t).ToArray(), tokens); // row 0 is drawn at the top
        int longest = tokens.Max(t => t.Length);
        plot.Axes.Bottom.MinimumSize = 30 + 8 * longest; // room for the rotated word pieces and the axis label
        plot.Axes.Left.MinimumSize = 30 + 8 * longest;
        plot.Title(title);
        plot.XLabel("key");
        plot.YLabel("query");
        int size = Math.Clamp(40 + 22 * s, 420, 1600);
        Save(plot, path, size + 160, size + 80);
    }

    /// <summary>Every head of every layer tiled into one picture: rows of layers, columns of heads.</summary>
    public static void AttentionGrid(string path, float[][] maps, int heads, int s, string title)
    {
        int layers = maps.Length, cell = s + 1;
        var data = new double[layers * cell - 1, heads * cell - 1];
        for (int r = 0; r < data.GetLength(0); r++) for (int c = 0; c < data.GetLength(1); c++) data[r, c] = double.NaN;
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < s; i++)
                    for (int j = 0; j < s; j++)
                        data[l * cell + i, h * cell + j] = maps[l][((long)h * s + i) * s + j];
        var plot = new Plot();
        var map = plot.Add.Heatmap(data);
        map.Colormap = new ScottPlot.Colormaps.Viridis();
        plot.Add.ColorBar(map).Label = "attention probability";
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, heads).Select(h => h * cell + s / 2.0).ToArray(), Enumerable.Range(0, heads).Select(h => $"head {h}").ToArray());
        plot.Axes.Left.SetTicks(Enumerable.Range(0, layers).Select(l => data.GetLength(0) - 1 - (l * cell + s / 2.0)).ToArray(),
            Enumerable.Range(0, layers).Select(l => $"layer {l}").ToArray());
        plot.Title(title);
        plot.XLabel("head (columns: keys)");
        plot.YLabel("layer (rows: queries)");
        Save(plot, path, Math.Clamp(200 + heads * 120, 600, 2000), Math.Clamp(150 + layers * 120, 400, 2400));
    }

    /// <summary>A layer × head heatmap of one statistic, values written in the cells.</summary>
    public static void LayerHeadMap(string path, double[,] values, string statistic)
    {
        int layers = values.GetLength(0), heads = values.GetLength(1);
        var plot = new Plot();
        var map = plot.Add.Heatmap(values);
        map.Colormap = new ScottPlot.Colormaps.Viridis();
        plot.Add.ColorBar(map).Label = statistic;
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < heads; h++)
            {
                var text = plot.Add.Text(values[l, h].ToString("F2"), h, layers - 1 - l);
                text.LabelFontColor = Colors.White;
                text.LabelAlignment = Alignment.MiddleCenter;
            }
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, heads).Select(h => (double)h).ToArray(), Enumerable.Range(0, heads).Select(h => h.ToString()).ToArray());
        plot.Axes.Left.SetTicks(Enumerable.Range(0, layers).Select(l => (double)(layers - 1 - l)).ToArray(), Enumerable.Range(0, layers).Select(l => l.ToString()).ToArray());
        plot.Title($"{statistic} per head");
        plot.XLabel("head");
        plot.YLabel("layer");
        Save(plot, path, Math.Clamp(160 + heads * 70, 500, 1600), Math.Clamp(120 + layers * 50, 350, 1400));
    }

    /// <summary>
    /// One line per series over layers 0 (embeddings) … L, each with its own marker and dash
    /// pattern so that equal series stay visible; <paramref name="yRange"/> fixes the y axis
    /// (accuracies and cosines live in [0, 1]).
    /// </summary>
    public static void PerLayer(string path, string title, string yLabel, (double Min, double Max) yRange, params (string Name, double[] Values)[] series)
    {
        var plot = new Plot();
        MarkerShape[] markers = [MarkerShape.FilledCircle, MarkerShape.OpenSquare, MarkerShape.FilledTriangleUp, MarkerShape.OpenDiamond];
        LinePattern[] patterns = [LinePattern.Solid, LinePattern.Dashed, LinePattern.Dotted, LinePattern.DenselyDashed];
        for (int k = 0; k < series.Length; k++)
        {
            var (name, values) = series[k];
            var line = plot.Add.Scatter(Enumerable.Range(0, values.Length).Select(i => (double)i).ToArray(), values);
            line.LegendText = name;
            line.MarkerShape = markers[k % markers.Length];
            line.MarkerSize = 9 - 2 * (k % 3);
            line.LinePattern = patterns[k % patterns.Length];
        }
        double pad = 0.03 * (yRange.Max - yRange.Min);
        plot.Axes.SetLimitsY(yRange.Min - pad, yRange.Max + pad);
        int layers = series.Max(s => s.Values.Length);
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, layers).Select(i => (double)i).ToArray(),
            Enumerable.Range(0, layers).Select(i => i == 0 ? "emb" : i.ToString()).ToArray());
        plot.Title(title);
        plot.XLabel("layer (emb = embeddings output)");
        plot.YLabel(yLabel);
        plot.ShowLegend();
        Save(plot, path, 800, 480);
    }

    /// <summary>Grouped bars: one group per category, one bar per series in it; <paramref name="yRange"/> fixes the y axis.</summary>
    public static void Bars(string path, string title, string yLabel, (double Min, double Max) yRange, string[] categories, params (string Name, double[] Values)[] series)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        double width = 0.8 / series.Length;
        for (int k = 0; k < series.Length; k++)
        {
            var bars = series[k].Values.Select((v, i) => new Bar
            {
                Position = i + (k - (series.Length - 1) / 2.0) * width, Value = double.IsNaN(v) ? 0 : v, Size = width * 0.9, FillColor = palette.GetColor(k),
            }).ToArray();
            plot.Add.Bars(bars).LegendText = series[k].Name;
        }
        plot.Axes.SetLimitsY(yRange.Min, yRange.Max * 1.05);
        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, categories.Length).Select(i => (double)i).ToArray(), categories);
        plot.Axes.Bottom.TickLabelStyle.Rotation = categories.Length > 4 ? 30 : 0;
        plot.Title(title);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        Save(plot, path, Math.Max(640, 90 * categories.Length), 480);
    }
}
