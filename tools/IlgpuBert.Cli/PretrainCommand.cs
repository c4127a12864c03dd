// `ilgpu-bert pretrain`: MLM and sentence-objective pretraining with the BERTology variants as
// flags. Ctrl-C finishes the current step, saves a checkpoint and exits cleanly.
using System.CommandLine;
using IlgpuBert.Pretraining;

namespace IlgpuBert.Cli;

public static class PretrainCommand
{
    private static Option<T> Opt<T>(string name, string description, T fallback) => Cli.Opt(name, description, fallback);

    public static Command Create(TextWriter stdout)
    {
        var d = new PretrainingOptions();
        var model = new Option<string?>("--model") { Description = "start from this model folder (default: a new model of --size)" };
        var size = Opt("--size", "tiny, mini, small, medium, base or large", d.Size);
        var corpus = new Option<string[]>("--corpus") { Description = "text files, documents separated by blank lines (default: the .NET SDK reference docs)", AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out") { Description = "output folder", Required = true };
        var steps = Opt("--steps", "optimizer steps", d.Steps);
        var batch = new Option<int?>("--batch-size") { Description = "examples per micro-batch (pairs with the contrastive objective; default 64 with it, 16 otherwise)" };
        var seqLen = new Option<int?>("--seq-len") { Description = "tokens per example, special tokens included (per row with the contrastive objective; default 32 with it, 128 otherwise)" };
        var seed = Opt("--seed", "seed of initialisation, data order, masking and dropout", d.Seed);
        var lr = new Option<float?>("--lr") { Description = "peak learning rate (default 2e-3; 5e-4 with --objective permutation)" };
        var warmup = new Option<int?>("--warmup") { Description = "linear warmup steps (default: 5% of --steps)" };
        var accum = new Option<int?>("--grad-accum") { Description = "micro-batches per optimizer step, over all ranks (default: 1, or one per rank with --distributed)" };
        var evalEvery = Opt("--eval-every", "held-out evaluation every N steps (0: never)", d.EvalEvery);
        var saveEvery = Opt("--save-every", "write checkpoint-N every N steps (0: never)", d.SaveEvery);
        var resume = new Option<string?>("--resume") { Description = "continue the run saved in this checkpoint folder" };
        var vocabSize = Opt("--vocab-size", "vocabulary built for a new model", d.VocabSize);
        var maskRate = Opt("--mask-rate", "share of tokens to predict", d.MaskRate);
        var maskMix = Opt("--mask-mix", "replace with mask, random, keep", d.MaskMix);
        var maskToken = Opt("--mask-token", "mask or unk", "mask");
        var masking = Opt("--masking", "token, whole-word, span or phrase", "token");
        var schedule = Opt("--mask-schedule", "static (N fixed masks per example) or dynamic (fresh each epoch)", "dynamic");
        var phrases = new Option<string?>("--phrases") { Description = "phrase masking: a file of multi-word units, one per line" };
        var tokenObjective = Opt("--objective", "mlm (BERT's masked LM), electra (replaced-token detection with a small MLM generator; the discriminator is saved as a BERT folder), unilm (masked LM under bidirectional, left-to-right and seq2seq attention masks, a third of the rows each), denoise (BART: the text corrupted by --noise as the source, the original as the left-to-right target, in one seq2seq sequence), permutation (XLNet: a sampled factorisation order, its last 1/6 predicted by query-stream rows, both streams in one pass), pmlm (UniLMv2: masked spans predicted as MLM from [M] and span by span from appended [P] pseudo-masks, in one pass) or none (the contrastive sentence objective alone, on unmasked text)", "mlm");
        var objective = new Option<string?>("--sentence-objective") { Description = "nsp, sop, prev-next, distance (ERNIE 2.0: adjacent / same document / other document), reorder (ERNIE 2.0: which order of up to 3 shuffled segments), contrastive (two segments of a document find each other among the batch's by mean-pooled encoding; the default with --objective mlm and none) or none (the default with electra and unilm)" };
        var generatorWidth = Opt("--generator-width", "ELECTRA: the generator's hidden size as a share of the discriminator's", d.GeneratorWidth);
        var rtdWeight = Opt("--rtd-weight", "ELECTRA: λ, the weight of replaced-token detection beside the generator's MLM loss", d.RtdWeight);
        var temperature = Opt("--contrastive-temperature", "τ of the contrastive objective", d.ContrastiveTemperature);
        var noise = new Option<string[]>("--noise") { Description = "--objective denoise: BART's noising functions, comma-separated or repeated: token-masking, token-deletion, text-infilling (Poisson-3 spans, 30 % of the tokens, one [MASK] each), sentence-permutation, document-rotation (default: text-infilling,sentence-permutation, the paper's final choice)", AllowMultipleArgumentsPerToken = true };
        var aux = new Option<string[]>("--aux") { Description = "ERNIE 2.0 token objectives beside MLM: capitalization, token-document (comma-separated or repeated)", AllowMultipleArgumentsPerToken = true };
        var format = Opt("--input-format", "pairs or full-sentences", "pairs");
        var maxDocs = Opt("--max-documents", "use only the first N corpus documents (0: all)", d.MaxDocuments);
        var distributed = Cli.DistributedOption();
        var albert = new Option<bool>("--albert") { Description = "a new model is an ALBERT (Lan et al. 2019): embedding_size min(128, H/2) projected to H, all layers sharing one group's parameters (HF's AlbertConfig and tensor names)" };
        var outputBias = Opt("--output-bias", "a new model's MLM output bias: unigram (log word-piece frequencies of the corpus) or zero", "unigram");

        var command = new Command("pretrain", "Pretrain BERT (MLM + a sentence objective) from raw text.")
        {
            model, size, corpus, output, steps, batch, seqLen, seed, lr, warmup, accum, evalEvery, saveEvery, resume, vocabSize,
            maskRate, maskMix, maskToken, masking, schedule, phrases, tokenObjective, noise, objective, aux, temperature, generatorWidth, rtdWeight,
            format, maxDocs, outputBias, albert, distributed,
        };
        Cli.ProtectModelOutput(command, output, result => result.GetValue(resume) is not null); // --resume continues the run in its folder
        command.SetAction(parse =>
        {
            T Enum<T>(Option<string> o, params (string Name, T Value)[] values) => Choose(o.Name, parse.GetValue(o)!, values);
            T Choose<T>(string flag, string v, params (string Name, T Value)[] values)
            {
                foreach (var (name, value) in values) if (name == v) return value;
                throw new ArgumentException($"{flag} must be one of {string.Join(", ", values.Select(x => x.Name))}, got \"{v}\"");
            }
            var (group, log) = Cli.OpenGroup(parse, distributed, stdout);
            var options = new PretrainingOptions
            {
                Model = parse.GetValue(model), Size = parse.GetValue(size)!, Corpus = parse.GetValue(corpus) ?? [],
                Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batch), SeqLen = parse.GetValue(seqLen), Seed = parse.GetValue(seed),
                Warmup = parse.GetValue(warmup), GradAccum = parse.GetValue(accum) ?? group.Size,
                EvalEvery = parse.GetValue(evalEvery), SaveEvery = parse.GetValue(saveEvery), VocabSize = parse.GetValue(vocabSize),
                MaskRate = parse.GetValue(maskRate), MaskMix = parse.GetValue(maskMix)!,
                MaskWithUnk = Enum(maskToken, ("mask", false), ("unk", true)),
                Masking = Enum(masking, ("token", MaskingStrategy.Token), ("whole-word", MaskingStrategy.WholeWord), ("span", MaskingStrategy.Span), ("phrase", MaskingStrategy.Phrase)),
                MaskSchedule = Enum(schedule, ("static", MaskSchedule.Static), ("dynamic", MaskSchedule.Dynamic)),
                Phrases = parse.GetValue(phrases),
                Objective = Enum(tokenObjective, ("mlm", PretrainingObjective.Mlm), ("electra", PretrainingObjective.Electra), ("unilm", PretrainingObjective.Unilm), ("denoise", PretrainingObjective.Denoise), ("permutation", PretrainingObjective.Permutation), ("pmlm", PretrainingObjective.Pmlm), ("none", PretrainingObjective.None)),
                GeneratorWidth = parse.GetValue(generatorWidth), RtdWeight = parse.GetValue(rtdWeight),
                ContrastiveTemperature = parse.GetValue(temperature),
                Noise = Denoiser.Parse(parse.GetValue(noise) ?? []),
                Aux = [.. (parse.GetValue(aux) ?? []).SelectMany(a => a.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))],
                InputFormat = Enum(format, ("pairs", InputFormat.Pairs), ("full-sentences", InputFormat.FullSentences)),
                MaxDocuments = parse.GetValue(maxDocs),
                UnigramOutputBias = Enum(outputBias, ("unigram", true), ("zero", false)),
                Albert = parse.GetValue(albert),
            };
            if (parse.GetValue(lr) is { } peak) options = options with { LearningRate = peak }; // unset: the --objective's default
            if (parse.GetValue(objective) is { } sentence) // unset: the --objective's default
                options = options with
                {
                    SentenceObjective = Choose("--sentence-objective", sentence, ("nsp", SentenceObjective.Nsp), ("sop", SentenceObjective.Sop),
                        ("prev-next", SentenceObjective.PrevNext), ("distance", SentenceObjective.Distance), ("reorder", SentenceObjective.Reorder),
                        ("contrastive", SentenceObjective.Contrastive), ("none", SentenceObjective.None)),
                };
            if (parse.GetValue(resume) is null) options.Validate();
            using var device = Cli.OpenDevice(parse);
            var trainer = new Trainer(device, log, group);
            Cli.Interruptible(() => trainer.Run(options, parse.GetValue(output)!, parse.GetValue(resume)), () => trainer.StopRequested = true);
            return 0;
        });
        return command;
    }
}
