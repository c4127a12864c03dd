using System.Text.Json;
using System.Text.Json.Serialization;

namespace IlgpuBert.Pretraining;

/// <summary>
/// What the token-level loss is: BERT's masked LM; ELECTRA's replaced-token detection (with a small
/// MLM generator); UniLM's masked LM under a mix of attention masks (bidirectional, left-to-right
/// and seq2seq, a third of the rows each); BART's denoising (Denoising.cs: the corrupted text as the
/// source, the original as the left-to-right target of one seq2seq sequence); XLNet's permutation
/// LM (PermutationLm.cs: two streams in one pass); UniLMv2's pseudo-masked LM (PseudoMaskedLm.cs); or
/// none, the contrastive sentence objective alone on unmasked text (the control for what a token
/// objective adds; the MLM head stays untrained).
/// </summary>
public enum PretrainingObjective { Mlm, Electra, Unilm, Denoise, Permutation, Pmlm, None }

/// <summary>
/// Every setting of a pretraining run, with the defaults `ilgpu-bert pretrain` uses. A checkpoint
/// stores them, so `--resume` continues the original run exactly.
/// </summary>
public sealed record PretrainingOptions
{
    public string? Model { get; init; }
    public string Size { get; init; } = "tiny";
    public int VocabSize { get; init; } = 8192;
    public string[] Corpus { get; init; } = [];
    public int Steps { get; init; } = 1200;
    /// <summary>Examples (pairs, for the contrastive objective) per micro-batch; null: <see cref="MicroBatch"/>'s default.</summary>
    public int? BatchSize { get; init; }
    /// <summary>Tokens per example (per row, for the contrastive objective), special tokens included; null: <see cref="SequenceLength"/>'s default.</summary>
    public int? SeqLen { get; init; }
    public int Seed { get; init; } = 1;
    /// <summary>
    /// Peak learning rate: 2e-3 with a short warmup (Izsak et al. 2021), chosen by the study in
    /// perf/RESULTS.md; 5e-4 for XLNet's permutation LM, which at 2e-3 stays at the unigram loss
    /// (perf/RESULTS.md, "XLNet's permutation LM, UniLMv2's pseudo-masked LM and ALBERT").
    /// </summary>
    public float LearningRate
    {
        get => learningRate ?? (Objective == PretrainingObjective.Permutation ? 5e-4f : 2e-3f);
        init => learningRate = value;
    }

    private readonly float? learningRate;
    /// <summary>Warmup steps; null means 5% of the steps.</summary>
    public int? Warmup { get; init; }
    public int GradAccum { get; init; } = 1;
    public int EvalEvery { get; init; } = 100;
    public int SaveEvery { get; init; }
    public double MaskRate { get; init; } = 0.15;
    public string MaskMix { get; init; } = "0.8,0.1,0.1";
    public bool MaskWithUnk { get; init; }
    public MaskingStrategy Masking { get; init; } = MaskingStrategy.Token;
    public MaskSchedule MaskSchedule { get; init; } = MaskSchedule.Dynamic;
    public string? Phrases { get; init; }
    public PretrainingObjective Objective { get; init; } = PretrainingObjective.Mlm;

    /// <summary>A new model is an ALBERT (<see cref="IlgpuBert.Model.BertConfig.AsAlbert"/>): factorised embeddings, every layer sharing one group's parameters.</summary>
    public bool Albert { get; init; }

    /// <summary>BART's noising functions for <see cref="PretrainingObjective.Denoise"/>; empty: the paper's final choice, text infilling and sentence permutation.</summary>
    public NoiseFunction[] Noise { get; init; } = [];

    /// <summary>The noising functions a denoising run applies.</summary>
    [JsonIgnore] public NoiseFunction[] NoiseFunctions => Noise.Length > 0 ? Noise : [NoiseFunction.TextInfilling, NoiseFunction.SentencePermutation];

    private readonly SentenceObjective? sentenceObjective;

    /// <summary>
    /// Contrastive by default with MLM, the default recipe's (perf/RESULTS.md, "Pretraining that
    /// transfers"), and with no token objective, which trains nothing else; none by default with
    /// ELECTRA, UniLM and denoising.
    /// </summary>
    public SentenceObjective SentenceObjective
    {
        get => sentenceObjective ?? (Objective is PretrainingObjective.Mlm or PretrainingObjective.None ? SentenceObjective.Contrastive : SentenceObjective.None);
        init => sentenceObjective = value;
    }

    /// <summary>ELECTRA's generator width as a share of the discriminator's (the paper: ¼ to ½ best).</summary>
    public double GeneratorWidth { get; init; } = DefaultGeneratorWidth;

