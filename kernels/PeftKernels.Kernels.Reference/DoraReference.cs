// DoRA linear layer (docs/formats/methods.md#dora), forward and backward in double, W frozen, no dropout.
// Shapes, row-major: x [n, in], w [out, in], bias [out] or empty, a [r, in], b [out, r],
// m [out] (the magnitude), s = scale, norm [out].
//   norm = ‖w + s·b·a‖₂ row-wise (DoraNormReference), treated as a CONSTANT in backward
//          (PEFT detaches it), so the gradients below are those of the function with norm frozen.
//   h = x·aᵀ                 [n, r]
//   z = x·wᵀ + s·h·bᵀ        [n, out]
//   c = m / norm             [out]
//   y = c ⊙ z + bias         (the bias is not scaled)
// Backward, g = dL/dy, ĝ = g ⊙ c (row-broadcast):
//   dm_o = Σ_i g_io·z_io / norm_o
//   db   = s·ĝᵀ·h            [out, r]
//   dh   = s·ĝ·b             [n, r]
//   da   = dhᵀ·x             [r, in]
//   dx   = ĝ·w + dh·a        [n, in]
// Merge: w ← c[:, None] ⊙ (w + s·b·a).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision DoRA forward/backward with the norm held constant.</summary>
public static class DoraReference
{
    /// <summary>y = (m / norm) ⊙ (x·wᵀ + s·x·aᵀ·bᵀ) + bias with the given norms (from <see cref="DoraNormReference.RowNorms"/>).</summary>
    public static double[] Forward(double[] x, double[] w, double[] bias, double[] a, double[] b, double[] m, double[] norms,
        double scale, int n, int inFeatures, int outFeatures, int rank)
    {
        var (z, _) = LoraMatmulReference.Forward(x, w, [], a, b, scale, n, inFeatures, outFeatures, rank);
        var y = new double[n * outFeatures];
        for (int i = 0; i < n; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                y[(i * outFeatures) + o] = (m[o] / norms[o] * z[(i * outFeatures) + o]) + (bias.Length == 0 ? 0 : bias[o]);
            }
        }

        return y;
    }

    /// <summary>Backward with the norm constant: returns dx, da, db and dm.</summary>
    public static (double[] Dx, double[] Da, double[] Db, double[] Dm) Backward(double[] dy, double[] x, double[] w, double[] a, double[] b,
        double[] m, double[] norms, double scale, int n, int inFeatures, int outFeatures, int rank)
    {
        var (z, h) = LoraMatmulReference.Forward(x, w, [], a, b, scale, n, inFeatures, outFeatures, rank);
        var gHat = new double[n * outFeatures];
        var dm = new double[outFeatures];
        for (int o = 0; o < outFeatures; o++)
        {
            double sum = 0;
            for (int i = 0; i < n; i++)
            {
                double g = dy[(i * outFeatures) + o];
                sum += g * z[(i * outFeatures) + o];
                gHat[(i * outFeatures) + o] = g * m[o] / norms[o];
            }

            dm[o] = sum / norms[o];
        }

        var (dx, da, db) = LoraMatmulReference.Backward(gHat, x, h, w, a, b, scale, n, inFeatures, outFeatures, rank);
        return (dx, da, db, dm);
    }

    /// <summary>The merged weight (m / norm)[:, None] ⊙ (w + s·b·a), [out, in].</summary>
    public static double[] Merge(double[] w, double[] a, double[] b, double[] m, double scale, int inFeatures, int outFeatures, int rank)
    {
        var norms = DoraNormReference.RowNorms(w, a, b, scale, inFeatures, outFeatures, rank);
        var merged = new double[outFeatures * inFeatures];
        for (int o = 0; o < outFeatures; o++)
        {
            for (int p = 0; p < inFeatures; p++)
            {
                double v = w[(o * inFeatures) + p] + (scale * DoraNormReference.LowRank(a, b, o, p, inFeatures, rank));
                merged[(o * inFeatures) + p] = m[o] / norms[o] * v;
            }
        }

        return merged;
    }
}
