// RMSNorm (HF LlamaRMSNorm) in double. Shapes, row-major: x, y, dy, dx [n, dim]; weight, dweight [dim]; rstd [n].
// Forward:   rstd_i = 1 / sqrt(mean_j(x_ij²) + eps)
//            y_ij   = w_j · x_ij · rstd_i
// Backward, g = dL/dy (∂rstd_i/∂x_ik = −rstd_i³·x_ik/dim):
//            dx_ik  = rstd_i·w_k·g_ik − x_ik·rstd_i³·(1/dim)·Σ_j w_j·g_ij·x_ij
//            dw_j   = Σ_i g_ij·x_ij·rstd_i
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision RMSNorm forward/backward: the specification of RmsNorm.</summary>
public static class RmsNormReference
{
    /// <summary>Forward in double: y and the per-row rstd.</summary>
    public static (double[] Y, double[] Rstd) Forward(double[] x, double[] weight, double eps, int n, int dim)
    {
        var y = new double[n * dim];
        var rstd = new double[n];
        for (int i = 0; i < n; i++)
        {
            rstd[i] = Rstd(x, eps, i, dim);
            for (int j = 0; j < dim; j++)
            {
                y[(i * dim) + j] = weight[j] * x[(i * dim) + j] * rstd[i];
            }
        }

        return (y, rstd);
    }

    /// <summary>Backward in double (rstd recomputed from x): returns dx and dweight.</summary>
    public static (double[] Dx, double[] Dweight) Backward(double[] dy, double[] x, double[] weight, double eps, int n, int dim)
    {
        var dx = new double[n * dim];
        var dw = new double[dim];
        for (int i = 0; i < n; i++)
        {
            double r = Rstd(x, eps, i, dim);
            double dot = 0;
            for (int j = 0; j < dim; j++)
            {
                dot += weight[j] * dy[(i * dim) + j] * x[(i * dim) + j];
            }

            for (int k = 0; k < dim; k++)
            {
                int at = (i * dim) + k;
                dx[at] = (r * weight[k] * dy[at]) - (x[at] * r * r * r * dot / dim);
                dw[k] += dy[at] * x[at] * r;
            }
        }

        return (dx, dw);
    }

    private static double Rstd(double[] x, double eps, int i, int dim)
    {
        double sum = 0;
        for (int j = 0; j < dim; j++)
        {
            sum += x[(i * dim) + j] * x[(i * dim) + j];
        }

        return 1.0 / Math.Sqrt((sum / dim) + eps);
    }
}
