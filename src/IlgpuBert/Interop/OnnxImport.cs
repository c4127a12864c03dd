// BERT-family ONNX exports → an HF model folder (config.json, model.safetensors, vocab.txt,
// tokenizer_config.json): how .NET projects ship BERT (ML.NET, ONNX Runtime, the
// SentenceTransformers.* packages) back into a form every verb here reads.
//
// What PyTorch's exporter leaves (checked on all-MiniLM-L6-v2 and on our own export-onnx): the
// embeddings, biases and LayerNorm parameters keep their HF names; each Linear weight is an
// initializer (often unnamed, e.g. "927", stored [in, out]) feeding a MatMul whose output is added
// to a named bias, or a Gemm with a named bias — so a weight takes its name from its bias. The
// config comes from the graph: sizes from the tensors, layers from the names, heads from the
// Reshape that splits layer 0's query into [batch, seq, heads, head_dim], layer_norm_eps from the
// LayerNorm (LayerNormalization's epsilon, or the constant added before the Sqrt), hidden_act from
// the ops (Erf: "gelu"; Tanh in the feed-forward: "gelu_new"; Relu: "relu"). Anything that cannot
// be mapped is refused with the node or tensor that stopped it.
using System.Text.Json.Nodes;
using Google.Protobuf;
using IlgpuBert.Checkpoints;
using IlgpuBert.Model;
using IlgpuBert.Text;
using Onnx;

namespace IlgpuBert.Interop;

public sealed record OnnxImportResult(BertConfig Config, Dictionary<string, HostTensor> Tensors, string Architecture);

public static class OnnxImport
{
    public static OnnxImportResult Read(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: no such file");
        ModelProto model;
        try
        {
            model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new CheckpointException($"{path}: not an ONNX model ({e.Message})");
        }
        return Convert(model.Graph ?? throw new CheckpointException($"{path}: the ONNX model has no graph"), path);
    }

