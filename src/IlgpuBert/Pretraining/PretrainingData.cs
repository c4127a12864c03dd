// The data side of a pretraining run: corpus → tokenized documents (cached once per corpus and
// vocabulary as a binary shard) → a held-out split → examples → masked batches.
//
// Everything after tokenization is a pure function of the run's seed and the global example
// index, so the data cursor of a checkpoint is just its step: example k of the stream is example
// order_e[k mod N] of epoch e = k / N, masked with the stream for (example, epoch).
using System.Security.Cryptography;
using System.Text;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Text;

namespace IlgpuBert.Pretraining;

/// <summary>UniLM's three attention masks (Dong et al. 2019).</summary>
public enum UniLmMode { Bidirectional, LeftToRight, Seq2Seq }

public sealed class PretrainingData
{
    private readonly Masker masker;
    private readonly ulong seed;
    private readonly int sentenceClasses;
    private readonly string[] aux;
    private readonly bool pairedRows, unilm, unmasked;
    private readonly Denoiser? denoiser;
    private readonly PermutationLm? permutation;
    private readonly PseudoMaskedLm? pseudoMasked;
    private readonly int seqLen;

    public PretrainingData(PretrainingOptions o, BertTextEncoder encoder, string vocabPath, int vocabSize, TextWriter log)
    {
        seed = (ulong)o.Seed;
        aux = o.Aux;
        pairedRows = ExampleGenerator.PairedRows(o.SentenceObjective);
        unilm = o.Objective == PretrainingObjective.Unilm;
        unmasked = o.Objective == PretrainingObjective.None;
        seqLen = o.SequenceLength;
        Special = new SpecialIds(encoder.PadId, encoder.UnknownId, encoder.ClsId, encoder.SepId, encoder.MaskId);
        if (o.Objective == PretrainingObjective.Denoise)
        {
            // Sentence permutation splits after these pieces; a vocabulary without them ([UNK]) would permute nothing.
            var ends = new[] { ".", "!", "?" }.Select(encoder.Encode).Where(p => p.Length == 1 && p[0] != encoder.UnknownId).Select(p => p[0]).ToArray();
            if (ends.Length == 0 && o.NoiseFunctions.Contains(NoiseFunction.SentencePermutation))
                throw new ArgumentException("--noise sentence-permutation: the vocabulary has no sentence-ending piece (\".\", \"!\" or \"?\")");
            denoiser = new Denoiser(Special, ends, o.NoiseFunctions);
        }
        if (o.Objective == PretrainingObjective.Permutation) permutation = new PermutationLm(Special);
        if (o.Objective == PretrainingObjective.Pmlm)
        {
            var mix = new MaskingOptions().WithMix(o.MaskMix);
            pseudoMasked = new PseudoMaskedLm(Special, o.MaskRate, vocabSize, mix.ReplaceWithMask, mix.ReplaceWithRandom);
        }
        var documents = LoadDocuments(o, encoder, vocabPath, log);
        if (documents.Count < 2) throw new ArgumentException("the corpus needs at least two documents (separated by blank lines)");

        var rng = new Random(o.Seed);
        var order = Enumerable.Range(0, documents.Count).OrderBy(_ => rng.Next()).ToArray();
        int heldOut = o.HeldOut > 0 ? Math.Max(1, (int)(documents.Count * o.HeldOut)) : 0;
        var evalDocs = order.Take(heldOut).Select(i => documents[i]).ToList();
        var trainDocs = order.Skip(heldOut).Select(i => documents[i]).ToList();

        // Denoising's examples are texts that fit twice (source and target) in a sequence; XLNet's and
        // UniLMv2's leave room for the rows they append.
        int exampleLength = denoiser is not null ? Denoiser.OriginalLength(o.SequenceLength) + 2
            : permutation is not null ? PermutationLm.ExampleLength(o.SequenceLength)
            : pseudoMasked?.ExampleLength(o.SequenceLength) ?? o.SequenceLength;
        var generator = new ExampleGenerator(Special, exampleLength, o.SentenceObjective, o.InputFormat);
        sentenceClasses = generator.SentenceClasses;
        Train = generator.Generate(trainDocs, new Random(o.Seed + 1));
        Eval = evalDocs.Count >= 2 ? generator.Generate(evalDocs, new Random(o.Seed + 2)).Take(256).ToList() : [];
        if (Train.Count == 0) throw new ArgumentException("the corpus yields no training examples");

        PhraseTable? phrases = null;
        if (o.Masking == MaskingStrategy.Phrase)
        {
            var listed = o.Phrases is null ? [] : File.ReadLines(o.Phrases).Where(l => l.Trim().Length > 0)
                .Select(l => WordPieceTrainer.Words(l).Select(encoder.Encode).ToArray());
            phrases = PhraseTable.FromPhrases(listed).WithFrequentNgrams(Train, minCount: Math.Max(5, Train.Count / 200));
        }
        var maskOptions = new MaskingOptions
        {
            Rate = o.MaskRate, MaskWithUnk = o.MaskWithUnk, Strategy = o.Masking, Schedule = o.MaskSchedule,
        }.WithMix(o.MaskMix);
        masker = new Masker(maskOptions, Special, vocabSize, phrases);
        log.WriteLine($"corpus: {documents.Count} documents ({trainDocs.Count} train, {evalDocs.Count} held out), " +
            $"{Train.Count} training examples, {Eval.Count} evaluation examples");
    }

