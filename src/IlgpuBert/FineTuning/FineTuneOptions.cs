using IlgpuBert.Model;

namespace IlgpuBert.FineTuning;

/// <summary>
/// Every setting of a fine-tuning run, with the defaults `ilgpu-bert finetune` uses. Each
/// improvement BERTology's section 5.3 lists has a neutral setting (the default) that is plain
/// fine-tuning: FreeLbSteps 0, SmartWeight 0, Mixout 0, FreezeLayers 0, FreezeEmbeddings false,
/// LayerLrDecay 1. Pooling defaults to the mean of the last layer over real tokens, not HF's
/// [CLS] pooler: on the default task a tiny model fine-tunes to 62–73% that way and to 26–41%
/// through the pooler (perf/RESULTS.md, "Fine-tuning: what the head reads").
/// </summary>
public sealed record FineTuneOptions
{
    /// <summary>The pretrained model folder (config.json, model.safetensors, vocab.txt).</summary>
    public string? Model { get; init; }
    /// <summary>Two-stage fine-tuning: a model fine-tuned on an intermediate task; its encoder is kept, the head is new.</summary>
    public string? InitFrom { get; init; }
    /// <summary>The task: classification, pair classification, regression, token classification or question answering.</summary>
    public TaskKind Task { get; init; } = TaskKind.Classification;
    /// <summary>Training and evaluation files; with no Train, the embedded default task.</summary>
    public string? Train { get; init; }
    /// <summary>The held-out file scored after each epoch (eval.json); none: no evaluation.</summary>
    public string? Eval { get; init; }
    /// <summary>Which columns of the training file hold the text, pair and label.</summary>
    public ColumnSpec Columns { get; init; } = new();
    /// <summary>Passes over the training data.</summary>
    public int Epochs { get; init; } = 3;
    /// <summary>Peak learning rate; null picks <see cref="DefaultLearningRate"/> for the model's width.</summary>
    public float? LearningRate { get; init; }
    /// <summary>Examples per optimizer step (over all ranks).</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Tokens per example, [CLS] and [SEP] included.</summary>
    public int MaxLength { get; init; } = 128;
    /// <summary>The seed of the head's initialisation, the shuffling and dropout.</summary>
    public int Seed { get; init; } = 42;
    /// <summary>The share of steps over which the learning rate rises linearly from 0.</summary>
    public double WarmupRatio { get; init; } = 0.1;
    /// <summary>AdamW's decoupled weight decay (not on biases and LayerNorm).</summary>
    public double WeightDecay { get; init; } = 0.01;
    /// <summary>What the head reads; null: mean for sequence-level tasks, each token's last layer (cls) for per-token ones.</summary>
    public Pooling? Pooling { get; init; }

    /// <summary><see cref="Pooling"/> with its default resolved for <see cref="Task"/>.</summary>
    public Pooling HeadPooling => Pooling ?? (TaskSpec.SequenceLevel(Task) ? IlgpuBert.Model.Pooling.Mean : IlgpuBert.Model.Pooling.Cls);

    // FreeLB (Zhu et al. 2020): K ascent steps on the embedding output inside an L2 ball of radius ε.
    /// <summary>FreeLB (Zhu et al. 2020): adversarial ascent steps per batch on the embeddings; 0: off.</summary>
    public int FreeLbSteps { get; init; }
    /// <summary>FreeLB: the bound on the perturbation's norm.</summary>
    public float FreeLbEps { get; init; } = 0.3f;
    /// <summary>FreeLB: the ascent step size.</summary>
    public float FreeLbLr { get; init; } = 0.1f;

    // SMART (Jiang et al. 2020): λ·symmetric KL between clean and adversarially perturbed predictions.
    /// <summary>SMART (Jiang et al. 2020): the weight of the smoothness regulariser; 0: off.</summary>
    public float SmartWeight { get; init; }
    /// <summary>SMART: the bound on the perturbation.</summary>
    public float SmartEps { get; init; } = 1e-3f;
    /// <summary>SMART: the ascent step size.</summary>
    public float SmartStep { get; init; } = 1e-3f;
    /// <summary>SMART: the initial noise's standard deviation.</summary>
    public float SmartNoise { get; init; } = 1e-5f;