    public const double DefaultGeneratorWidth = 0.25;

    /// <summary>ELECTRA's λ: the weight of the replaced-token-detection loss beside the generator's MLM loss.</summary>
    public float RtdWeight { get; init; } = 50f;

    /// <summary>ERNIE 2.0's token-level objectives, the names --aux takes: every auxiliary head but ELECTRA's.</summary>
    public static readonly string[] TokenObjectives = [.. IlgpuBert.Model.BertConfig.AuxHeadNames.Where(h => h != ElectraGenerator.RtdHead)];
    /// <summary>τ of the contrastive sentence objective (SimCSE's 0.05).</summary>
    public float ContrastiveTemperature { get; init; } = 0.05f;
    /// <summary>ERNIE 2.0's token-level objectives trained beside MLM (<see cref="TokenObjectives"/>).</summary>
    public string[] Aux { get; init; } = [];
    public InputFormat InputFormat { get; init; } = InputFormat.Pairs;
    public double HeldOut { get; init; } = 0.02;
    /// <summary>Use only the first N documents of the corpus (0: all).</summary>
    public int MaxDocuments { get; init; }
    /// <summary>
    /// Start a new model's MLM output bias at the corpus's log word-piece frequencies instead of 0.
    /// At 0, the tied word embeddings themselves learn the frequencies first: they all drift
    /// towards one direction (mean pairwise cosine 0.55–0.72 after 300 steps) and the model then
    /// fine-tunes worse than a random one (perf/RESULTS.md, "Pretraining: representation degeneration").
    /// </summary>
    public bool UnigramOutputBias { get; init; } = true;

    public int WarmupSteps => Warmup ?? Math.Max(1, Steps / 20);

