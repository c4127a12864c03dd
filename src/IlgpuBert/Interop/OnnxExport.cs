// A model folder → a standard ONNX graph (opset 17, FP32) that ONNX Runtime runs with dynamic
// batch and sequence axes: inputs input_ids, attention_mask, token_type_ids (int64 [batch,
// sequence]); outputs as HF names them: last_hidden_state, pooler_output (when the model has a
// pooler), and the head's prediction_logits + seq_relationship_logits (pretraining), logits
// (sequence or token classification, regression) or start_logits + end_logits (QA).
//
// The graph is HF's BertModel written out: Gather embeddings (positions from a Range over the
// sequence length), LayerNormalization, per layer Q/K/V projections reshaped into [batch, heads,
// seq, head_dim], scaled scores + the mask's additive bias (a masked key gets float.MinValue, as
// HF's extended attention mask), Softmax, context, output projection and Add & Norm, then the
// feed-forward with the config's activation (Erf for "gelu", the tanh form for "gelu_new"). Linear
// weights are stored [in, out] for MatMul and named "<HF name>.T", so import-onnx maps them back
// by their biases; the decoder stays tied to the word embeddings. Pruned heads export as the
// smaller layers they are. Int8 models are refused.
using Google.Protobuf;
using IlgpuBert.Checkpoints;
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using Onnx;

namespace IlgpuBert.Interop;

public sealed record OnnxExportResult(string Architecture, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs);

public static class OnnxExport
{
    public const int Opset = 17;

    /// <summary>Loads the folder on the CPU accelerator and writes its graph to <paramref name="path"/> (atomically).</summary>
    public static OnnxExportResult Write(string dir, string path)
    {
        if (!Directory.Exists(dir)) throw new CheckpointException($"{dir}: no such model folder");
        var config = BertConfig.Read(Path.Combine(dir, BertFolder.ConfigFile));
        if (Compression.Int8Model.IsQuantized(config))
            throw new CheckpointException($"{dir}: an int8 model; export-onnx writes float32 models only");
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        var task = TaskSpec.FromConfig(config);
        if (task is not null)
        {
            using var model = BertForTask.Load(device, dir);
            return Save(Build(config, model.Parameters, task), path);
        }
        using var pretraining = BertFolder.Load(device, dir);
        return Save(Build(config, pretraining.Parameters, null), path);
    }

    private static OnnxExportResult Save((ModelProto Model, OnnxExportResult Result) built, string path)
    {
        AtomicFile.Write(path, s => built.Model.WriteTo(s));
        return built.Result;
    }

