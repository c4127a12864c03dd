// The inference path as people run it: an encoder-only folder loaded without made-up heads, weights
// streamed into place, a forward that frees each layer, batches by tokens, the embedding index that
// search reuses, over-long and blank texts under one rule, and forward writing what the checkpoint has.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using IlgpuBert.Autograd;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class InferenceTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    private static string MiniLm => RealModelTests.ImportedMiniLm.Value;

    private string Lines(string name, params string[] lines)
    {
        string path = dir.File(name);
        File.WriteAllText(path, string.Join("\n", lines) + "\n");
        return path;
    }

    private string InitTiny()
    {
        string vocab = dir.File("vocab.txt");
        File.WriteAllLines(vocab, WordPieceTrainer.SpecialTokens.Concat(["the", "value", "of", "a", "property", "returns", "gets", "##s", "."]));
        string model = dir.File("tiny");
        var (code, _, err) = CliRunner.Run("init", "--size", "tiny", "--vocab", vocab, "--seed", "3", "--out", model, "--device", "cpu");
        Assert.True(code == 0, err);
        return model;
    }

    /// <summary>A text of about <paramref name="words"/> word pieces from the real model's vocabulary.</summary>
    private static string LongText(int words) => string.Join(" ", Enumerable.Range(0, words).Select(i => (i % 7) switch
    {
        0 => "the", 1 => "file", 2 => "is", 3 => "read", 4 => "from", 5 => "a", _ => "stream",
    }));

    [Fact]
    public void An_encoder_only_folder_loads_without_heads_and_a_missing_encoder_tensor_is_named()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var (_, mlm, nsp) = BertFolder.Heads(MiniLm);
        Assert.False(mlm || nsp);
        using (var body = BertFolder.LoadBody(device, MiniLm, addPoolingLayer: false))
            Assert.DoesNotContain(body.Parameters.Names, n => n.StartsWith("cls.", StringComparison.Ordinal) || n.StartsWith("bert.pooler.", StringComparison.Ordinal));
        long weightBytes, otherBytes; // the pool's buffers (size classes) for all parameters, and for all but the Linear weights
        using (var body = BertFolder.LoadBody(device, MiniLm, addPoolingLayer: false))
        {
            var linear = body.LinearWeights.ToHashSet();
            weightBytes = body.Parameters.All.Sum(p => BufferPool.Capacity(p.Var.Length)) * sizeof(float);
            otherBytes = body.Parameters.All.Where(p => !linear.Contains(p.Var)).Sum(p => BufferPool.Capacity(p.Var.Length)) * sizeof(float);
        }
        device.Pool.Trim();
        using (var pipeline = BertPipeline.Load(device, MiniLm))
        {
            // The Linear weights live on only as their packed copies (host arrays, outside the pool).
            Assert.True(device.Pool.BytesAllocated == otherBytes, $"{device.Pool.BytesAllocated} B in the pool, all weights {weightBytes} B, all but the Linear ones {otherBytes} B");
            Assert.Contains("no masked-language-model head", Assert.Throws<ArgumentException>(() => pipeline.FillMask("The [MASK].")).Message);
        }

        // The body alone from a pretraining folder equals that folder's full model's encoder.
        string tiny = InitTiny();
        Assert.Equal((true, true, true), BertFolder.Heads(tiny));
        var inputs = new BertInputs(2, 5, [2, 5, 6, 7, 3, 2, 8, 3, 0, 0], new int[10], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        using var full = BertFolder.Load(device, tiny);
        using var alone = BertFolder.LoadBody(device, tiny, addPoolingLayer: true);
        using var tape = new Tape(recording: false);
        Assert.Equal(full.Forward(tape, inputs, Dropouts.Off).LastHiddenState.Value.ToHost(), alone.Forward(tape, inputs, Dropouts.Off).LastHiddenState.Value.ToHost());

        var tensors = SafeTensors.Read(Path.Combine(tiny, BertFolder.WeightsFile));
        tensors.Remove("bert.encoder.layer.1.output.dense.weight");
        SafeTensors.Write(Path.Combine(tiny, BertFolder.WeightsFile), tensors);
        var e = Assert.Throws<CheckpointException>(() => BertFolder.LoadBody(device, tiny, addPoolingLayer: false));
        Assert.Contains("bert.encoder.layer.1.output.dense.weight", e.Message);
    }

    [Fact]
    public void An_inference_forward_frees_each_layer_and_computes_what_the_recording_forward_does()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var config = new BertConfig
        {
            VocabSize = 23, HiddenSize = 32, NumHiddenLayers = 8, NumAttentionHeads = 4, IntermediateSize = 128, MaxPositionEmbeddings = 64, TypeVocabSize = 2,
        };
        using var parameters = new BertParameters(device, config);
        var model = new BertModel(parameters);
        parameters.Initialize(4);
        var rng = new Random(5);
        int b = 8, s = 64;
        var ids = Enumerable.Range(0, b * s).Select(_ => rng.Next(5, 23)).ToArray();
        var mask = Enumerable.Range(0, b * s).Select(i => i % s < s - i / s ? 1 : 0).ToArray();
        var inputs = new BertInputs(b, s, ids, new int[b * s], mask);
        float[] Run(bool recording, out long peak)
        {
            device.Pool.ResetStatistics();
            long before = device.Pool.BytesInUse;
            using var tape = new Tape(recording);
            var o = model.Forward(tape, inputs, Dropouts.Off);
            Assert.Equal(model.Layers.Length + 1, o.HiddenStates.Count);
            peak = device.Pool.PeakBytesInUse - before;
            return o.LastHiddenState.Value.ToHost();
        }
        var recorded = Run(true, out long recordingPeak);
        var inferred = Run(false, out long inferencePeak);
        double max = recorded.Max(Math.Abs);
        Assert.True(recorded.Zip(inferred, (x, y) => Math.Abs(x - y)).Max() <= 1e-6 * max);
        // Recording keeps every layer's intermediates (QKV, context, the 4H-wide FFN, …: ~10× its
        // output) for backward; inference one layer's at a time and each layer's output.
        Assert.True(inferencePeak * 3 < recordingPeak, $"inference peak {inferencePeak} B, recording {recordingPeak} B");
    }

    [Fact]
    public void Embeddings_do_not_depend_on_how_texts_are_batched()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, MiniLm);
        string[] texts = [.. RealModelTests.Sentences[..10], LongText(90), "a"];
        var byDefault = pipeline.Embed(texts);
        foreach (var other in new[] { pipeline.Embed(texts, batchSize: 1), pipeline.Embed(texts, batchTokens: 24), pipeline.Embed(texts, batchSize: 3, batchTokens: 100_000) })
            for (int i = 0; i < texts.Length; i++)
                Assert.True(byDefault[i].Zip(other[i], (x, y) => Math.Abs(x - y)).Max() <= 2e-6, $"text {i}");
        Assert.Throws<ArgumentException>(() => pipeline.Embed(texts, batchTokens: 0));
    }

    [Fact]
    public void Over_long_texts_are_cut_as_HF_cuts_them_and_said_once_or_refused()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, MiniLm);
        var warnings = new List<string>();
        pipeline.Warn = warnings.Add;
        string[] texts = ["A short one.", LongText(40), LongText(60)];
        var vectors = pipeline.Embed(texts, maxLength: 16);
        Assert.Equal(["2 of 3 texts are longer than 16 tokens (the longest 62) and were cut to 16, as sentence-transformers does"], warnings);
        // The cut text is HF's truncation: [CLS], its first 14 pieces, [SEP].
        var row = pipeline.Encoder.EncodeRow(texts[2], null, 16);
        Assert.Equal(16, row.Ids.Length);
        var inputs = pipeline.Encoder.Pad([row]);
        var expected = pipeline.Sentence.Pool(pipeline.Encode(inputs), inputs.AttentionMask, 0, inputs.SeqLen, pipeline.Config.HiddenSize);
        Assert.True(expected.Zip(vectors[2], (x, y) => Math.Abs(x - y)).Max() <= 2e-6);
        var e = Assert.Throws<ArgumentException>(() => pipeline.Embed(texts, maxLength: 16, truncate: false));
        Assert.Contains("text 2 has 42 tokens, more than the 16", e.Message);

        string input = Lines("long.txt", texts);
        var (code, _, err) = CliRunner.Run("embed", "--model", MiniLm, "--input", input, "--max-length", "16", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Contains("2 of 3 texts are longer than 16 tokens", err);
        (code, _, err) = CliRunner.Run("embed", "--model", MiniLm, "--input", input, "--max-length", "16", "--truncate", "error", "--device", "cpu");
        Assert.NotEqual(0, code);
        Assert.Contains("text 2 has 42 tokens", err);
    }

    [Fact]
    public void Blank_texts_are_zero_vectors_everywhere_and_never_match()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, MiniLm);
        var warnings = new List<string>();
        pipeline.Warn = warnings.Add;
        var v = pipeline.Embed(["Reads a file.", "", "  \t"]);
        Assert.Equal(1.0, Math.Sqrt(v[0].Sum(x => (double)x * x)), 5);
        Assert.All(v.Skip(1), z => Assert.Equal(new float[384], z));
        Assert.Equal(["2 of 3 texts are blank: their vectors are zeros (no text to embed)"], warnings);
        string[] corpus = ["Reads all lines of a file.", "", "Writes bytes to a stream.", " "];
        var hits = pipeline.Search("read a file", corpus, topK: 10);
        Assert.Equal([0, 2], hits.Select(h => h.Index).Order());
        Assert.Throws<ArgumentException>(() => pipeline.Search(" ", corpus));

        var (code, stdout, err) = CliRunner.Run("embed", "--model", MiniLm, "--input", Lines("blank.txt", "Reads a file.", "", "Writes."), "--device", "cpu");
        Assert.True(code == 0, err);
        var rows = stdout.Trim().Split('\n').Select(l => JsonSerializer.Deserialize<float[]>(l)!).ToList();
        Assert.Equal(3, rows.Count); // one row per line, as the input has
        Assert.All(rows[1], x => Assert.Equal(0f, x));
        Assert.Contains("1 of 3 texts are blank", err);
        (code, stdout, err) = CliRunner.Run("similarity", "--model", MiniLm, "", "Reads a file.", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal("0.000000", stdout.Trim());
        (code, stdout, err) = CliRunner.Run("search", "--model", MiniLm, "--corpus", Lines("corpus.txt", corpus), "--top-k", "10", "read a file", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal(2, stdout.Trim().Split('\n').Length);
    }

    [Fact]
    public void Search_reuses_an_index_made_once_and_refuses_one_of_other_texts_or_another_embedding()
    {
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        using var pipeline = BertPipeline.Load(device, MiniLm);
        string[] corpus = [.. RealModelTests.Sentences[..8], ""];
        string index = dir.File("corpus.safetensors");
        var plain = pipeline.Search("a man eats", corpus, topK: 9);
        var made = pipeline.Search("a man eats", corpus, topK: 9, indexPath: index);
        Assert.True(File.Exists(index));
        var read = pipeline.Search("a man eats", corpus, topK: 9, indexPath: index);
        Assert.Equal(plain.Select(h => h.Index), made.Select(h => h.Index));
        Assert.Equal(made, read);
        Assert.DoesNotContain(read, h => h.Index == 8); // the blank line

        // The index is read, not recomputed: vectors changed in the file change the answer.
        var file = SafeTensorsFile.Open(index);
        var meta = file.Metadata.ToDictionary();
        var vectors = file.Read(EmbeddingIndex.Tensor);
        file.Dispose();
        Array.Reverse(vectors.Data);
        SafeTensors.Write(index, new Dictionary<string, HostTensor> { [EmbeddingIndex.Tensor] = vectors }, meta);
        Assert.NotEqual(made, pipeline.Search("a man eats", corpus, topK: 9, indexPath: index));

        string[] edited = [.. corpus];
        edited[3] = "Someone else entirely.";
        Assert.Contains("made from other texts", Assert.Throws<ArgumentException>(() => pipeline.Search("a man eats", edited, indexPath: index)).Message);
        Assert.Contains("another model or embedding", Assert.Throws<ArgumentException>(() => pipeline.Search("a man eats", corpus, pooling: EmbeddingPooling.Cls, indexPath: index)).Message);
        Assert.Contains("not an embedding index", Assert.Throws<CheckpointException>(() => pipeline.Search("a man eats", corpus, indexPath: Path.Combine(MiniLm, BertFolder.WeightsFile))).Message);
        string other = dir.File("other");
        Directory.CreateDirectory(other);
        foreach (var f in Directory.GetFiles(MiniLm)) File.Copy(f, Path.Combine(other, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(other, "tokenizer_config.json"), """{"do_lower_case": false}""");
        using (var cased = BertPipeline.Load(device, other))
            Assert.Contains("another model or embedding", Assert.Throws<ArgumentException>(() => cased.Search("a man eats", corpus, indexPath: index)).Message);

        // embed --out FILE.safetensors writes an index that search --index reads.
        string lines = Lines("corpus.txt", corpus), cliIndex = dir.File("cli.safetensors");
        var (code, _, err) = CliRunner.Run("embed", "--model", MiniLm, "--input", lines, "--out", cliIndex, "--device", "cpu");
        Assert.True(code == 0, err);
        (code, var stdout, err) = CliRunner.Run("search", "--model", MiniLm, "--corpus", lines, "--index", cliIndex, "--top-k", "3", "a man eats", "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.DoesNotContain("wrote", err);
        Assert.Equal(plain.Take(3).Select(h => corpus[h.Index]), stdout.Trim().Split('\n').Select(l => l.Split('\t')[1]));
        (code, _, err) = CliRunner.Run("search", "--model", MiniLm, "--corpus", Lines("edited.txt", edited), "--index", cliIndex, "a man eats", "--device", "cpu");
        Assert.NotEqual(0, code);
        Assert.Contains("made from other texts", err);
    }

    [Fact]
    public void Forward_writes_what_the_checkpoint_has_and_refuses_a_head_it_lacks_by_name()
    {
        string batch = dir.File("batch.json");
        File.WriteAllText(batch, """{"input_ids": [[2, 5, 6, 3], [2, 7, 3, 0]], "token_type_ids": [[0,0,0,0],[0,0,0,0]], "attention_mask": [[1,1,1,1],[1,1,1,0]]}""");
        string Keys(string file)
        {
            using var f = SafeTensorsFile.Open(file);
            return string.Join(",", f.Entries.Keys.Order(StringComparer.Ordinal));
        }
        string output = dir.File("o.safetensors");
        var (code, _, err) = CliRunner.Run("forward", "--model", MiniLm, "--input", batch, "--out", output, "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal(BertFolder.Heads(MiniLm).Pooler ? "last_hidden_state,pooler_output" : "last_hidden_state", Keys(output));
        (code, _, err) = CliRunner.Run("forward", "--model", MiniLm, "--input", batch, "--out", output, "--outputs", "last_hidden_state,prediction_logits", "--device", "cpu");
        Assert.NotEqual(0, code);
        Assert.Contains("prediction_logits needs the masked-language-model head (cls.predictions.*)", err);
        (code, _, err) = CliRunner.Run("forward", "--model", MiniLm, "--input", batch, "--out", output, "--outputs", "logits", "--device", "cpu");
        Assert.Contains("no output logits", err);

        string tiny = InitTiny();
        (code, _, err) = CliRunner.Run("forward", "--model", tiny, "--input", batch, "--out", output, "--device", "cpu");
        Assert.True(code == 0, err);
        Assert.Equal("last_hidden_state,pooler_output,prediction_logits,seq_relationship_logits", Keys(output));
        var all = SafeTensors.Read(output);
        string only = dir.File("only.safetensors");
        (code, _, err) = CliRunner.Run("forward", "--model", tiny, "--input", batch, "--out", only, "--outputs", "last_hidden_state,hidden_states", "--device", "cpu");
        Assert.True(code == 0, err);
        var some = SafeTensors.Read(only);
        Assert.Equal(["hidden_states.0", "hidden_states.1", "hidden_states.2", "last_hidden_state"], some.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(all["last_hidden_state"].Data, some["last_hidden_state"].Data);
        (code, _, err) = CliRunner.Run("forward", "--model", tiny, "--input", batch, "--out", only, "--outputs", "loss", "--device", "cpu");
        Assert.Contains("loss needs labels or next_sentence_label", err);
    }

    [Fact]
    public void A_tensor_larger_than_the_read_buffer_decodes_in_every_stored_dtype()
    {
        const int n = 700_001; // more than one 1 MiB buffer of 2-byte values
        var values = Enumerable.Range(0, n).Select(i => (float)Math.Round(Math.Sin(i) * 8, 2)).ToArray();
        foreach (var dtype in new[] { "F16", "BF16", "F32" })
        {
            int size = dtype == "F32" ? 4 : 2;
            var data = new byte[n * size];
            var expected = new float[n];
            for (int i = 0; i < n; i++)
            {
                if (dtype == "F16")
                {
                    BinaryPrimitives.WriteHalfLittleEndian(data.AsSpan(2 * i), (Half)values[i]);
                    expected[i] = (float)(Half)values[i];
                }
                else if (dtype == "BF16")
                {
                    ushort bits = (ushort)(BitConverter.SingleToInt32Bits(values[i]) >> 16);
                    BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(2 * i), bits);
                    expected[i] = BitConverter.Int32BitsToSingle(bits << 16);
                }
                else
                {
                    BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(4 * i), values[i]);
                    expected[i] = values[i];
                }
            }
            var header = Encoding.UTF8.GetBytes($$$"""{"w":{"dtype":"{{{dtype}}}","shape":[{{{n}}}],"data_offsets":[0,{{{data.Length}}}]},"__metadata__":{"format":"pt","n":"{{{n}}}","odd":3}}""");
            string path = dir.File($"{dtype}.safetensors");
            using (var stream = File.Create(path))
            {
                var length = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
                stream.Write(length);
                stream.Write(header);
                stream.Write(data);
            }
            using var file = SafeTensorsFile.Open(path);
            Assert.Equal(expected, file.Read("w").Data);
            Assert.Equal(new Dictionary<string, string> { ["format"] = "pt", ["n"] = $"{n}" }, file.Metadata); // a non-string value is not metadata
            Assert.Throws<ArgumentException>(() => file.ReadInto("w", new float[n - 1]));
        }
    }

    [Fact]
    public void The_type_summaries_read_alone_are_the_type_members_of_all_summaries()
    {
        var all = DefaultCorpus.Summaries().Where(d => d.Member.StartsWith("T:", StringComparison.Ordinal)).ToList();
        Assert.True(all.Count > 1000);
        Assert.Equal(all, DefaultCorpus.TypeSummaries().ToList());
    }
}