    private static OnnxImportResult Convert(GraphProto graph, string path)
    {
        var constants = new Dictionary<string, TensorProto>();
        foreach (var t in graph.Initializer) constants[t.Name] = t;
        foreach (var n in graph.Node.Where(n => n.OpType == "Constant"))
            if (n.Attribute.FirstOrDefault(a => a.Name == "value")?.T is { } value) constants[n.Output[0]] = value;
        var producer = new Dictionary<string, NodeProto>();
        var consumers = new Dictionary<string, List<NodeProto>>();
        foreach (var n in graph.Node)
        {
            foreach (var o in n.Output) producer[o] = n;
            foreach (var i in n.Input)
            {
                if (!consumers.TryGetValue(i, out var list)) consumers[i] = list = [];
                list.Add(n);
            }
        }
        List<NodeProto> Consumers(string name) => consumers.TryGetValue(name, out var l) ? l : [];
        string Where(NodeProto n) => $"{path}: node {(n.Name.Length > 0 ? n.Name : n.OpType)} ({n.OpType})";

        // Named parameters as they are.
        var tensors = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        foreach (var t in graph.Initializer)
            if (IsParameterName(t.Name) && t.DataType == (int)TensorProto.Types.DataType.Float)
                tensors[t.Name] = ToHost(t, path);

        // Linear weights, named after the bias they are added to.
        foreach (var n in graph.Node)
        {
            if (n.OpType == "MatMul" && n.Input.Count == 2 && constants.TryGetValue(n.Input[1], out var w) && w.Dims.Count == 2)
            {
                var add = Consumers(n.Output[0]).FirstOrDefault(c => c.OpType == "Add" && c.Input.Any(i => i.EndsWith(".bias", StringComparison.Ordinal) && constants.ContainsKey(i)));
                if (add is null)
                {
                    if (IsParameterName(n.Input[1])) continue; // a named weight used as it is (e.g. a tied decoder)
                    throw new CheckpointException($"{Where(n)}: its weight {n.Input[1]} [{string.Join(", ", w.Dims)}] is added to no named bias, so it cannot be named");
                }
                string bias = add.Input.First(i => i.EndsWith(".bias", StringComparison.Ordinal) && constants.ContainsKey(i));
                tensors[bias[..^".bias".Length] + ".weight"] = Transpose(ToHost(w, path)); // MatMul stores [in, out]; HF [out, in]
            }
            else if (n.OpType == "Gemm" && n.Input.Count == 3 && constants.TryGetValue(n.Input[1], out var gw) && n.Input[2].EndsWith(".bias", StringComparison.Ordinal))
            {
                bool transB = n.Attribute.FirstOrDefault(a => a.Name == "transB")?.I == 1;
                if (n.Attribute.FirstOrDefault(a => a.Name == "transA")?.I == 1) throw new CheckpointException($"{Where(n)}: transA = 1 is not a Linear layer");
                var host = ToHost(gw, path);
                tensors[n.Input[2][..^".bias".Length] + ".weight"] = transB ? host : Transpose(host);
            }
        }

        string prefix = tensors.ContainsKey("bert.embeddings.word_embeddings.weight") ? "bert." : "";
        if (!tensors.TryGetValue(prefix + "embeddings.word_embeddings.weight", out var word))
            throw new CheckpointException($"{path}: not a BERT export (no embeddings.word_embeddings.weight initializer)");
        int hidden = word.Shape[1];
        int layers = 0;
        while (tensors.ContainsKey($"{prefix}encoder.layer.{layers}.attention.output.LayerNorm.weight")) layers++;
        if (layers == 0) throw new CheckpointException($"{path}: no encoder layers (no encoder.layer.0.* tensors)");
        int intermediate = Need(tensors, $"{prefix}encoder.layer.0.intermediate.dense.bias", path).Shape[0];

        // Heads: the Reshape of layer 0's query output into [batch, seq, heads, head_dim].
        var queryAdd = graph.Node.FirstOrDefault(n => n.OpType == "Add" && n.Input.Contains($"{prefix}encoder.layer.0.attention.self.query.bias"))
            ?? throw new CheckpointException($"{path}: cannot find the number of attention heads (no Add of encoder.layer.0.attention.self.query.bias)");
        var reshape = Consumers(queryAdd.Output[0]).FirstOrDefault(c => c.OpType == "Reshape")
            ?? throw new CheckpointException($"{Where(queryAdd)}: cannot find the number of attention heads (the query is not reshaped into heads)");
        var shape = ShapeValues(reshape.Input[1], constants, producer)
            ?? throw new CheckpointException($"{Where(reshape)}: cannot read the target shape [batch, seq, heads, head_dim]");
        if (shape.Length != 4 || shape[2] <= 0 || shape[2] * shape[3] != hidden)
            throw new CheckpointException($"{Where(reshape)}: target shape [{string.Join(", ", shape)}] is not [batch, seq, heads, head_dim] with heads·head_dim = {hidden}");
        int heads = (int)shape[2];

        float eps = LayerNormEps(graph, constants, producer) ?? throw new CheckpointException($"{path}: cannot find layer_norm_eps (no LayerNormalization and no Sqrt of variance + ε)");
        var ops = graph.Node.Select(n => n.OpType).ToHashSet();
        int tanhCount = graph.Node.Count(n => n.OpType == "Tanh");
        bool pooler = tensors.ContainsKey($"{prefix}pooler.dense.weight");
        string act = ops.Contains("Erf") ? "gelu" : tanhCount > (pooler ? 1 : 0) ? "gelu_new" : ops.Contains("Relu") ? "relu"
            : throw new CheckpointException($"{path}: cannot tell the activation (no Erf, Tanh or Relu node)");

        string architecture = tensors.ContainsKey("cls.predictions.bias") ? "BertForPreTraining"
            : tensors.ContainsKey("classifier.weight") ? "BertForSequenceClassification"
            : tensors.ContainsKey("qa_outputs.weight") ? "BertForQuestionAnswering" : "BertModel";
        var config = new BertConfig
        {
            VocabSize = word.Shape[0], HiddenSize = hidden, NumHiddenLayers = layers, NumAttentionHeads = heads, IntermediateSize = intermediate,
            HiddenAct = act, MaxPositionEmbeddings = Need(tensors, $"{prefix}embeddings.position_embeddings.weight", path).Shape[0],
            TypeVocabSize = Need(tensors, $"{prefix}embeddings.token_type_embeddings.weight", path).Shape[0], LayerNormEps = eps,
            Extra = new JsonObject { ["architectures"] = new JsonArray(architecture), ["model_type"] = "bert" },
        };
        config.Validate();
        // Every parameter of each layer must be there (a failure names the first missing one).
        foreach (string name in LayerParameters(prefix, layers))
            Need(tensors, name, path);
        tensors.Remove(prefix + "embeddings.position_ids");
        return new OnnxImportResult(config, tensors, architecture);
    }

