// `ilgpu-bert analyze attention|heads|probe|similarity|cloze|numeracy|structural-probe|perturbation`: the BERTology questions of "where does
// BERT look" and "what does each layer know", answered as CSV/safetensors and pictures.
using System.CommandLine;
using System.Globalization;
using System.Text;
using IlgpuBert.Analysis;
using IlgpuBert.Checkpoints;
using IlgpuBert.Compression;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Pretraining;
using IlgpuBert.Text;

namespace IlgpuBert.Cli;

public static class AnalyzeCommand
{
    private static Option<string> Req(string name, string description) => Cli.Required(name, description);

    public static Command Create(TextWriter stdout)
    {
        var analyze = new Command("analyze", "Attention maps, head statistics, layer-wise and structural probes, similarity, cloze knowledge, numeracy and sensitivity to perturbed input of a model.");
        analyze.Subcommands.Add(Attention(stdout));
        analyze.Subcommands.Add(Heads(stdout));
        analyze.Subcommands.Add(Probe(stdout));
        analyze.Subcommands.Add(Similarity(stdout));
        analyze.Subcommands.Add(ClozeVerb(stdout));
        analyze.Subcommands.Add(NumeracyVerb(stdout));
        analyze.Subcommands.Add(StructuralProbeVerb(stdout));
        analyze.Subcommands.Add(PerturbationVerb(stdout));
        return analyze;
    }

    private static string F(double v) => v.ToString("G6", CultureInfo.InvariantCulture);

