// Column sums of g [rows, cols], scaled, in double: out[j] = scale · Σ_i g[i, j]
// (the gradient of a bias row added to every row of y, e.g. s·Σ g for LoRA's bias_B).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision column sums: the specification of ColumnSums.</summary>
public static class ColumnSumsReference
{
    /// <summary>scale · Σ_i g[i, :] for g [rows, cols].</summary>
    public static double[] Sum(double[] g, int rows, int cols, double scale = 1.0)
    {
        var sums = new double[cols];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                sums[j] += g[(i * cols) + j];
            }
        }

        for (int j = 0; j < cols; j++)
        {
            sums[j] *= scale;
        }

        return sums;
    }
}
