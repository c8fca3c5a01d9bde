// DoRA's weight norm in double: per output row i of V = w + s·b·a,
//   norm_i = ‖V_i,:‖₂ = sqrt(Σ_p (w_ip + s·Σ_q b_iq·a_qp)²)
// Shapes, row-major: w [out, in], a [r, in], b [out, r], norms [out].
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision DoRA row norms: the specification of DoraNorm.</summary>
public static class DoraNormReference
{
    /// <summary>norms[i] = ‖w[i, :] + scale·(b·a)[i, :]‖₂.</summary>
    public static double[] RowNorms(double[] w, double[] a, double[] b, double scale, int inFeatures, int outFeatures, int rank)
    {
        var norms = new double[outFeatures];
        for (int i = 0; i < outFeatures; i++)
        {
            double sum = 0;
            for (int p = 0; p < inFeatures; p++)
            {
                double v = w[(i * inFeatures) + p] + (scale * LowRank(a, b, i, p, inFeatures, rank));
                sum += v * v;
            }

            norms[i] = Math.Sqrt(sum);
        }

        return norms;
    }

    /// <summary>(b·a)[i, p].</summary>
    internal static double LowRank(double[] a, double[] b, int i, int p, int inFeatures, int rank)
    {
        double sum = 0;
        for (int q = 0; q < rank; q++)
        {
            sum += b[(i * rank) + q] * a[(q * inFeatures) + p];
        }

        return sum;
    }
}