    private static Command Attention(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var text = Req("--text", "the text to look at");
        var pair = new Option<string?>("--pair") { Description = "a second segment" };
        var output = Req("--out", "folder for the pictures and probabilities");
        var command = new Command("attention", "Attention maps of every layer and head for one text, as PNG heatmaps and safetensors.") { model, text, pair, output };
        command.SetAction(parse =>
        {
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, parse.GetValue(model)!);
            using var _ = analyzer.Model;
            var (tokens, _, maps) = analyzer.Attention(parse.GetValue(text)!, parse.GetValue(pair));
            string dir = parse.GetValue(output)!;
            Directory.CreateDirectory(dir);
            int s = tokens.Length, nh = analyzer.Heads;
            SafeTensors.Write(Path.Combine(dir, "attentions.safetensors"),
                maps.Select((m, l) => (l, m)).ToDictionary(x => $"attentions.{x.l}", x => new HostTensor([nh, s, s], x.m)));
            AtomicFile.WriteText(Path.Combine(dir, "tokens.txt"), string.Join("\n", tokens) + "\n");
            for (int l = 0; l < maps.Length; l++)
                for (int h = 0; h < nh; h++)
                    AnalysisPlots.AttentionMap(Path.Combine(dir, $"layer{l}-head{h}.png"), tokens, maps[l], s, h, $"layer {l}, head {h}");
            AnalysisPlots.AttentionGrid(Path.Combine(dir, "all-heads.png"), maps, nh, s, $"all heads ({s} tokens)");
            stdout.WriteLine($"wrote {dir}: {maps.Length * nh} head maps, all-heads.png, attentions.safetensors, tokens.txt");
            return 0;
        });
        return command;
    }

    private static IEnumerable<string> Texts(string path, int max)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: no such corpus file");
        return PretrainingCorpus.SplitDocuments(File.ReadLines(path)).SelectMany(d => d).Where(t => t.Length > 0).Take(max);
    }

    private static Command Heads(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var corpus = Req("--corpus", "text file (sentences are split, documents separated by blank lines)");
        var max = new Option<int>("--max-texts") { Description = "sentences to average over", DefaultValueFactory = _ => 200 };
        var output = Req("--out", "output folder");
        var command = new Command("heads", "Per-head attention statistics over a corpus (Clark et al. 2019; Kovaleva et al. 2019).") { model, corpus, max, output };
        command.SetAction(parse =>
        {
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, parse.GetValue(model)!);
            using var _ = analyzer.Model;
            var (stats, patterns) = analyzer.HeadsOver(Texts(parse.GetValue(corpus)!, parse.GetValue(max)));
            string dir = parse.GetValue(output)!;
            Directory.CreateDirectory(dir);
            int layers = stats.GetLength(0), heads = stats.GetLength(1);
            var csv = new StringBuilder("layer,head," + string.Join(",", HeadStats.Names) + ",pattern\n");
            for (int l = 0; l < layers; l++)
                for (int h = 0; h < heads; h++)
                    csv.Append($"{l},{h},{string.Join(",", stats[l, h].Values.Select(F))},{patterns[l, h].ToString().ToLowerInvariant()}\n");
            AtomicFile.WriteText(Path.Combine(dir, "heads.csv"), csv.ToString());
            AtomicFile.WriteText(Path.Combine(dir, "patterns.txt"), "Head pattern rule: " + HeadStatistics.ClassificationRule + "\n");
            for (int k = 0; k < HeadStats.Names.Length; k++)
            {
                var values = new double[layers, heads];
                for (int l = 0; l < layers; l++) for (int h = 0; h < heads; h++) values[l, h] = stats[l, h].Values[k];
                AnalysisPlots.LayerHeadMap(Path.Combine(dir, $"{HeadStats.Names[k]}.png"), values, HeadStats.Names[k]);
            }
            stdout.WriteLine($"wrote {dir}: heads.csv, patterns.txt, {HeadStats.Names.Length} layer × head maps");
            stdout.WriteLine("pattern rule: " + HeadStatistics.ClassificationRule);
            return 0;
        });
        return command;
    }

    private static Command Probe(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var train = Req("--train", "training labels: CoNLL-style 'word tag' lines (token level) or 'text<TAB>label' lines (sentence level)");
        var eval = Req("--eval", "evaluation labels, same format");
        var level = new Option<string?>("--level") { Description = "token or sentence (default: sentence for .tsv files, token otherwise)" };
        var controlSeed = new Option<int>("--control-seed") { Description = "seed of the random model the probe is also run on", DefaultValueFactory = _ => 1 };
        var output = Req("--out", "output folder");
        var command = new Command("probe", "A linear probe per layer, beside the same probe on a random model of the same shape.") { model, train, eval, level, controlSeed, output };
        command.SetAction(parse =>
        {
            string trainPath = parse.GetValue(train)!, evalPath = parse.GetValue(eval)!;
            bool sentence = (parse.GetValue(level) ?? (trainPath.EndsWith(".tsv", StringComparison.OrdinalIgnoreCase) ? "sentence" : "token")) switch
            {
                "sentence" => true,
                "token" => false,
                var v => throw new ArgumentException($"--level must be token or sentence, got {v}"),
            };
            string dir = parse.GetValue(model)!;
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, dir);
            using var _ = analyzer.Model;
            var encoder = BertTextEncoder.Load(dir);
            var labels = new Dictionary<string, int>(StringComparer.Ordinal);
            var trainItems = ProbeData.Read(trainPath, sentence, encoder, labels, grow: true);
            var evalItems = ProbeData.Read(evalPath, sentence, encoder, labels, grow: false);
            var real = analyzer.Probe(trainItems, evalItems, labels.Count);
            using var random = new BertForPreTraining(device, analyzer.Model.Config);
            random.Parameters.Initialize(parse.GetValue(controlSeed));
            var control = new Analyzer(random, encoder, [.. encoder.Vocabulary]).Probe(trainItems, evalItems, labels.Count);
            string outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            var csv = new StringBuilder("layer,accuracy,random_model_accuracy\n");
            for (int l = 0; l < real.Length; l++) csv.Append($"{(l == 0 ? "embeddings" : l.ToString())},{F(real[l])},{F(control[l])}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "probe.csv"), csv.ToString());
            AnalysisPlots.PerLayer(Path.Combine(outDir, "probe.png"), $"linear probe accuracy ({labels.Count} classes)", "accuracy", (0, 1),
                ("model", real), ("random model (control)", control));
            stdout.Write(csv.ToString());
            return 0;
        });
        return command;
    }

    private static Command Similarity(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var corpus = Req("--corpus", "text file");
        var max = new Option<int>("--max-texts") { Description = "sentences to use", DefaultValueFactory = _ => 200 };
        var output = Req("--out", "output folder");
        var command = new Command("similarity", "Layer-wise anisotropy, intra-sentence and self-similarity of token representations (Ethayarajh 2019).") { model, corpus, max, output };
        command.SetAction(parse =>
        {
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, parse.GetValue(model)!);
            using var _ = analyzer.Model;
            var (aniso, intra, self) = analyzer.Similarity(Texts(parse.GetValue(corpus)!, parse.GetValue(max)).ToList());
            string dir = parse.GetValue(output)!;
            Directory.CreateDirectory(dir);
            var csv = new StringBuilder("layer,anisotropy,intra_sentence_similarity,self_similarity\n");
            for (int l = 0; l < aniso.Length; l++) csv.Append($"{(l == 0 ? "embeddings" : l.ToString())},{F(aniso[l])},{F(intra[l])},{F(self[l])}\n");
            AtomicFile.WriteText(Path.Combine(dir, "similarity.csv"), csv.ToString());
            AnalysisPlots.PerLayer(Path.Combine(dir, "similarity.png"), "contextuality of token representations", "mean cosine similarity",
                (Math.Min(0, new[] { aniso, intra, self }.SelectMany(v => v).Min()), 1), ("anisotropy", aniso), ("intra-sentence", intra), ("self-similarity", self));
            stdout.Write(csv.ToString());
            return 0;
        });
        return command;
    }

    private static Command ClozeVerb(TextWriter stdout)
    {
        var model = Req("--model", "model folder with a masked-language-model head (a pretraining folder)");
        var facts = Req("--facts", "facts as JSON lines: {\"template\": \"[X] is the capital of [Y].\", \"subject\": \"Paris\", \"object\": \"France\", \"relation\": \"capital\"}");
        var output = Req("--out", "output folder");
        var command = new Command("cloze", "What the MLM knows as cloze answers (LAMA, Petroni et al. 2019): P@1, P@10 and MRR per relation.") { model, facts, output };
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!;
            if (!BertFolder.Heads(dir).MlmHead)
                throw new ArgumentException($"{dir} has no masked-language-model head (cls.predictions.*): cloze asks that head for the object, so it needs a pretraining folder");
            var list = Cloze.Read(parse.GetValue(facts)!);
            using var device = Cli.OpenDevice(parse);
            using var bert = BertFolder.Load(device, dir);
            var (scores, answers) = Cloze.Run(bert, BertTextEncoder.Load(dir), list);
            string outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            var csv = new StringBuilder("relation,facts,scored,skipped,p_at_1,p_at_10,mrr\n");
            foreach (var r in scores) csv.Append($"{Csv(r.Relation)},{r.Facts},{r.Scored},{r.Skipped},{F(r.PrecisionAt1)},{F(r.PrecisionAt10)},{F(r.Mrr)}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "cloze.csv"), csv.ToString());
            var rows = new StringBuilder("relation,subject,object,top1,rank\n");
            foreach (var a in answers) rows.Append($"{Csv(a.Fact.Relation)},{Csv(a.Fact.Subject)},{Csv(a.Fact.Object)},{Csv(a.Top1)},{a.Rank}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "answers.csv"), rows.ToString());
            var plotted = scores.Where(r => r.Scored > 0).ToList();
            if (plotted.Count > 0)
                AnalysisPlots.Bars(Path.Combine(outDir, "cloze.png"), "cloze answers per relation", "fraction of facts", (0, 1), plotted.Select(r => r.Relation.Length > 24 ? r.Relation[..24] + "…" : r.Relation).ToArray(),
                    ("P@1", plotted.Select(r => r.PrecisionAt1).ToArray()), ("P@10", plotted.Select(r => r.PrecisionAt10).ToArray()), ("MRR", plotted.Select(r => r.Mrr).ToArray()));
            var overall = Cloze.Score("all", answers);
            var ranked = answers.Where(a => a.Rank > 0).ToList();
            int skipped = overall.Skipped;
            stdout.WriteLine($"wrote {outDir}: cloze.csv, answers.csv{(plotted.Count > 0 ? ", cloze.png" : "")}");
            stdout.WriteLine(overall.Scored == 0
                ? $"None of the {answers.Count} facts has a one-piece object, so none could be asked as one [MASK] (LAMA scores only those); nothing was scored."
                : $"Asked as cloze queries, the model ranks the object first for {ranked.Count(a => a.Rank == 1)} of {overall.Scored} facts (P@1 {F(overall.PrecisionAt1)}), "
                  + $"in its top 10 for {ranked.Count(a => a.Rank <= 10)} (P@10 {F(overall.PrecisionAt10)}), mean reciprocal rank {F(overall.Mrr)}, "
                  + $"over {scores.Count} relation{(scores.Count > 1 ? "s" : "")}"
                  + (skipped > 0 ? $"; {skipped} fact{(skipped > 1 ? "s" : "")} with a multi-piece object {(skipped > 1 ? "were" : "was")} skipped, as LAMA skips them" : "")
                  + ". Petroni et al. (2019) found BERT answering many such queries without any fine-tuning: the knowledge is in the MLM, though how much depends on the relation and the template's wording.");
            return 0;
        });
        return command;
    }

    private static Command NumeracyVerb(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var range = new Option<int>("--range") { Description = "train on 80% of the integers [0, range), test on the rest and on [range, 2·range)", DefaultValueFactory = _ => 1000 };
        var seed = new Option<int>("--seed") { Description = "which numbers are held out, and the random model's seed", DefaultValueFactory = _ => 0 };
        var output = Req("--out", "output folder");
        var command = new Command("numeracy", "Wallace et al. (2019)'s numeracy probes per layer: decoding a number's value, and the list maximum, beside a random model.") { model, range, seed, output };
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!;
            int n = parse.GetValue(range), s = parse.GetValue(seed);
            Numeracy.Numbers(n, s); // refuses a bad range before any model is loaded
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, dir);
            using var _ = analyzer.Model;
            var encoder = BertTextEncoder.Load(dir);
            var real = Numeracy.Run(analyzer, encoder, n, s);
            using var random = new BertForPreTraining(device, analyzer.Model.Config);
            random.Parameters.Initialize(s + 1);
            var control = Numeracy.Run(new Analyzer(random, encoder, [.. encoder.Vocabulary]), encoder, n, s);
            string outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            var csv = new StringBuilder("layer,interpolation_rmse,extrapolation_rmse,mean_predictor_rmse,mean_predictor_extrapolation_rmse,list_max_accuracy,"
                + "random_model_interpolation_rmse,random_model_extrapolation_rmse,random_model_list_max_accuracy\n");
            for (int l = 0; l < real.Count; l++)
            {
                var (r, c) = (real[l], control[l]);
                csv.Append($"{(l == 0 ? "embeddings" : l.ToString())},{F(r.InterpolationRmse)},{F(r.ExtrapolationRmse)},{F(r.MeanPredictorRmse)},{F(r.MeanPredictorExtrapolationRmse)},"
                    + $"{F(r.ListMaxAccuracy)},{F(c.InterpolationRmse)},{F(c.ExtrapolationRmse)},{F(c.ListMaxAccuracy)}\n");
            }
            AtomicFile.WriteText(Path.Combine(outDir, "numeracy.csv"), csv.ToString());
            double[] Ratio(List<NumeracyLayer> x) => x.Select(v => v.InterpolationRmse / v.MeanPredictorRmse).ToArray();
            AnalysisPlots.PerLayer(Path.Combine(outDir, "numeracy.png"), "numeracy probes (Wallace et al. 2019)", "RMSE / mean predictor's, or accuracy",
                (0, Math.Max(1, Ratio(real).Concat(Ratio(control)).Max())), ("decoding RMSE ratio", Ratio(real)), ("list maximum accuracy", real.Select(v => v.ListMaxAccuracy).ToArray()),
                ("random model: decoding", Ratio(control)), ("random model: list maximum", control.Select(v => v.ListMaxAccuracy).ToArray()));
            stdout.Write(csv.ToString());
            var best = real.MinBy(v => v.InterpolationRmse)!;
            var bestMax = real.MaxBy(v => v.ListMaxAccuracy)!;
            stdout.WriteLine($"Decoding a number's value from its representation works best at layer {best.Layer}: RMSE {F(best.InterpolationRmse)} on held-out numbers of [0, {n}) "
                + $"against {F(best.MeanPredictorRmse)} for always guessing the mean, and {F(best.ExtrapolationRmse)} on [{n}, {2 * n}) against {F(best.MeanPredictorExtrapolationRmse)}; "
                + $"the random model's best is {F(control.Min(v => v.InterpolationRmse))}. The list maximum of five is picked right {F(bestMax.ListMaxAccuracy)} of the time at layer {bestMax.Layer} "
                + $"(chance 0.2; random model {F(control.Max(v => v.ListMaxAccuracy))}). Wallace et al. (2019) found BERT's embeddings to carry magnitude within the training range "
                + "but to extrapolate poorly beyond it, the Primer's \"BERT struggles with numbers\".");
            return 0;
        });
        return command;
    }

    private static Command StructuralProbeVerb(TextWriter stdout)
    {
        var model = Req("--model", "model folder");
        var train = Req("--train", "training trees, a CoNLL-U file");
        var eval = Req("--eval", "evaluation trees, a CoNLL-U file");
        var rank = new Option<int>("--rank") { Description = "rank k of the probes' linear map", DefaultValueFactory = _ => 64 };
        var epochs = new Option<int>("--epochs") { Description = "passes of Adam over the training trees", DefaultValueFactory = _ => 30 };
        var max = new Option<int>("--max-sentences") { Description = "use at most this many trees of each file", DefaultValueFactory = _ => 2000 };
        var seed = new Option<int>("--seed") { Description = "seed of the probes and of the random model", DefaultValueFactory = _ => 0 };
        var noPunctuation = new Option<bool>("--exclude-punctuation") { Description = "score without the words whose UPOS is PUNCT, as Hewitt and Manning do (the probes still train on every word)" };
        var output = Req("--out", "output folder");
        var command = new Command("structural-probe", "Hewitt & Manning (2019)'s distance and depth probes per layer: UUAS, Spearman and root accuracy, beside a random model and position-only and linear baselines.")
            { model, train, eval, rank, epochs, max, seed, noPunctuation, output };
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!;
            int limit = parse.GetValue(max), s = parse.GetValue(seed);
            if (limit < 1) throw new ArgumentException($"--max-sentences must be positive, got {limit}");
            var options = new StructuralProbeOptions(Rank: parse.GetValue(rank), Epochs: parse.GetValue(epochs), Seed: s) { ExcludePunctuation = parse.GetValue(noPunctuation) };
            if (options.Rank < 1 || options.Epochs < 1) throw new ArgumentException("--rank and --epochs must be positive");
            var trainTrees = Treebank.Read(parse.GetValue(train)!).Take(limit).ToList();
            var evalTrees = Treebank.Read(parse.GetValue(eval)!).Take(limit).ToList();
            using var device = Cli.OpenDevice(parse);
            var analyzer = Analyzer.Load(device, dir);
            using var owned = analyzer.Model;
            var encoder = BertTextEncoder.Load(dir);
            using var random = new BertForPreTraining(device, analyzer.Model.Config);
            random.Parameters.Initialize(s + 1);
            var twin = new Analyzer(random, encoder, [.. encoder.Vocabulary]);
            var trainX = StructuralProbe.WordFeatures(analyzer, encoder, trainTrees, out var keptTrain);
            var evalX = StructuralProbe.WordFeatures(analyzer, encoder, evalTrees, out var keptEval);
            var trainY = keptTrain.Select(i => trainTrees[i]).ToList();
            var evalY = keptEval.Select(i => evalTrees[i]).ToList();
            if (trainY.Count == 0 || evalY.Count == 0) throw new ArgumentException($"no sentence of the {(trainY.Count == 0 ? "training" : "evaluation")} file fits the model's {analyzer.Model.Config.MaxPositionEmbeddings} positions");
            var twinTrain = StructuralProbe.WordFeatures(twin, encoder, trainY, out _);
            var twinEval = StructuralProbe.WordFeatures(twin, encoder, evalY, out _);
            int layers = trainX.Length;
            var real = new StructuralScores[layers];
            var control = new StructuralScores[layers];
            stdout.WriteLine($"probing {layers} layers of the model and of its random twin on {trainY.Count} training and {evalY.Count} evaluation trees ({options.Epochs} epochs each)");
            int done = 0;
            Parallel.For(0, 2 * layers, j =>
            {
                int l = j / 2;
                if (j % 2 == 0) real[l] = StructuralProbe.TrainAndEvaluate(trainX[l], trainY, evalX[l], evalY, options);
                else control[l] = StructuralProbe.TrainAndEvaluate(twinTrain[l], trainY, twinEval[l], evalY, options);
                lock (stdout) stdout.WriteLine($"  {Interlocked.Increment(ref done)} of {2 * layers} layer probes done (model and random twin; the position probe follows)");
            });
            int longest = trainY.Concat(evalY).Max(t => t.Words.Length);
            var position = StructuralProbe.TrainAndEvaluate(StructuralProbe.PositionFeatures(trainY, longest), trainY, StructuralProbe.PositionFeatures(evalY, longest), evalY, options);
            var linear = StructuralProbe.Linear(evalY, options.ExcludePunctuation);
            string outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            string Cell(double v) => double.IsFinite(v) ? F(v) : "";
            var csv = new StringBuilder("layer," + string.Join(",", StructuralScores.Names) + "," + string.Join(",", StructuralScores.Names.Select(n => "random_model_" + n)) + "\n");
            for (int l = 0; l < layers; l++)
                csv.Append($"{(l == 0 ? "embeddings" : l.ToString())},{string.Join(",", real[l].Values.Select(Cell))},{string.Join(",", control[l].Values.Select(Cell))}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "structural-probe.csv"), csv.ToString());
            var baselines = new StringBuilder("baseline," + string.Join(",", StructuralScores.Names) + "\n");
            baselines.Append($"position,{string.Join(",", position.Values.Select(Cell))}\n");
            baselines.Append($"linear,{string.Join(",", linear.Values.Select(Cell))}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "baselines.csv"), baselines.ToString());
            double[] Series(StructuralScores[] x, Func<StructuralScores, double> pick) => x.Select(pick).ToArray();
            AnalysisPlots.PerLayer(Path.Combine(outDir, "structural-probe.png"), "structural probes (Hewitt & Manning 2019)", "UUAS or root accuracy", (0, 1),
                ("distance probe UUAS", Series(real, v => v.Uuas)), ("random model UUAS", Series(control, v => v.Uuas)),
                ("position-only UUAS", Enumerable.Repeat(position.Uuas, layers).ToArray()),
                ("depth probe root accuracy", Series(real, v => v.RootAccuracy)), ("random model root accuracy", Series(control, v => v.RootAccuracy)));
            stdout.Write(csv.ToString());
            stdout.Write(baselines.ToString());
            int skipped = trainTrees.Count - trainY.Count + evalTrees.Count - evalY.Count;
            var best = Enumerable.Range(0, layers).MaxBy(l => real[l].Uuas);
            var bestRoot = Enumerable.Range(0, layers).MaxBy(l => real[l].RootAccuracy);
            stdout.WriteLine($"On {evalY.Count} evaluation trees (probes trained on {trainY.Count}, rank {Math.Min(options.Rank, analyzer.Model.Config.HiddenSize)}; word = mean of its pieces; punctuation {(options.ExcludePunctuation ? "not scored" : "kept")}"
                + (skipped > 0 ? $"; {skipped} tree{(skipped > 1 ? "s" : "")} longer than the model's positions left out" : "")
                + $"), the distance probe's minimum spanning trees recover {F(real[best].Uuas)} of the gold edges at layer {best} (distance Spearman {Cell(real[best].DistanceSpearman)}), "
                + $"against {F(control.Max(v => v.Uuas))} at best on the random model, {F(position.Uuas)} for the probe on position alone and {F(linear.Uuas)} for the chain of adjacent words. "
                + $"The depth probe finds the root {F(real[bestRoot].RootAccuracy)} of the time at layer {bestRoot} (random model {F(control.Max(v => v.RootAccuracy))}, position {F(position.RootAccuracy)}). "
                + "Hewitt and Manning (2019) found whole parse trees embedded as squared distances in BERT's middle layers, well above such baselines: syntax is recoverable from token representations (the Primer §3.1).");
            return 0;
        });
        return command;
    }

    private static Command PerturbationVerb(TextWriter stdout)
    {
        var model = Req("--model", "a fine-tuned classifier folder, or a pretraining folder (its masked-language-model head is scored)");
        var eval = new Option<string?>("--eval") { Description = "classifier: a labelled file in the training format or a .txt file of unlabelled texts, one per line; MLM: a text file, one text per line; either: a .conllu treebank, its subjects and objects tagged. Default: the default task's held-out sentences" };
        var tags = new Option<string?>("--tags") { Description = "one line per evaluation example, one tag per word of its text (e.g. SUBJ, OBJ; _ or O for none): each tag's words are removed as a perturbation" };
        var seed = new Option<int>("--seed") { Description = "seed of the shuffles and of the masked words", DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch-size") { Description = "examples per forward pass", DefaultValueFactory = _ => 32 };
        var output = Req("--out", "output folder");
        var columns = FineTuneCommands.ColumnOptions.Create();
        var command = new Command("perturbation", "How predictions move under shuffled word order (n-grams of 1, 2, 3), truncation and removal of tagged words (Ettinger 2020).")
            { model, eval, tags, seed, batch, output };
        foreach (var o in columns.All) command.Options.Add(o);
        command.SetAction(parse =>
        {
            string dir = parse.GetValue(model)!;
            var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
            bool classifier = TaskSpec.FromConfig(config) is not null;
            if (!classifier && !BertFolder.Heads(dir).MlmHead)
                throw new ArgumentException($"{dir} is neither a fine-tuned classifier nor a folder with a masked-language-model head (cls.predictions.*): perturbation has nothing to score");
            string? evalPath = parse.GetValue(eval), tagPath = parse.GetValue(tags);
            int s = parse.GetValue(seed), batchSize = parse.GetValue(batch);
            if (batchSize < 1) throw new ArgumentException($"--batch-size must be positive, got {batchSize}");
            using var device = Cli.OpenDevice(parse);
            var encoder = BertTextEncoder.Load(dir);
            List<PerturbationRow> rows;
            int examples, skipped = 0;
            bool Ends(string ext) => evalPath?.EndsWith(ext, StringComparison.OrdinalIgnoreCase) == true;
            List<DependencyTree>? trees = Ends(".conllu") ? Treebank.Read(evalPath!) : null;
            if (trees is not null && tagPath is not null) throw new ArgumentException("a .conllu --eval tags its own subjects and objects; give --tags with a text file");
            List<string> PlainTexts() => File.Exists(evalPath) ? File.ReadAllLines(evalPath).Where(l => l.Trim().Length > 0).ToList() : throw new ArgumentException($"{evalPath}: no such file");
            List<string[]>? Tags(IReadOnlyList<string> texts) => trees is not null ? Perturbation.TagsFromTrees(trees) : tagPath is null ? null : Perturbation.ReadTags(tagPath, texts);
            if (classifier)
            {
                using var loaded = LoadedModel.Load(device, dir);
                var list = evalPath is null ? DefaultTask.Build().HeldOut
                    : trees is not null ? trees.Select(t => new TaskExample { Text = string.Join(' ', t.Words) }).ToList()
                    : Ends(".txt") ? PlainTexts().Select(t => new TaskExample { Text = t }).ToList()
                    : TaskData.Read(evalPath, loaded.Model.Task.Kind, columns.Read(parse));
                rows = Perturbation.Classifier(loaded.Model, encoder, list, Tags(list.Select(e => e.Text).ToList()), s, batchSize, loaded.Hooks);
                examples = list.Count;
            }
            else
            {
                var texts = evalPath is null ? DefaultTask.Build().HeldOut.Select(e => e.Text).ToList()
                    : trees is not null ? trees.Select(t => string.Join(' ', t.Words)).ToList() : PlainTexts();
                using var bert = BertFolder.Load(device, dir);
                rows = Perturbation.MaskedLanguageModel(bert, encoder, texts, Tags(texts), out skipped, s, batchSize);
                examples = texts.Count;
            }
            string outDir = parse.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            string accuracy = classifier ? "accuracy" : "top1_is_original_word";
            var csv = new StringBuilder($"perturbation,examples,inputs_changed,{accuracy},same_prediction_as_unperturbed\n");
            foreach (var r in rows) csv.Append($"{r.Perturbation},{r.Examples},{r.InputsChanged},{(double.IsFinite(r.Accuracy) ? F(r.Accuracy) : "")},{F(r.SamePrediction)}\n");
            AtomicFile.WriteText(Path.Combine(outDir, "perturbation.csv"), csv.ToString());
            AnalysisPlots.Bars(Path.Combine(outDir, "perturbation.png"), classifier ? "classifier under perturbed input" : "MLM top-1 under perturbed input", "fraction of examples", (0, 1),
                rows.Select(r => r.Perturbation).ToArray(), [
                    .. double.IsFinite(rows[0].Accuracy) ? [(classifier ? "accuracy" : "original word", rows.Select(r => r.Accuracy).ToArray())] : Array.Empty<(string, double[])>(),
                    ("same as unperturbed", rows.Select(r => r.SamePrediction).ToArray())]);
            stdout.Write(csv.ToString());
            var shuffle = rows.First(r => r.Perturbation == "shuffle-1");
            var truncate = rows.First(r => r.Perturbation == "truncate");
            stdout.WriteLine((classifier
                    ? $"Of {examples} examples, shuffling the words changes {F(shuffle.Changed)} of the classifier's predictions"
                      + (double.IsFinite(shuffle.Accuracy) ? $" (accuracy {F(rows[0].Accuracy)} → {F(shuffle.Accuracy)})" : "")
                      + $" and truncating to the first half {F(truncate.Changed)}" + (double.IsFinite(truncate.Accuracy) ? $" (→ {F(truncate.Accuracy)})" : "")
                    : $"Of {examples - skipped} texts with a one-piece word to mask{(skipped > 0 ? $" ({skipped} without one left out)" : "")}, the MLM's top-1 at the mask stays the same for {F(shuffle.SamePrediction)} of them when the other words are shuffled and for {F(truncate.SamePrediction)} when the sentence is cut to its first half (the original word is top-1 for {F(rows[0].Accuracy)} unperturbed)")
                + string.Concat(rows.Where(r => r.Perturbation.StartsWith("remove-", StringComparison.Ordinal)).Select(r => $"; removing the {r.Perturbation["remove-".Length..]} words (from {r.InputsChanged} of them) changes {F(r.Changed)}"))
                + ". Ettinger (2020) found BERT's predictions barely moved by shuffled word order, truncation or removed subjects and objects: it is insensitive to malformed input (the Primer §3.1).");
            return 0;
        });
        return command;
    }

    private static string Csv(string v) => v.Contains(',') || v.Contains('"') ? "\"" + v.Replace("\"", "\"\"") + "\"" : v;
}

