// Softmax cross-entropy in double. logits z [n, vocab] row-major, labels [n] with −100 = ignored row.
//   lse_i = log Σ_j exp(z_ij)   (shifted by the row max so it cannot overflow)
//   loss  = Σ_{i: label_i ≠ −100} (lse_i − z_{i,label_i})
// Backward of gradScale·loss: dz_ij = gradScale·(exp(z_ij − lse_i) − [j = label_i]), 0 on ignored rows.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision cross-entropy forward/backward: the specification of CrossEntropy.</summary>
public static class CrossEntropyReference
{
    /// <summary>Summed loss over non-ignored rows and the log-sum-exp of every row.</summary>
    public static (double Loss, double[] Lse) Forward(double[] logits, int[] labels, int n, int vocab)
    {
        var lse = new double[n];
        double loss = 0;
        for (int i = 0; i < n; i++)
        {
            lse[i] = LogSumExp(logits, i, vocab);
            if (labels[i] != -100)
            {
                loss += lse[i] - logits[(i * vocab) + labels[i]];
            }
        }

        return (loss, lse);
    }

    /// <summary>Gradient of gradScale·loss with respect to the logits.</summary>
    public static double[] Backward(double[] logits, int[] labels, double gradScale, int n, int vocab)
    {
        var grad = new double[n * vocab];
        for (int i = 0; i < n; i++)
        {
            if (labels[i] == -100)
            {
                continue;
            }

            double lse = LogSumExp(logits, i, vocab);
            for (int j = 0; j < vocab; j++)
            {
                double onehot = j == labels[i] ? 1 : 0;
                grad[(i * vocab) + j] = gradScale * (Math.Exp(logits[(i * vocab) + j] - lse) - onehot);
            }
        }

        return grad;
    }

    private static double LogSumExp(double[] logits, int i, int vocab)
    {
        double max = double.NegativeInfinity;
        for (int j = 0; j < vocab; j++)
        {
            max = Math.Max(max, logits[(i * vocab) + j]);
        }

        double sum = 0;
        for (int j = 0; j < vocab; j++)
        {
            sum += Math.Exp(logits[(i * vocab) + j] - max);
        }

        return max + Math.Log(sum);
    }
}