    /// <summary>Mixout (Lee et al. 2020) probability for the encoder's Linear weights.</summary>
    public float Mixout { get; init; }

    /// <summary>Quantization-aware training (Q8BERT): "int8" fake-quantizes every Linear layer's weights and inputs; null: off.</summary>
    public string? Qat { get; init; }

    /// <summary>Freeze the embeddings / the lowest N encoder layers.</summary>
    public bool FreezeEmbeddings { get; init; }
    /// <summary>Encoder layers, from the bottom, kept frozen.</summary>
    public int FreezeLayers { get; init; }

    /// <summary>Layer-wise learning-rate decay ξ (Sun et al. 2019): the head gets lr, each layer below ξ times the one above.</summary>
    public float LayerLrDecay { get; init; } = 1f;

    /// <summary>
    /// The default peak learning rate for a model of hidden size H: 5e-5·(768/H)^1.5, which is
    /// BERT's 5e-5 at base width and about 3e-5 at large, and grows for the narrow models of Turc
    /// et al. (7e-4 for tiny), which barely move at base-model rates in a few epochs.
    /// </summary>
    public static float DefaultLearningRate(int hiddenSize) => (float)Math.Round(5e-5 * Math.Pow(768.0 / hiddenSize, 1.5), 6);

    /// <summary>Throws an ArgumentException naming the first option that is out of range.</summary>
    public void Validate()
    {
        void Positive(string flag, double v) { if (!(v > 0 && double.IsFinite(v))) throw new ArgumentException($"{flag} must be a positive number, got {v}"); }
        if (Model is null && InitFrom is null) throw new ArgumentException("give --model (a pretrained model) or --init-from (a fine-tuned one)");
        if (Model is not null && InitFrom is not null) throw new ArgumentException("--model and --init-from both name the starting encoder; give one");
        if (Train is null && Task != TaskKind.Classification)
            throw new ArgumentException($"the embedded default task is classification; a {TaskSpec.Name(Task)} run needs --train");
        if (Eval is not null && Train is null) throw new ArgumentException("--eval without --train: the default task has its own held-out set");
        Positive("--epochs", Epochs);
        if (LearningRate is { } lr) Positive("--lr", lr);
        Positive("--batch-size", BatchSize);
        if (MaxLength < 8 || MaxLength > 512) throw new ArgumentException($"--max-length must be in [8, 512], got {MaxLength}");
        if (!(WarmupRatio >= 0 && WarmupRatio < 1)) throw new ArgumentException("--warmup-ratio must be in [0, 1)");
        if (!(WeightDecay >= 0)) throw new ArgumentException("--weight-decay must not be negative");
        if (FreeLbSteps < 0) throw new ArgumentException("--freelb-steps must not be negative");
        if (FreeLbSteps > 0) { Positive("--freelb-lr", FreeLbLr); if (!(FreeLbEps >= 0)) throw new ArgumentException("--freelb-eps must not be negative (0: no bound)"); }
        if (!(SmartWeight >= 0)) throw new ArgumentException("--smart-weight must not be negative");
        if (SmartWeight > 0) { Positive("--smart-eps", SmartEps); Positive("--smart-step", SmartStep); Positive("--smart-noise", SmartNoise); }
        if (FreeLbSteps > 0 && SmartWeight > 0) throw new ArgumentException("--freelb-steps and --smart-weight are two adversarial methods; use one at a time");
        if (!(Mixout >= 0 && Mixout < 1)) throw new ArgumentException($"--mixout must be in [0, 1), got {Mixout}");
        if (Qat is not (null or "int8")) throw new ArgumentException($"--qat takes int8 (the only precision the int8 path has), got {Qat}");
        if (FreezeLayers < 0) throw new ArgumentException("--freeze-layers must not be negative");
        if (!(LayerLrDecay > 0 && LayerLrDecay <= 1)) throw new ArgumentException($"--layer-lr-decay must be in (0, 1], got {LayerLrDecay}");
    }
}