    public SpecialIds Special { get; }

    /// <summary>
    /// log p(piece) over the training examples' real word pieces (special tokens not counted), add-one
    /// smoothed: what an MLM predicts knowing nothing else, as a starting output bias.
    /// </summary>
    public float[] LogUnigram(int vocabSize)
    {
        var counts = new long[vocabSize];
        long total = 0;
        foreach (var e in Train)
            for (int i = 0; i < e.Ids.Length; i++)
                if (!e.Special[i] && e.Ids[i] != Special.Pad && (uint)e.Ids[i] < (uint)vocabSize)
                {
                    counts[e.Ids[i]]++;
                    total++;
                }
        double denominator = total + vocabSize;
        return [.. counts.Select(c => (float)Math.Log((c + 1) / denominator))];
    }

    public List<Example> Train { get; }
    public List<Example> Eval { get; }

    /// <summary>Training batch <paramref name="batchIndex"/> of <paramref name="batchSize"/> examples from the endless stream.</summary>
    public BertInputs Batch(long batchIndex, int batchSize)
    {
        var items = new List<(Example, MaskedExample)>();
        for (int i = 0; i < batchSize; i++)
        {
            long k = batchIndex * batchSize + i;
            int epoch = (int)(k / Train.Count);
            int exampleIndex = EpochOrder(epoch)[k % Train.Count];
            var e = Train[exampleIndex];
            items.Add(Prepare(e, masker.StreamFor(seed, exampleIndex, epoch)));
        }
        return Collate(items, batchIndex * batchSize);
    }

    /// <summary>The held-out examples, masked once with a fixed stream, in batches.</summary>
    public IEnumerable<BertInputs> EvalBatches(int batchSize)
    {
        for (int start = 0; start < Eval.Count; start += batchSize)
            yield return Collate(Eval.Skip(start).Take(batchSize).Select((e, i) => Prepare(e, masker.StreamFor(seed ^ 0xE7A1, start + i, 0))).ToList(), start);
    }

    /// <summary>
    /// An example as the objective trains on it, drawn from <paramref name="stream"/>: masked, as it
    /// is, as its seq2seq sequence (denoising), or with the rows XLNet or UniLMv2 append.
    /// </summary>
    private (Example, MaskedExample) Prepare(Example e, Random stream)
    {
        if (denoiser is not null)
        {
            var (example, masked, _) = denoiser.Build(e, seqLen, stream);
            return (example, masked);
        }
        if (permutation is not null) return permutation.Build(e, stream);
        if (pseudoMasked is not null) return pseudoMasked.Build(e, stream);
        return (e, unmasked ? Unmasked(e) : masker.Apply(e, stream));
    }

    /// <summary>The example as it is, nothing to predict (<see cref="PretrainingObjective.None"/>).</summary>
    private static MaskedExample Unmasked(Example e) => new(e.Ids, Enumerable.Repeat(-100, e.Length).ToArray());

    private readonly Dictionary<int, int[]> orders = new();

    private int[] EpochOrder(int epoch)
    {
        if (orders.TryGetValue(epoch, out var order)) return order;
        if (orders.Count > 4) orders.Clear();
        var rng = new Random(unchecked((int)(seed * 1_000_003UL + (ulong)epoch * 7_919UL + 0x5eedUL))); // not HashCode: it is salted per process
        order = Enumerable.Range(0, Train.Count).ToArray();
        rng.Shuffle(order);
        return orders[epoch] = order;
    }

