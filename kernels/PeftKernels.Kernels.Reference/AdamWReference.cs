// AdamW (torch.optim.AdamW) in double, one step t ≥ 1, element-wise:
//   p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
//   p ← p − (lr/(1 − β1^t)) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)
// SumOfSquares: Σ x² in double, in index order.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision AdamW step and sum of squares: the specification of AdamW.</summary>
public static class AdamWReference
{
    /// <summary>One AdamW step in double, updating param, m and v in place.</summary>
    public static void Step(double[] param, double[] grad, double[] m, double[] v, double lr, double beta1, double beta2,
        double eps, double weightDecay, int step)
    {
        double bc1 = 1 - Math.Pow(beta1, step), bc2 = 1 - Math.Pow(beta2, step);
        for (int i = 0; i < param.Length; i++)
        {
            param[i] *= 1 - (lr * weightDecay);
            m[i] = (beta1 * m[i]) + ((1 - beta1) * grad[i]);
            v[i] = (beta2 * v[i]) + ((1 - beta2) * grad[i] * grad[i]);
            param[i] -= lr / bc1 * m[i] / ((Math.Sqrt(v[i]) / Math.Sqrt(bc2)) + eps);
        }
    }

    /// <summary>Σ x² in double.</summary>
    public static double SumOfSquares(IEnumerable<float> x) => x.Sum(value => (double)value * value);
}