/// <summary>Probe files → items: CoNLL-style tokens (label on each word's first piece) or sentence TSV.</summary>
public static class ProbeData
{
    public static List<ProbeItem> Read(string path, bool sentenceLevel, BertTextEncoder encoder, Dictionary<string, int> labels, bool grow)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: no such file");
        int Label(string tag, int line)
        {
            if (labels.TryGetValue(tag, out int id)) return id;
            if (!grow) throw new ArgumentException($"{path}:{line}: label \"{tag}\" does not occur in the training file");
            return labels[tag] = labels.Count;
        }
        var items = new List<ProbeItem>();
        var lines = File.ReadAllLines(path);
        if (sentenceLevel)
        {
            for (int i = 0; i < lines.Length; i++)
            {
                if (lines[i].Trim().Length == 0) continue;
                var parts = lines[i].Split('\t');
                if (parts.Length != 2) throw new ArgumentException($"{path}:{i + 1}: expected \"text<TAB>label\"");
                items.Add(new ProbeItem(encoder.Batch([parts[0]]), [-1], [Label(parts[1].Trim(), i + 1)]));
            }
        }
        else
        {
            var words = new List<(string Word, int Label)>();
            void Flush()
            {
                if (words.Count == 0) return;
                var ids = new List<int> { encoder.ClsId };
                var positions = new List<int>();
                foreach (var (word, _) in words)
                {
                    var pieces = encoder.Encode(word);
                    if (pieces.Length == 0) pieces = [encoder.UnknownId];
                    positions.Add(ids.Count);
                    ids.AddRange(pieces);
                }
                ids.Add(encoder.SepId);
                var input = BertInputs.FromRows([ids.ToArray()]);
                items.Add(new ProbeItem(input, positions.ToArray(), words.Select(w => w.Label).ToArray()));
                words.Clear();
            }
            for (int i = 0; i < lines.Length; i++)
            {
                var parts = lines[i].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
                if (parts.Length == 0) { Flush(); continue; }
                if (parts.Length < 2) throw new ArgumentException($"{path}:{i + 1}: expected \"word tag\"");
                words.Add((parts[0], Label(parts[^1], i + 1)));
            }
            Flush();
        }
        if (items.Count == 0) throw new ArgumentException($"{path}: no examples");
        return items;
    }
}
