// Segmented multi-adapter LoRA in double: the specification of SegmentedLora (SGMV and BGMV).
// x [n, in], y [n, out]; adapter k: a[k] [r_k, in], b[k] [out, r_k] (PEFT layout, ranks may differ).
// Per row i with adapter a(i) ≠ −1 and scale s_i:  y_i += s_i · B_a(i) · (A_a(i) · x_i); rows with
// a(i) = −1 are left as they are. SGMV gives a(i) and s_i per segment of rows [starts[t], starts[t + 1]).
// Mag also returns |s_i| · |B|·(|A|·|x_i|) per output, the scale of the fp32 rounding error.
// SgmvBackward (training, adapter t on segment t, no dropout), g = dL/dy, h_i = A_t·x_i:
//   dB_t = s_t·Σ_{i∈t} g_i·h_iᵀ;  dh_i = s_t·B_tᵀ·g_i;  dA_t = Σ_{i∈t} dh_i·x_iᵀ;  dx_i = A_tᵀ·dh_i (0 outside segments).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision segmented LoRA: the specification of SegmentedLora.</summary>
public static class SegmentedLoraReference
{
    /// <summary>Returns y (a copy with each row's adapter added) and the magnitude |s|·|B|·|A|·|x| per element.</summary>
    public static (double[] Y, double[] Mag) Bgmv(double[] x, int[] adapterOfRow, double[] scales, double[][] a, double[][] b, double[] y,
        int n, int inFeatures, int outFeatures)
    {
        var result = (double[])y.Clone();
        var mag = new double[y.Length];
        for (int i = 0; i < n; i++)
        {
            int k = adapterOfRow[i];
            if (k < 0)
            {
                continue;
            }

            int rank = a[k].Length / inFeatures;
            var h = new double[rank];
            var hAbs = new double[rank];
            for (int q = 0; q < rank; q++)
            {
                for (int p = 0; p < inFeatures; p++)
                {
                    double term = a[k][(q * inFeatures) + p] * x[(i * inFeatures) + p];
                    h[q] += term;
                    hAbs[q] += Math.Abs(term);
                }
            }

            for (int o = 0; o < outFeatures; o++)
            {
                double sum = 0, sumAbs = 0;
                for (int q = 0; q < rank; q++)
                {
                    double w = b[k][(o * rank) + q];
                    sum += w * h[q];
                    sumAbs += Math.Abs(w) * hAbs[q];
                }

                result[(i * outFeatures) + o] += scales[i] * sum;
                mag[(i * outFeatures) + o] = Math.Abs(scales[i]) * sumAbs;
            }
        }

        return (result, mag);
    }

    /// <summary>SGMV as BGMV: segment t's adapter and scale on each of its rows, −1 on rows outside every segment.</summary>
    public static (double[] Y, double[] Mag) Sgmv(double[] x, int[] segmentStarts, int[] segmentAdapters, double[] segmentScales,
        double[][] a, double[][] b, double[] y, int n, int inFeatures, int outFeatures)
    {
        var adapterOfRow = Enumerable.Repeat(-1, n).ToArray();
        var scales = new double[n];
        for (int t = 0; t < segmentAdapters.Length; t++)
        {
            for (int i = segmentStarts[t]; i < segmentStarts[t + 1]; i++)
            {
                adapterOfRow[i] = segmentAdapters[t];
                scales[i] = segmentScales[t];
            }
        }

        return Bgmv(x, adapterOfRow, scales, a, b, y, n, inFeatures, outFeatures);
    }

    /// <summary>The backward of SGMV with adapter t on segment t: dx [n, in] (0 outside the segments), dA_t [r_t, in], dB_t [out, r_t].</summary>
    public static (double[] Dx, double[][] Da, double[][] Db) SgmvBackward(double[] g, double[] x, int[] segmentStarts, double[] segmentScales,
        double[][] a, double[][] b, int n, int inFeatures, int outFeatures)
    {
        var dx = new double[n * inFeatures];
        var da = a.Select(m => new double[m.Length]).ToArray();
        var db = b.Select(m => new double[m.Length]).ToArray();
        for (int t = 0; t < a.Length; t++)
        {
            int rank = a[t].Length / inFeatures;
            double s = segmentScales[t];
            for (int i = segmentStarts[t]; i < segmentStarts[t + 1]; i++)
            {
                var h = new double[rank];
                var dh = new double[rank];
                for (int q = 0; q < rank; q++)
                {
                    for (int p = 0; p < inFeatures; p++)
                    {
                        h[q] += a[t][(q * inFeatures) + p] * x[(i * inFeatures) + p];
                    }

                    for (int o = 0; o < outFeatures; o++)
                    {
                        dh[q] += s * b[t][(o * rank) + q] * g[(i * outFeatures) + o];
                    }
                }

                for (int o = 0; o < outFeatures; o++)
                {
                    for (int q = 0; q < rank; q++)
                    {
                        db[t][(o * rank) + q] += s * g[(i * outFeatures) + o] * h[q];
                    }
                }

                for (int q = 0; q < rank; q++)
                {
                    for (int p = 0; p < inFeatures; p++)
                    {
                        da[t][(q * inFeatures) + p] += dh[q] * x[(i * inFeatures) + p];
                        dx[(i * inFeatures) + p] += a[t][(q * inFeatures) + p] * dh[q];
                    }
                }
            }
        }

        return (dx, da, db);
    }
}
