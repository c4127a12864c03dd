// Numeracy probes (Wallace et al. 2019) on numbers whose embedding carries a known linear code: the
// decoding probe recovers the value (inside the range and beyond it) and the list maximum is found;
// on random embeddings of the same tokens neither is. The ridge solver against a direct solution.
using IlgpuBert.Analysis;
using IlgpuBert.Model;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

namespace IlgpuBert.Tests;

public class NumeracyTests : IDisposable
{
    private readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void A_linear_code_in_the_embeddings_is_decoded_and_random_embeddings_are_not()
    {
        const int range = 100, h = 32;
        using var device = BertDevice.Open(DeviceSpec.Parse("cpu"));
        // Every integer below 2·range is one word piece.
        File.WriteAllLines(dir.File("vocab.txt"), WordPieceTrainer.SpecialTokens.Concat(Enumerable.Range(0, 2 * range).Select(i => i.ToString())));
        var encoder = BertTextEncoder.FromVocab(dir.File("vocab.txt"));
        int vocab = encoder.Vocabulary.Count;
        var config = BertConfig.ForSize("tiny", vocab) with { HiddenSize = h, NumAttentionHeads = 2, IntermediateSize = 64, MaxPositionEmbeddings = 8 };
        using var coded = new BertForPreTraining(device, config);
        coded.Parameters.Initialize(1);
        // Token n: ±1 in a fixed pattern (the same for every token, so LayerNorm's statistics hardly
        // move), and ±0.3·(n − range)/range in two dimensions: after LayerNorm still linear in n.
        var word = new float[vocab * h];
        for (int t = 0; t < vocab; t++)
        {
            for (int j = 2; j < h; j++) word[t * h + j] = j % 2 == 0 ? 1f : -1f;
            if (int.TryParse(encoder.Vocabulary[t], out int n))
            {
                float code = 0.3f * (n - range) / range;
                (word[t * h], word[t * h + 1]) = (code, -code);
            }
        }
        coded.Parameters.Set("bert.embeddings.word_embeddings.weight", word);
        coded.Parameters.Set("bert.embeddings.position_embeddings.weight", new float[config.MaxPositionEmbeddings * h]);
        coded.Parameters.Set("bert.embeddings.token_type_embeddings.weight", new float[config.TypeVocabSize * h]);
        var layers = Numeracy.Run(new Analyzer(coded, encoder, [.. encoder.Vocabulary]), encoder, range, seed: 3);
        Assert.Equal(config.NumHiddenLayers + 1, layers.Count);
        var embeddings = layers[0];
        Assert.True(embeddings.InterpolationRmse < 0.05 * embeddings.MeanPredictorRmse, $"interpolation RMSE {embeddings.InterpolationRmse} against {embeddings.MeanPredictorRmse}");
        Assert.True(embeddings.ExtrapolationRmse < 0.1 * embeddings.MeanPredictorExtrapolationRmse, $"extrapolation RMSE {embeddings.ExtrapolationRmse} against {embeddings.MeanPredictorExtrapolationRmse}");
        Assert.True(embeddings.ListMaxAccuracy > 0.9, $"list maximum {embeddings.ListMaxAccuracy}");

        using var random = new BertForPreTraining(device, config);
        random.Parameters.Initialize(2);
        var control = Numeracy.Run(new Analyzer(random, encoder, [.. encoder.Vocabulary]), encoder, range, seed: 3)[0];
        Assert.True(control.InterpolationRmse > 0.7 * control.MeanPredictorRmse, $"random: interpolation RMSE {control.InterpolationRmse} against {control.MeanPredictorRmse}");
        Assert.True(control.ListMaxAccuracy < 0.5, $"random: list maximum {control.ListMaxAccuracy}");
    }

    [Fact]
    public void The_ridge_solution_satisfies_its_normal_equations_and_the_numbers_are_split_as_stated()
    {
        var rng = new Random(4);
        var x = Enumerable.Range(0, 40).Select(_ => Enumerable.Range(0, 6).Select(_ => rng.NextDouble() * 2 - 1).ToArray()).ToArray();
        var y = x.Select(r => 3 * r[0] - 2 * r[5] + 7 + 0.01 * rng.NextDouble()).ToArray();
        var w = Numeracy.FitRidge(x, y, out double bias);
        Assert.Equal(y.Average(), bias, 12);
        // (XᵀX + λ·n·I)·w = Xᵀ(y − ȳ), checked directly in double.
        for (int j = 0; j < 6; j++)
        {
            double lhs = Numeracy.Ridge * x.Length * w[j], rhs = 0;
            for (int i = 0; i < x.Length; i++)
            {
                lhs += x[i][j] * x[i].Select((v, k) => v * w[k]).Sum();
                rhs += x[i][j] * (y[i] - bias);
            }
            Assert.Equal(rhs, lhs, 9);
        }
        var (train, held, beyond) = Numeracy.Numbers(100, 5);
        Assert.Equal(Enumerable.Range(0, 100), train.Concat(held).Order());
        Assert.Equal(80, train.Length);
        Assert.All(beyond, v => Assert.InRange(v, 100, 199));
        Assert.Throws<ArgumentException>(() => Numeracy.Numbers(10, 0));
    }
}
