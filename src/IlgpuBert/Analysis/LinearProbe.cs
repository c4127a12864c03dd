// A linear probe: multinomial logistic regression on frozen representations, trained by full-batch
// gradient descent with Adam on the host (probing sets are small). Its accuracy per layer says how
// linearly a property is encoded there (Tenney et al. 2019; "A Primer in BERTology" §3).
namespace IlgpuBert.Analysis;

public static class LinearProbe
{
    /// <summary>Trains on (features, labels) and returns accuracy on the evaluation set.</summary>
    public static double TrainAndEvaluate(float[][] trainX, int[] trainY, float[][] evalX, int[] evalY, int classes,
        int epochs = 200, double lr = 0.05, double l2 = 1e-4, int seed = 0)
    {
        if (trainX.Length == 0 || evalX.Length == 0) throw new ArgumentException("the probe needs training and evaluation examples");
        int d = trainX[0].Length;
        // Standardise with training statistics so one learning rate fits every layer.
        var mean = new double[d];
        var std = new double[d];
        foreach (var x in trainX) for (int j = 0; j < d; j++) mean[j] += x[j];
        for (int j = 0; j < d; j++) mean[j] /= trainX.Length;
        foreach (var x in trainX) for (int j = 0; j < d; j++) std[j] += (x[j] - mean[j]) * (x[j] - mean[j]);
        for (int j = 0; j < d; j++) std[j] = Math.Sqrt(std[j] / trainX.Length) + 1e-6;
        double[] Norm(float[] x) => x.Select((v, j) => (v - mean[j]) / std[j]).ToArray();
        var tx = trainX.Select(Norm).ToArray();
        var w = new double[classes, d + 1];
        var m = new double[classes, d + 1];
        var v = new double[classes, d + 1];
        var rng = new Random(seed);
        for (int c = 0; c < classes; c++) for (int j = 0; j < d; j++) w[c, j] = (rng.NextDouble() - 0.5) * 0.01;
        var logits = new double[classes];
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            var grad = new double[classes, d + 1];
            for (int n = 0; n < tx.Length; n++)
            {
                Softmax(w, tx[n], logits);
                for (int c = 0; c < classes; c++)
                {
                    double g = (logits[c] - (c == trainY[n] ? 1 : 0)) / tx.Length;
                    for (int j = 0; j < d; j++) grad[c, j] += g * tx[n][j];
                    grad[c, d] += g;
                }
            }
            for (int c = 0; c < classes; c++)
                for (int j = 0; j <= d; j++)
                {
                    double g = grad[c, j] + (j < d ? l2 * w[c, j] : 0);
                    m[c, j] = 0.9 * m[c, j] + 0.1 * g;
                    v[c, j] = 0.999 * v[c, j] + 0.001 * g * g;
                    double mh = m[c, j] / (1 - Math.Pow(0.9, epoch)), vh = v[c, j] / (1 - Math.Pow(0.999, epoch));
                    w[c, j] -= lr * mh / (Math.Sqrt(vh) + 1e-8);
                }
        }
        int correct = 0;
        for (int n = 0; n < evalX.Length; n++)
        {
            Softmax(w, Norm(evalX[n]), logits);
            int best = 0;
            for (int c = 1; c < classes; c++) if (logits[c] > logits[best]) best = c;
            if (best == evalY[n]) correct++;
        }
        return correct / (double)evalX.Length;
    }

    private static void Softmax(double[,] w, double[] x, double[] output)
    {
        int classes = output.Length, d = x.Length;
        double max = double.NegativeInfinity;
        for (int c = 0; c < classes; c++)
        {
            double z = w[c, d];
            for (int j = 0; j < d; j++) z += w[c, j] * x[j];
            output[c] = z;
            max = Math.Max(max, z);
        }
        double sum = 0;
        for (int c = 0; c < classes; c++) sum += output[c] = Math.Exp(output[c] - max);
        for (int c = 0; c < classes; c++) output[c] /= sum;
    }
}
