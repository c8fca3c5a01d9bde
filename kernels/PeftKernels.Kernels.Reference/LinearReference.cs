// The dense linear map y = x·wᵀ + bias and its gradients dx = g·w, dw = gᵀ·x in double, shared by the
// references that need them (Ia3Reference, LoraBranchReference, LoraMatmulReference). Shapes, row-major:
// x, dx [n, in], w, dw [out, in], bias [out] or empty (no bias), y, g [n, out]. Each y[i, o] sums bias[o]
// (or 0) then x[i, p]·w[o, p] for p in order; each dx[i, p] sums g[i, o]·w[o, p] from 0 for o in order;
// each dw[o, p] sums g[i, o]·x[i, p] from 0 for i in order.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision x·wᵀ + bias, g·w and gᵀ·x, shared by the references.</summary>
internal static class LinearReference
{
    /// <summary>x·wᵀ + bias: [n, out]; <paramref name="bias"/> may be empty.</summary>
    public static double[] Forward(double[] x, double[] w, double[] bias, int n, int inFeatures, int outFeatures)
    {
        var y = new double[n * outFeatures];
        for (int i = 0; i < n; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                double sum = bias.Length == 0 ? 0 : bias[o];
                for (int p = 0; p < inFeatures; p++)
                {
                    sum += x[(i * inFeatures) + p] * w[(o * inFeatures) + p];
                }

                y[(i * outFeatures) + o] = sum;
            }
        }

        return y;
    }

    /// <summary>g·w: [n, in] from g [n, out] and w [out, in].</summary>
    public static double[] InputGradient(double[] g, double[] w, int n, int inFeatures, int outFeatures)
    {
        var result = new double[n * inFeatures];
        for (int i = 0; i < n; i++)
        {
            for (int p = 0; p < inFeatures; p++)
            {
                double sum = 0;
                for (int o = 0; o < outFeatures; o++)
                {
                    sum += g[(i * outFeatures) + o] * w[(o * inFeatures) + p];
                }

                result[(i * inFeatures) + p] = sum;
            }
        }

        return result;
    }

    /// <summary>gᵀ·x: [out, in] from g [n, out] and x [n, in].</summary>
    public static double[] WeightGradient(double[] g, double[] x, int n, int inFeatures, int outFeatures)
    {
        var result = new double[outFeatures * inFeatures];
        for (int o = 0; o < outFeatures; o++)
        {
            for (int p = 0; p < inFeatures; p++)
            {
                double sum = 0;
                for (int i = 0; i < n; i++)
                {
                    sum += g[(i * outFeatures) + o] * x[(i * inFeatures) + p];
                }

                result[(o * inFeatures) + p] = sum;
            }
        }

        return result;
    }
}