    /// <summary>The examples as a batch; <paramref name="first"/> is the stream index of the first (UniLM's mask modes follow it).</summary>
    private BertInputs Collate(List<(Example E, MaskedExample M)> items, long first)
    {
        if (pairedRows) items = [.. items.SelectMany(x => SplitPair(x.E, x.M))];
        int s = items.Max(x => x.E.Length), b = items.Count;
        var ids = new int[b * s];
        var types = new int[b * s];
        var mask = new int[b * s];
        var labels = Enumerable.Repeat(-100, b * s).ToArray();
        for (int r = 0; r < b; r++)
        {
            var (e, m) = items[r];
            Array.Fill(ids, Special.Pad, r * s, s);
            m.InputIds.CopyTo(ids, r * s);
            e.TokenTypes.CopyTo(types, r * s);
            Array.Fill(mask, 1, r * s, e.Length);
            m.Labels.CopyTo(labels, r * s);
        }
        int[]? sentence = sentenceClasses > 0 ? items.Select(x => x.E.SentenceLabel).ToArray() : null;
        // Rows an objective arranged itself carry their positions and ranks; padding counts on from
        // the row's length and ranks 0 (attention_mask 0 already hides it as a key).
        int[]? Rows(Func<MaskedExample, int[]?> of, Func<int, int> pad)
        {
            if (items.All(x => of(x.M) is null)) return null;
            var a = new int[b * s];
            for (int r = 0; r < b; r++)
            {
                var values = of(items[r].M);
                for (int t = 0; t < s; t++) a[r * s + t] = values is not null && t < values.Length ? values[t] : pad(t);
            }
            return a;
        }
        return new BertInputs(b, s, ids, types, mask, labels, sentence, aux.Length == 0 ? null : aux.ToDictionary(h => h, h => AuxLabels(h, items, s)))
        {
            PositionIds = Rows(m => m.PositionIds, t => t),
            KeyRanks = Rows(m => m.KeyRanks, _ => 0),
            QueryRanks = Rows(m => m.QueryRanks, _ => 0),
            AttentionPrefix = unilm ? [.. items.Select((x, r) => UniLmPrefix(x.E, first + r, s))]
                : denoiser is not null ? [.. items.Select(x => Array.IndexOf(x.E.Ids, Special.Sep) + 1)] // the source: [CLS] corrupted [SEP]
                : null,
        };
    }

    /// <summary>UniLM's mode of example k of the stream: bidirectional, left-to-right and seq2seq in turn, so every batch mixes the three.</summary>
    public static UniLmMode ModeOf(long k) => (UniLmMode)(k % 3);

    /// <summary>
    /// The attention prefix (<see cref="BertInputs.AttentionPrefix"/>) of example k in a batch of
    /// length s: s (bidirectional), 0 (left-to-right), or for seq2seq a source of [CLS] and at least
    /// one token, a target of at least one token and the final [SEP], split where a draw from (seed, k) says.
    /// </summary>
    private int UniLmPrefix(Example e, long k, int s)
    {
        switch (ModeOf(k))
        {
            case UniLmMode.Bidirectional: return s;
            case UniLmMode.LeftToRight: return 0;
        }
        int lo = 2, hi = e.Length - 1; // the prefix ends at one of [2, e.Length − 2]
        if (hi <= lo) return Math.Min(lo, e.Length);
        var rng = new Random(unchecked((int)(seed * 2_654_435_761UL + (ulong)k * 40_503UL)));
        return rng.Next(lo, hi);
    }

    /// <summary>[CLS] A [SEP] B [SEP] (masked) → [CLS] A [SEP] and [CLS] B [SEP], both segment 0: rows 2i and 2i + 1 of the batch.</summary>
    private (Example, MaskedExample)[] SplitPair(Example e, MaskedExample m)
    {
        int sep = Array.IndexOf(e.Ids, Special.Sep);
        (Example, MaskedExample) Row(int from, int to) // tokens [from, to) of the pair
        {
            T[] Take<T>(T[] a, T cls) => [cls, .. a[from..to], a[^1]];
            var row = new Example(Take(e.Ids, Special.Cls), new int[to - from + 2], Take(e.WordStart, false), Take(e.Capitalized, false),
                Take(e.Special, true), ExampleGenerator.IgnoreLabel, e.ElsewhereInDocument is null ? null : Take(e.ElsewhereInDocument, false));
            return (row, new MaskedExample(Take(m.InputIds, Special.Cls), Take(m.Labels, -100)));
        }
        return [Row(1, sep), Row(sep + 1, e.Length - 1)];
    }

    /// <summary>A token head's labels: 0/1 at every real, non-special token, −100 elsewhere.</summary>
    private static int[] AuxLabels(string head, List<(Example E, MaskedExample M)> items, int s)
    {
        var labels = Enumerable.Repeat(-100, items.Count * s).ToArray();
        for (int r = 0; r < items.Count; r++)
        {
            var e = items[r].E;
            var flags = head switch
            {
                "capitalization" => e.Capitalized,
                "token-document" => e.ElsewhereInDocument ?? throw new InvalidOperationException("examples without token-document flags"),
                _ => throw new ArgumentException($"unknown auxiliary head {head}"),
            };
            for (int i = 0; i < e.Length; i++)
                if (!e.Special[i]) labels[r * s + i] = flags[i] ? 1 : 0;
        }
        return labels;
    }

