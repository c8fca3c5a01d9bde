// The dense linear map y = x·wᵀ + bias in double, shared by the references that need one (Ia3Reference,
// LoraBranchReference). Shapes, row-major: x [n, in], w [out, in], bias [out] or empty (no bias), y [n, out].
// Each y[i, o] sums bias[o] then x[i, p]·w[o, p] for p in order: a plain loop, the spec of a matmul.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision x·wᵀ + bias, shared by the references.</summary>
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
}