    private static (ModelProto, OnnxExportResult) Build(BertConfig c, BertParameters p, TaskSpec? task)
    {
        c.RequireNotAlbert("ONNX export");
        var g = new GraphWriter(p);
        int h = c.HiddenSize, hd = c.HeadDim;
        g.Input("input_ids");
        g.Input("attention_mask");
        g.Input("token_type_ids");

        // Embeddings: word + position (0..S−1) + token type, then LayerNorm.
        string seqLen = g.Node("Gather", [g.Node("Shape", ["input_ids"]), g.Int64(1, "one_scalar", scalar: true)], ("axis", 0L));
        string positions = g.Node("Range", [g.Int64(0, "zero_scalar", scalar: true), seqLen, "one_scalar"]);
        string x = g.Node("Add", [g.Node("Add", [g.Node("Gather", [g.Param("bert.embeddings.word_embeddings.weight"), "input_ids"]),
            g.Node("Gather", [g.Param("bert.embeddings.position_embeddings.weight"), positions])]),
            g.Node("Gather", [g.Param("bert.embeddings.token_type_embeddings.weight"), "token_type_ids"])]);
        x = g.LayerNorm(x, "bert.embeddings.LayerNorm", c.LayerNormEps);
        var states = new List<string> { x };

        // The mask as an additive bias [B, 1, 1, S]: 0 where attended, float.MinValue where masked.
        string keep = g.Node("Cast", ["attention_mask"], ("to", (long)TensorProto.Types.DataType.Float));
        string bias = g.Node("Mul", [g.Node("Sub", [g.Float(1f, "one_float"), keep]), g.Float(float.MinValue, "masked_bias")]);
        bias = g.Node("Unsqueeze", [bias, g.Int64s([1, 2], "axes_1_2")]);
        var scale = g.Float(1f / MathF.Sqrt(hd), "score_scale");

        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string at = $"bert.encoder.layer.{l}.";
            int heads = c.HeadsOf(l).Length;
            string shape = g.Int64s([0, 0, heads, hd], $"heads_shape_{l}");
            string Heads(string name, long[] perm) =>
                g.Node("Transpose", [g.Node("Reshape", [g.Linear(x, at + name), shape])], ("perm", perm));
            string q = Heads("attention.self.query", [0, 2, 1, 3]);   // [B, NH, S, HD]
            string k = Heads("attention.self.key", [0, 2, 3, 1]);     // [B, NH, HD, S]
            string v = Heads("attention.self.value", [0, 2, 1, 3]);   // [B, NH, S, HD]
            string scores = g.Node("Add", [g.Node("Mul", [g.Node("MatMul", [q, k]), scale]), bias]);
            string context = g.Node("MatMul", [g.Node("Softmax", [scores], ("axis", -1L)), v]);
            context = g.Node("Reshape", [g.Node("Transpose", [context], ("perm", new long[] { 0, 2, 1, 3 })), g.Int64s([0, 0, heads * hd], $"context_shape_{l}")]);
            string h1 = g.LayerNorm(g.Node("Add", [g.Linear(context, at + "attention.output.dense"), x]), at + "attention.output.LayerNorm", c.LayerNormEps);
            string inter = g.Activation(g.Linear(h1, at + "intermediate.dense"), c.HiddenAct);
            x = g.LayerNorm(g.Node("Add", [g.Linear(inter, at + "output.dense"), h1]), at + "output.LayerNorm", c.LayerNormEps);
            states.Add(x);
        }
        g.Output("last_hidden_state", x);
        string cls = g.Node("Gather", [x, "zero_scalar"], ("axis", 1L)); // [B, H]
        string? pooled = null;
        if (p.Names.Contains("bert.pooler.dense.weight"))
        {
            pooled = g.Node("Tanh", [g.Linear(cls, "bert.pooler.dense")]);
            g.Output("pooler_output", pooled);
        }

        string architecture;
        if (task is null)
        {
            architecture = "BertForPreTraining";
            string t = g.LayerNorm(g.Activation(g.Linear(x, "cls.predictions.transform.dense"), c.HiddenAct), "cls.predictions.transform.LayerNorm", c.LayerNormEps);
            string decoder = g.Node("Transpose", [g.Param("bert.embeddings.word_embeddings.weight")], ("perm", new long[] { 1, 0 }));
            g.Output("prediction_logits", g.Node("Add", [g.Node("MatMul", [t, decoder]), g.Param("cls.predictions.bias")]));
            g.Output("seq_relationship_logits", g.Linear(pooled!, "cls.seq_relationship"));
        }
        else
        {
            architecture = task.Kind switch
            {
                TaskKind.TokenClassification => "BertForTokenClassification",
                TaskKind.QuestionAnswering => "BertForQuestionAnswering",
                _ => "BertForSequenceClassification",
            };
            string head = task.Kind == TaskKind.QuestionAnswering ? "qa_outputs" : "classifier";
            // Token features: the last layer, four layers side by side, or the learned layer mix.
            string features = task.Pooling switch
            {
                Pooling.ConcatLast4 => g.Node("Concat", states.Skip(states.Count - Math.Min(4, states.Count)).ToList(), ("axis", -1L)),
                Pooling.ScalarMix => g.ScalarMix(states),
                _ => x,
            };
            if (task.IsSequenceLevel)
            {
                features = task.Pooling switch
                {
                    Pooling.Cls => pooled ?? throw new CheckpointException("a [CLS]-pooled classifier needs the pooler"),
                    Pooling.Mean => g.MaskedMean(x, keep),
                    _ => g.Node("Gather", [features, "zero_scalar"], ("axis", 1L)),
                };
            }
            string logits = g.Linear(features, head);
            if (task.Kind == TaskKind.QuestionAnswering)
            {
                var (start, end) = g.Node2("Split", [logits, g.Int64s([1, 1], "split_1_1")], ("axis", -1L));
                g.Output("start_logits", g.Node("Squeeze", [start, g.Int64s([-1], "axis_last")]));
                g.Output("end_logits", g.Node("Squeeze", [end, "axis_last"]));
            }
            else
                g.Output("logits", logits);
        }

