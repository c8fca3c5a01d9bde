// One LoRA branch on the rows R of a Linear output, forward and backward, in double. x [n, in],
// R = rows (distinct) or all n rows, m = |R|, xR = x[R, :] [m, in], a [r, in], b [out, r], s = scale,
// bias [out] or empty (the caller's s·bias_B); drop() is DropoutReference over xR's storage index.
// Forward:   u = drop(xR);  h = u · aᵀ [m, r];  y[R, :] += s · h · bᵀ + bias
// Backward, gR = dy[R, :]:
//            db = s · gRᵀ · h [out, r];  dh = s · gR · b [m, r];  da = dhᵀ · u [r, in]
//            dx[R, :] = mask ⊙ (dh · a) / (1 − p), 0 on the other rows [n, in]
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision LoRA branch on a row subset: the specification of LoraBranch.</summary>
public static class LoraBranchReference
{
    /// <summary>Returns y (a copy of <paramref name="y"/> with the branch added on the rows R) and h [m, r].</summary>
    public static (double[] Y, double[] H) Forward(double[] x, int[]? rows, double[] a, double[] b, double[] bias, double scale, double[] y,
        int n, int inFeatures, int outFeatures, int rank, float dropout = 0f, ulong seed = 0)
    {
        int[] r = rows ?? [.. Enumerable.Range(0, n)];
        int m = r.Length;
        double[] u = DropoutReference.Apply(GatherRows(x, r, inFeatures), dropout, seed);
        double[] h = LinearReference.Forward(u, a, [], m, inFeatures, rank);
        double[] hb = LinearReference.Forward(h, b, [], m, rank, outFeatures);
        var result = (double[])y.Clone();
        for (int i = 0; i < m; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                result[(r[i] * outFeatures) + o] += (scale * hb[(i * outFeatures) + o]) + (bias.Length == 0 ? 0 : bias[o]);
            }
        }

        return (result, h);
    }

    /// <summary>dx [n, in] (zero outside R), da [r, in] and db [out, r].</summary>
    public static (double[] Dx, double[] Da, double[] Db) Backward(double[] dy, double[] x, int[]? rows, double[] h, double[] a, double[] b,
        double scale, int n, int inFeatures, int outFeatures, int rank, float dropout = 0f, ulong seed = 0)
    {
        int[] r = rows ?? [.. Enumerable.Range(0, n)];
        int m = r.Length;
        double[] gr = GatherRows(dy, r, outFeatures);
        double[] u = DropoutReference.Apply(GatherRows(x, r, inFeatures), dropout, seed);
        var db = new double[outFeatures * rank];
        var dh = new double[m * rank];
        for (int i = 0; i < m; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                double g = gr[(i * outFeatures) + o];
                for (int q = 0; q < rank; q++)
                {
                    db[(o * rank) + q] += scale * g * h[(i * rank) + q];
                    dh[(i * rank) + q] += scale * g * b[(o * rank) + q];
                }
            }
        }

        var da = new double[rank * inFeatures];
        var dxr = new double[m * inFeatures];
        for (int i = 0; i < m; i++)
        {
            for (int q = 0; q < rank; q++)
            {
                double d = dh[(i * rank) + q];
                for (int p = 0; p < inFeatures; p++)
                {
                    da[(q * inFeatures) + p] += d * u[(i * inFeatures) + p];
                    dxr[(i * inFeatures) + p] += d * a[(q * inFeatures) + p];
                }
            }
        }

        dxr = DropoutReference.Apply(dxr, dropout, seed);
        var dx = new double[n * inFeatures];
        for (int i = 0; i < m; i++)
        {
            Array.Copy(dxr, i * inFeatures, dx, r[i] * inFeatures, inFeatures);
        }

        return (dx, da, db);
    }

    private static double[] GatherRows(double[] source, int[] rows, int cols)
    {
        var result = new double[rows.Length * cols];
        for (int i = 0; i < rows.Length; i++)
        {
            Array.Copy(source, rows[i] * cols, result, i * cols, cols);
        }

        return result;
    }
}