    private static IEnumerable<string> LayerParameters(string prefix, int layers)
    {
        foreach (var e in new[] { "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias" })
            yield return $"{prefix}embeddings.{e}";
        for (int l = 0; l < layers; l++)
            foreach (var p in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm" })
                foreach (var s in new[] { "weight", "bias" })
                    yield return $"{prefix}encoder.layer.{l}.{p}.{s}";
    }

    private static bool IsParameterName(string name) =>
        name.Contains('.') && (name.EndsWith(".weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal) || name.EndsWith("position_ids", StringComparison.Ordinal));

    private static HostTensor Need(Dictionary<string, HostTensor> tensors, string name, string path) =>
        tensors.TryGetValue(name, out var t) ? t : throw new CheckpointException($"{path}: no {name} in the graph (initializer or Linear weight named by its bias)");

    /// <summary>The values of a shape input: a constant, or a Concat whose trailing parts are constants.</summary>
    private static long[]? ShapeValues(string name, Dictionary<string, TensorProto> constants, Dictionary<string, NodeProto> producer)
    {
        if (constants.TryGetValue(name, out var c)) return Int64s(c);
        if (!producer.TryGetValue(name, out var concat) || concat.OpType != "Concat") return null;
        var parts = new List<long>();
        foreach (var input in concat.Input)
            parts.AddRange(constants.TryGetValue(input, out var part) ? Int64s(part) : [0]); // a dynamic part: batch or sequence
        return parts.ToArray();
    }

    private static float? LayerNormEps(GraphProto graph, Dictionary<string, TensorProto> constants, Dictionary<string, NodeProto> producer)
    {
        var ln = graph.Node.FirstOrDefault(n => n.OpType == "LayerNormalization");
        if (ln is not null) return ln.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? 1e-5f;
        foreach (var sqrt in graph.Node.Where(n => n.OpType == "Sqrt"))
            if (producer.TryGetValue(sqrt.Input[0], out var add) && add.OpType == "Add")
                foreach (var input in add.Input)
                    if (constants.TryGetValue(input, out var eps) && eps.DataType == (int)TensorProto.Types.DataType.Float)
                        return Floats(eps)[0];
        return null;
    }

    private static long[] Int64s(TensorProto t) =>
        t.Int64Data.Count > 0 ? t.Int64Data.ToArray()
        : t.RawData.Length > 0 ? Enumerable.Range(0, t.RawData.Length / 8).Select(i => BitConverter.ToInt64(t.RawData.Span.Slice(8 * i, 8))).ToArray()
        : [];

    private static float[] Floats(TensorProto t) =>
        t.FloatData.Count > 0 ? t.FloatData.ToArray()
        : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray();

    private static HostTensor ToHost(TensorProto t, string path)
    {
        if (t.DataType != (int)TensorProto.Types.DataType.Float)
            throw new CheckpointException($"{path}: tensor {t.Name} is {(TensorProto.Types.DataType)t.DataType}, only float32 models are imported");
        if (t.DataLocation == TensorProto.Types.DataLocation.External)
            throw new CheckpointException($"{path}: tensor {t.Name} is stored in an external file; export with the weights inside the model");
        var shape = t.Dims.Select(d => checked((int)d)).ToArray();
        var data = Floats(t);
        if (data.Length != HostTensor.Elements(shape)) throw new CheckpointException($"{path}: tensor {t.Name} has {data.Length} values for shape [{string.Join(", ", shape)}]");
        return new HostTensor(shape, data);
    }

    private static HostTensor Transpose(HostTensor t)
    {
        int rows = t.Shape[0], cols = t.Shape[1];
        var data = new float[t.Data.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                data[c * rows + r] = t.Data[r * cols + c];
        return new HostTensor([cols, rows], data);
    }

    /// <summary>
    /// Writes the model folder: config.json, model.safetensors under HF's names, and the
    /// vocabulary with a tokenizer_config.json (lower-casing as given, or guessed from the vocabulary:
    /// cased when more than 1% of its entries have an upper-case letter).
    /// </summary>
    public static void WriteFolder(OnnxImportResult result, string dir, string? vocabPath, bool? doLowerCase)
    {
        Directory.CreateDirectory(dir);
        result.Config.Write(Path.Combine(dir, BertFolder.ConfigFile));
        SafeTensors.Write(Path.Combine(dir, BertFolder.WeightsFile), result.Tensors);
        if (vocabPath is null) return;
        var vocab = WordPiece.ReadVocabulary(vocabPath);
        if (vocab.Length != result.Config.VocabSize)
            throw new CheckpointException($"{vocabPath}: {vocab.Length} entries, but the model's word embeddings have {result.Config.VocabSize} rows");
        BertFolder.CopyInto(vocabPath, dir, BertFolder.VocabFile);
        bool lower = doLowerCase ?? vocab.Count(t => !t.StartsWith('[') && t.Any(char.IsUpper)) <= vocab.Length / 100;
        var tokenizerConfig = new JsonObject
        {
            ["tokenizer_class"] = "BertTokenizer", ["do_lower_case"] = lower, ["model_max_length"] = result.Config.MaxPositionEmbeddings,
        };
        AtomicFile.WriteText(Path.Combine(dir, "tokenizer_config.json"), tokenizerConfig.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
