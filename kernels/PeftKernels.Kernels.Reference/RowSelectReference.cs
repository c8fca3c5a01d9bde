// Row gather and scatter in double: gather y[j] = x[rows[j]]; scatter y[rows[j]] += x[j] into zeros.
// Each is the other's adjoint (the backward of one is the other).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision row gather / scatter: the specification of RowSelect.</summary>
public static class RowSelectReference
{
    /// <summary>y [rows, cols] = x[rows].</summary>
    public static double[] Gather(double[] x, int[] rows, int cols) =>
        rows.SelectMany(r => x.Skip(r * cols).Take(cols)).ToArray();

    /// <summary>y [n, cols]: zeros, then y[rows[j]] += x[j].</summary>
    public static double[] Scatter(double[] x, int[] rows, int n, int cols)
    {
        var y = new double[n * cols];
        for (int j = 0; j < rows.Length; j++)
        {
            for (int c = 0; c < cols; c++)
            {
                y[(rows[j] * cols) + c] += x[(j * cols) + c];
            }
        }

        return y;
    }
}