    /// <summary>--batch-size, or by default 64 pairs of 32-token rows for the contrastive objective and BERT's 16 examples of 128 tokens otherwise (2,048-4,096 tokens a step).</summary>
    [JsonIgnore] public int MicroBatch => BatchSize ?? (SentenceObjective == SentenceObjective.Contrastive ? 64 : 16);
    [JsonIgnore] public int SequenceLength => SeqLen ?? (SentenceObjective == SentenceObjective.Contrastive ? 32 : 128);

    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) } };

    /// <summary>An enum value as its command-line word: PrevNext → "prev-next".</summary>
    public static string Flag(Enum value) => JsonNamingPolicy.KebabCaseLower.ConvertName(value.ToString());

    public void Validate()
    {
        void Positive(string flag, double v) { if (!(v > 0 && double.IsFinite(v))) throw new ArgumentException($"{flag} must be a positive number, got {v}"); }
        Positive("--steps", Steps);
        Positive("--batch-size", MicroBatch);
        Positive("--seq-len", SequenceLength);
        Positive("--lr", LearningRate);
        Positive("--grad-accum", GradAccum);
        if (Model is null) _ = IlgpuBert.Model.BertConfig.ForSize(Size); // an unknown --size fails before any work
        if (SequenceLength < 8) throw new ArgumentException($"--seq-len {SequenceLength} is too short (at least 8)");
        if (!(MaskRate > 0 && MaskRate < 1)) throw new ArgumentException($"--mask-rate must be in (0, 1), got {MaskRate}");
        if (Warmup is < 0) throw new ArgumentException("--warmup must not be negative");
        if (EvalEvery < 0 || SaveEvery < 0) throw new ArgumentException("--eval-every and --save-every must not be negative");
        if (!(HeldOut >= 0 && HeldOut < 0.5)) throw new ArgumentException("--held-out must be in [0, 0.5)");
        if (InputFormat == InputFormat.FullSentences && SentenceObjective != SentenceObjective.None)
            throw new ArgumentException("--input-format full-sentences packs one segment per example: use --sentence-objective none");
        Positive("--contrastive-temperature", ContrastiveTemperature);
        if (SentenceObjective == SentenceObjective.Contrastive && MicroBatch < 2)
            throw new ArgumentException("--sentence-objective contrastive needs --batch-size 2 or more (each example is a pair; the other pairs are the negatives)");
        foreach (var head in Aux)
            if (!TokenObjectives.Contains(head))
                throw new ArgumentException($"--aux {head}: unknown; choose from {string.Join(", ", TokenObjectives)}");
        if (Objective == PretrainingObjective.Unilm && SentenceObjective != SentenceObjective.None)
            throw new ArgumentException($"--objective unilm takes no sentence objective: drop --sentence-objective {Flag(SentenceObjective)} (or give none)");
        if (Objective == PretrainingObjective.Electra && SentenceObjective is not (SentenceObjective.None or SentenceObjective.Contrastive))
            throw new ArgumentException($"--objective electra takes no sentence head: --sentence-objective none (the default) or contrastive, not {Flag(SentenceObjective)}");
        if (Objective == PretrainingObjective.Electra && Aux.Length > 0)
            throw new ArgumentException("--objective electra trains the discriminator on replaced-token detection alone: drop --aux");
        if (Noise.Length > 0 && Objective != PretrainingObjective.Denoise) throw new ArgumentException("--noise is used only by --objective denoise");
        if (Objective == PretrainingObjective.Denoise)
        {
            if (SentenceObjective != SentenceObjective.None)
                throw new ArgumentException($"--objective denoise takes no sentence objective: drop --sentence-objective {Flag(SentenceObjective)}");
            if (Aux.Length > 0) throw new ArgumentException("--objective denoise trains the denoising target alone: drop --aux");
            if (InputFormat == InputFormat.FullSentences) throw new ArgumentException("--objective denoise makes its own sequences: drop --input-format");
            var defaults = new PretrainingOptions();
            if (MaskRate != defaults.MaskRate || MaskMix != defaults.MaskMix || MaskWithUnk || Masking != defaults.Masking || MaskSchedule != defaults.MaskSchedule || Phrases is not null)
                throw new ArgumentException("--objective denoise corrupts with --noise, not masking: drop --mask-rate, --mask-mix, --mask-token, --masking, --mask-schedule and --phrases");
            _ = new Denoiser(default, [], NoiseFunctions); // a function named twice
        }
        if (Objective is PretrainingObjective.Permutation or PretrainingObjective.Pmlm)
        {
            string name = Flag(Objective);
            if (SentenceObjective != SentenceObjective.None)
                throw new ArgumentException($"--objective {name} takes no sentence objective: drop --sentence-objective {Flag(SentenceObjective)}");
            if (Aux.Length > 0) throw new ArgumentException($"--objective {name} trains its own target alone: drop --aux");
            if (InputFormat == InputFormat.FullSentences) throw new ArgumentException($"--objective {name} arranges its own rows: drop --input-format");
            var defaults = new PretrainingOptions();
            bool rate = Objective == PretrainingObjective.Permutation && (MaskRate != defaults.MaskRate || MaskMix != defaults.MaskMix);
            if (rate || MaskWithUnk || Masking != defaults.Masking || MaskSchedule != defaults.MaskSchedule || Phrases is not null)
                throw new ArgumentException(Objective == PretrainingObjective.Permutation
                    ? "--objective permutation predicts the last 1/6 of a sampled order, not masked tokens: drop --mask-rate, --mask-mix, --mask-token, --masking, --mask-schedule and --phrases"
                    : "--objective pmlm masks its own spans (--mask-rate, --mask-mix) with [M] and [P]: drop --mask-token, --masking, --mask-schedule and --phrases");
        }
        if (Objective == PretrainingObjective.None)
        {
            if (SentenceObjective != SentenceObjective.Contrastive)
                throw new ArgumentException($"--objective none trains the contrastive sentence objective alone: --sentence-objective contrastive (the default), not {Flag(SentenceObjective)}");
            var defaults = new PretrainingOptions();
            if (MaskRate != defaults.MaskRate || MaskMix != defaults.MaskMix || MaskWithUnk || Masking != defaults.Masking || MaskSchedule != defaults.MaskSchedule || Phrases is not null)
                throw new ArgumentException("--objective none masks nothing: drop --mask-rate, --mask-mix, --mask-token, --masking, --mask-schedule and --phrases");
            if (Aux.Length > 0) throw new ArgumentException("--objective none trains no token objective: drop --aux");
        }
        if (!(GeneratorWidth > 0 && GeneratorWidth <= 1)) throw new ArgumentException($"--generator-width must be in (0, 1], got {GeneratorWidth}");
        if (Albert && Objective == PretrainingObjective.Electra)
            throw new ArgumentException("--albert with --objective electra is not supported (the generator shares BERT-wide embeddings)");
        if (GeneratorWidth != DefaultGeneratorWidth && Objective != PretrainingObjective.Electra) throw new ArgumentException("--generator-width is used only by --objective electra");
        Positive("--rtd-weight", RtdWeight);
        if (Aux.Distinct().Count() != Aux.Length) throw new ArgumentException("--aux names a head twice");
        if (Phrases is not null && Masking != MaskingStrategy.Phrase)
            throw new ArgumentException("--phrases is used only by --masking phrase");
        if (Phrases is not null && !File.Exists(Phrases)) throw new ArgumentException($"{Phrases}: no such phrase file");
        _ = new MaskingOptions().WithMix(MaskMix);
    }
}