        var model = new ModelProto
        {
            IrVersion = 8, ProducerName = "IlgpuBert", ProducerVersion = typeof(OnnxExport).Assembly.GetName().Version?.ToString() ?? "",
            Graph = g.Graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        g.Graph.Name = architecture;
        return (model, new OnnxExportResult(architecture, g.Graph.Input.Select(i => i.Name).ToList(), g.Graph.Output.Select(o => o.Name).ToList()));
    }

    /// <summary>Builds the graph: nodes with generated output names, initializers from the model's parameters.</summary>
    private sealed class GraphWriter(BertParameters parameters)
    {
        private int next;
        private readonly HashSet<string> initializers = [];

        public GraphProto Graph { get; } = new();

        public void Input(string name) => Graph.Input.Add(Value(name, TensorProto.Types.DataType.Int64, "batch", "sequence"));

        /// <summary>A graph output named as HF names it (an Identity of the value, which other nodes may still read).</summary>
        public void Output(string name, string value)
        {
            var node = new NodeProto { OpType = "Identity", Name = $"Output_{name}" };
            node.Input.Add(value);
            node.Output.Add(name);
            Graph.Node.Add(node);
            Graph.Output.Add(new ValueInfoProto
            {
                Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } },
            });
        }

        private static ValueInfoProto Value(string name, TensorProto.Types.DataType type, params string[] dims)
        {
            var shape = new TensorShapeProto();
            foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = d });
            return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
        }

        public string Node(string op, IReadOnlyList<string> inputs, params (string Name, object Value)[] attributes) =>
            Add(op, inputs, 1, attributes)[0];

        public (string, string) Node2(string op, IReadOnlyList<string> inputs, params (string Name, object Value)[] attributes)
        {
            var o = Add(op, inputs, 2, attributes);
            return (o[0], o[1]);
        }

        private string[] Add(string op, IReadOnlyList<string> inputs, int outputs, (string Name, object Value)[] attributes)
        {
            var node = new NodeProto { OpType = op, Name = $"{op}_{next}" };
            node.Input.AddRange(inputs);
            var names = Enumerable.Range(0, outputs).Select(i => $"{op.ToLowerInvariant()}_{next}_{i}").ToArray();
            next++;
            node.Output.AddRange(names);
            foreach (var (name, value) in attributes)
            {
                var a = new AttributeProto { Name = name };
                switch (value)
                {
                    case long i: a.Type = AttributeProto.Types.AttributeType.Int; a.I = i; break;
                    case float f: a.Type = AttributeProto.Types.AttributeType.Float; a.F = f; break;
                    case long[] ints: a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.AddRange(ints); break;
                    default: throw new ArgumentException($"attribute {name}: {value.GetType()}");
                }
                node.Attribute.Add(a);
            }
            Graph.Node.Add(node);
            return names;
        }

        private string Initializer(string name, TensorProto.Types.DataType type, long[] dims, ReadOnlySpan<byte> raw)
        {
            if (!initializers.Add(name)) return name;
            var t = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(raw) };
            t.Dims.AddRange(dims);
            Graph.Initializer.Add(t);
            return name;
        }

        private string Floats(string name, float[] data, params long[] dims) =>
            Initializer(name, TensorProto.Types.DataType.Float, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));

        public string Float(float value, string name) => Floats(name, [value]);

        public string Int64(long value, string name, bool scalar) =>
            Initializer(name, TensorProto.Types.DataType.Int64, scalar ? [] : [1], BitConverter.GetBytes(value));

        public string Int64s(long[] values, string name) =>
            Initializer(name, TensorProto.Types.DataType.Int64, [values.Length], System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));

        /// <summary>A parameter as its HF shape, under its HF name.</summary>
        public string Param(string name)
        {
            var (_, _, shape) = parameters[name];
            return Floats(name, parameters.Get(name), shape.Select(d => (long)d).ToArray());
        }

        /// <summary>x·Wᵀ + b for HF's Linear "name" (weight [out, in] stored transposed as "name.weight.T").</summary>
        public string Linear(string x, string name)
        {
            var (_, _, shape) = parameters[name + ".weight"];
            int rows = shape[0], cols = shape[1];
            var w = parameters.Get(name + ".weight");
            var t = new float[w.Length];
            for (int r = 0; r < rows; r++)
                for (int col = 0; col < cols; col++)
                    t[col * rows + r] = w[r * cols + col];
            string weight = Floats(name + ".weight.T", t, cols, rows);
            return Node("Add", [Node("MatMul", [x, weight]), Param(name + ".bias")]);
        }

        public string LayerNorm(string x, string name, float eps) =>
            Node("LayerNormalization", [x, Param(name + ".weight"), Param(name + ".bias")], ("axis", -1L), ("epsilon", eps));

        /// <summary>HF's hidden_act: "gelu" = x·Φ(x) through Erf, "gelu_new" the tanh form, "relu".</summary>
        public string Activation(string x, string act) => act switch
        {
            "gelu" => Node("Mul", [Node("Mul", [x, Float(0.5f, "half")]),
                Node("Add", [Float(1f, "one_float"), Node("Erf", [Node("Mul", [x, Float(0.70710678f, "inv_sqrt2")])])])]),
            "gelu_new" or "gelu_pytorch_tanh" => Node("Mul", [Node("Mul", [x, Float(0.5f, "half")]),
                Node("Add", [Float(1f, "one_float"), Node("Tanh", [Node("Mul", [Float(0.7978845608f, "sqrt_2_over_pi"),
                    Node("Add", [x, Node("Mul", [Float(0.044715f, "gelu_cubic"), Node("Pow", [x, Float(3f, "three")])])])])])])]),
            "relu" => Node("Relu", [x]),
            _ => throw new CheckpointException($"hidden_act {act} has no ONNX form here"),
        };

        /// <summary>Mean over the real tokens: Σ_s x·mask / Σ_s mask, [B, S, H] → [B, H].</summary>
        public string MaskedMean(string x, string keep)
        {
            string m = Node("Unsqueeze", [keep, Int64s([-1], "axis_last")]);
            return Node("Div", [Node("ReduceSum", [Node("Mul", [x, m]), Int64s([1], "axis_1")], ("keepdims", 0L)),
                Node("ReduceSum", [m, "axis_1"], ("keepdims", 0L))]);
        }

        /// <summary>γ·Σ_l softmax(w)_l·h_l over the embeddings and every layer's output.</summary>
        public string ScalarMix(IReadOnlyList<string> states)
        {
            string w = Node("Softmax", [Param("ilgpu_bert.scalar_mix.weights")], ("axis", 0L));
            string sum = "";
            for (int l = 0; l < states.Count; l++)
            {
                string term = Node("Mul", [states[l], Node("Gather", [w, Int64(l, $"layer_{l}", scalar: true)])]);
                sum = l == 0 ? term : Node("Add", [sum, term]);
            }
            return Node("Mul", [sum, Param("ilgpu_bert.scalar_mix.gamma")]);
        }
    }
}
