// The pretraining study's plot: held-out accuracy on the default task after default fine-tuning
// (each seed a dot, the mean a bar) for every row of results.txt, random initialisations first.
//   dotnet run perf/pretraining-study/plot.cs   (writes perf/pretraining-study/study.png)
#:package ScottPlot
using System.Globalization;

string here = Path.GetDirectoryName(Path.GetFullPath(args.Length > 0 ? args[0] : "perf/pretraining-study/results.txt"))!;
var rows = File.ReadLines(Path.Combine(here, "results.txt")).Where(l => l.Contains(" acc: ")).Select(l =>
{
    string name = l[..l.IndexOf(' ')];
    string accs = l[(l.IndexOf(" acc: ") + 6)..l.IndexOf(" |")];
    return (Name: name, Acc: accs.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(a => 100 * double.Parse(a, CultureInfo.InvariantCulture)).ToArray());
}).OrderBy(r => r.Name.StartsWith("random") ? 0 : 1).ToList();

var plot = new ScottPlot.Plot();
for (int i = 0; i < rows.Count; i++)
{
    var bar = plot.Add.Bar(i, rows[i].Acc.Average());
    bar.Color = rows[i].Name.StartsWith("random") ? ScottPlot.Colors.Gray : ScottPlot.Colors.SteelBlue;
    var dots = plot.Add.ScatterPoints(rows[i].Acc.Select(_ => (double)i).ToArray(), rows[i].Acc);
    dots.Color = ScottPlot.Colors.Black;
}
// The dashed lines: random initialisation of the default size (tiny), and 10 points above it.
var random = rows.Where(r => r.Name.StartsWith("random-tiny")).SelectMany(r => r.Acc).DefaultIfEmpty(double.NaN).Average();
if (!double.IsNaN(random))
{
    plot.Add.HorizontalLine(random, 1, ScottPlot.Colors.Gray, ScottPlot.LinePattern.Dashed);
    plot.Add.HorizontalLine(random + 10, 1, ScottPlot.Colors.Green, ScottPlot.LinePattern.Dashed);
}
plot.Axes.Bottom.SetTicks(Enumerable.Range(0, rows.Count).Select(i => (double)i).ToArray(), rows.Select(r => r.Name).ToArray());
plot.Axes.Bottom.TickLabelStyle.Rotation = 60;
plot.Axes.Bottom.TickLabelStyle.Alignment = ScottPlot.Alignment.MiddleLeft;
plot.Axes.Bottom.MinimumSize = 260;
plot.Axes.Right.MinimumSize = 120; // the last names run past the last column
plot.Axes.SetLimitsY(20, 90);
plot.Title("Default task, held-out accuracy after default fine-tuning (tiny unless named)");
plot.YLabel("accuracy (%)");
plot.SavePng(Path.Combine(here, "study.png"), Math.Max(1100, 32 * rows.Count), 800); // a column per row, room for the names
Console.WriteLine($"wrote {Path.Combine(here, "study.png")} ({rows.Count} rows)");
