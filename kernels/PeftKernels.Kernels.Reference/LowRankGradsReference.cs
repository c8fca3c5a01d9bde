// A LoRA's two backward products that read the output gradient, in double (the specification of
// Kernels.Cpu.LowRankGrads): g [m, out], h [m, r], B [out, r], scale s, all row-major:
//   dB [out, r] = s · gᵀ · h        dh [m, r] = s · g · B
// and the gradient of A (Kernels.Cpu.LowRankGrads.ComputeA): u [m, in], dA [r, in] = dhᵀ · u.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision dB = s·gᵀ·h and dh = s·g·B.</summary>
public static class LowRankGradsReference
{
    /// <summary>dB [out, r] and dh [m, r] in double.</summary>
    public static (double[] Db, double[] Dh) Compute(double[] g, double[] h, double[] b, double scale, int m, int outFeatures, int rank)
    {
        var db = new double[outFeatures * rank];
        var dh = new double[m * rank];
        for (int i = 0; i < m; i++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                double gv = scale * g[(i * outFeatures) + o];
                for (int c = 0; c < rank; c++)
                {
                    db[(o * rank) + c] += gv * h[(i * rank) + c];
                    dh[(i * rank) + c] += gv * b[(o * rank) + c];
                }
            }
        }

        return (db, dh);
    }

    /// <summary>dA [r, in] = dhᵀ·u in double.</summary>
    public static double[] ComputeA(double[] dh, double[] u, int m, int inFeatures, int rank)
    {
        var da = new double[rank * inFeatures];
        for (int i = 0; i < m; i++)
        {
            for (int c = 0; c < rank; c++)
            {
                double d = dh[(i * rank) + c];
                for (int j = 0; j < inFeatures; j++)
                {
                    da[(c * inFeatures) + j] += d * u[(i * inFeatures) + j];
                }
            }
        }

        return da;
    }
}
