// LoRA linear layer, forward and backward (W frozen), in double. Shapes (row-major):
//   x [n, in], w [out, in], bias [out] or empty, a [r, in], b [out, r], s = scale.
// Forward:   xd = drop(x)                   (dropout on the LoRA branch only)
//            h  = xd · aᵀ                   [n, r]
//            y  = x · wᵀ + bias + s · h · bᵀ [n, out]
// Backward, g = dL/dy:
//            db = s · gᵀ · h                [out, r]
//            dh = s · g · b                 [n, r]
//            da = dhᵀ · xd                  [r, in]
//            dx = g · w + mask ⊙ (dh · a) / (1 − p)   [n, in]
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision LoRA forward/backward: the specification of LoraMatmul.</summary>
public static class LoraMatmulReference
{
    /// <summary>Forward in double. <paramref name="bias"/> may be empty.</summary>
    public static (double[] Y, double[] H) Forward(double[] x, double[] w, double[] bias, double[] a, double[] b,
        double scale, int n, int inFeatures, int outFeatures, int rank, float dropout = 0f, ulong seed = 0)
    {
        double[] xd = DropoutReference.Apply(x, dropout, seed);
        double[] h = LinearReference.Forward(xd, a, [], n, inFeatures, rank);
        double[] baseY = LinearReference.Forward(x, w, [], n, inFeatures, outFeatures);
        double[] hb = LinearReference.Forward(h, b, [], n, rank, outFeatures);
        var y = new double[n * outFeatures];
        for (int i = 0; i < n; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                int index = (i * outFeatures) + o;
                y[index] = baseY[index] + (bias.Length == 0 ? 0 : bias[o]) + (scale * hb[index]);
            }
        }

        return (y, h);
    }

    /// <summary>Backward in double: returns dx, da, db.</summary>
    public static (double[] Dx, double[] Da, double[] Db) Backward(double[] dy, double[] x, double[] h, double[] w,
        double[] a, double[] b, double scale, int n, int inFeatures, int outFeatures, int rank,
        float dropout = 0f, ulong seed = 0)
    {
        double[] xd = DropoutReference.Apply(x, dropout, seed);
        double[] dh = Scaled(LinearReference.InputGradient(dy, b, n, rank, outFeatures), scale);
        double[] db = Scaled(LinearReference.WeightGradient(dy, h, n, rank, outFeatures), scale);
        double[] da = LinearReference.WeightGradient(dh, xd, n, inFeatures, rank);
        var dx = new double[n * inFeatures];
        uint threshold = DropoutReference.Threshold(dropout);
        double keepScale = dropout == 0 ? 1.0 : 1.0 / (1.0 - dropout);
        double[] baseDx = LinearReference.InputGradient(dy, w, n, inFeatures, outFeatures);
        double[] loraDx = LinearReference.InputGradient(dh, a, n, inFeatures, rank);
        for (int index = 0; index < dx.Length; index++)
        {
            bool keep = dropout == 0 || DropoutReference.Keep(seed, index, threshold);
            dx[index] = baseDx[index] + (keep ? loraDx[index] * keepScale : 0.0);
        }

        return (dx, da, db);
    }

    /// <summary>scale·v, in place.</summary>
    private static double[] Scaled(double[] v, double scale)
    {
        for (int k = 0; k < v.Length; k++)
        {
            v[k] = scale * v[k];
        }

        return v;
    }
}