    // ---- corpus and cache ----

    private static List<Document> LoadDocuments(PretrainingOptions o, BertTextEncoder encoder, string vocabPath, TextWriter log)
    {
        string key = CacheKey(o, vocabPath);
        string cacheFile = Path.Combine(CacheFolder(), key + ".shard");
        if (File.Exists(cacheFile))
        {
            try
            {
                var cached = ReadShard(cacheFile);
                log.WriteLine($"tokenized corpus from cache {cacheFile}");
                return cached;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or EndOfStreamException or OverflowException or ArgumentException)
            {
                log.WriteLine($"note: ignoring unreadable cache {cacheFile} ({e.Message})");
            }
        }
        log.WriteLine("tokenizing the corpus (cached for later runs)...");
        var raw = RawDocuments(o);
        var documents = PretrainingCorpus.Tokenize(encoder, raw);
        try { WriteShard(cacheFile, documents); }
        catch (IOException e) { log.WriteLine($"note: could not write the cache ({e.Message})"); }
        return documents;
    }

    public static IEnumerable<string[]> RawDocuments(PretrainingOptions o)
    {
        IEnumerable<string[]> docs = o.Corpus.Length > 0
            ? o.Corpus.SelectMany(f => File.Exists(f) ? PretrainingCorpus.SplitDocuments(File.ReadLines(f)) : throw new ArgumentException($"{f}: no such corpus file"))
            : DefaultCorpus.TypeDocuments().Select(d => d.Texts.SelectMany(PretrainingCorpus.SplitSentences).ToArray());
        return o.MaxDocuments > 0 ? docs.Take(o.MaxDocuments) : docs;
    }

    public static string CacheFolder()
    {
        string root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "ilgpu-bert");
    }

    /// <summary>Corpus files (path, size, time) or the default corpus folder, document limit, and the vocabulary's bytes.</summary>
    private static string CacheKey(PretrainingOptions o, string vocabPath)
    {
        // v2: default corpus grouped by type; then the tokenizer's version (HF-exact since 2).
        var sb = new StringBuilder($"shard-v2-tokenizer{BertTextEncoder.Version}\n");
        if (o.Corpus.Length == 0) sb.Append("default:").Append(DefaultCorpus.Folder()).Append('\n');
        foreach (var f in o.Corpus)
        {
            var info = new FileInfo(f);
            sb.Append(Path.GetFullPath(f)).Append(':').Append(info.Exists ? info.Length : -1).Append(':')
              .Append(info.Exists ? info.LastWriteTimeUtc.Ticks : 0).Append('\n');
        }
        sb.Append("max:").Append(o.MaxDocuments).Append('\n');
        using var sha = SHA256.Create();
        var bytes = Encoding.UTF8.GetBytes(sb.ToString()).Concat(File.ReadAllBytes(vocabPath)).ToArray();
        return Convert.ToHexString(sha.ComputeHash(bytes))[..24].ToLowerInvariant();
    }

    private static void WriteShard(string path, List<Document> documents) =>
        AtomicFile.Write(path, stream =>
        {
            using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            w.Write(0x53484431); // "SHD1"
            w.Write(documents.Count);
            foreach (var d in documents)
            {
                w.Write(d.Sentences.Length);
                foreach (var s in d.Sentences)
                {
                    w.Write(s.Length);
                    for (int i = 0; i < s.Length; i++)
                    {
                        w.Write(s.Ids[i]);
                        w.Write((byte)((s.WordStart[i] ? 1 : 0) | (s.Capitalized[i] ? 2 : 0)));
                    }
                }
            }
        });

    private static List<Document> ReadShard(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        if (r.ReadInt32() != 0x53484431) throw new InvalidDataException("not a shard");
        // Every count is bounded by the bytes left, so a corrupted file fails fast instead of allocating gigabytes.
        int Count()
        {
            int n = r.ReadInt32();
            if (n < 0 || n > (r.BaseStream.Length - r.BaseStream.Position) / 4 + 1) throw new InvalidDataException($"corrupted (a count of {n})");
            return n;
        }
        int count = Count();
        var docs = new List<Document>(count);
        for (int d = 0; d < count; d++)
        {
            var sentences = new Sentence[Count()];
            for (int j = 0; j < sentences.Length; j++)
            {
                int n = Count();
                var ids = new int[n];
                var starts = new bool[n];
                var caps = new bool[n];
                for (int i = 0; i < n; i++)
                {
                    ids[i] = r.ReadInt32();
                    byte flags = r.ReadByte();
                    starts[i] = (flags & 1) != 0;
                    caps[i] = (flags & 2) != 0;
                }
                sentences[j] = new Sentence(ids, starts, caps);
            }
            docs.Add(new Document(sentences));
        }
        return docs;
    }
}
