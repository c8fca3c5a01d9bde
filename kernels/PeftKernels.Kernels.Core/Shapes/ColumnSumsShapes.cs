// Shape checks of the column sums dst[j] (+)= scale·Σ_i g[i, j] (the gradient of a bias row added to
// every row), called by the CPU kernel (ColumnSums) and the GPU launcher (ColumnSumsKernels).
// Shapes: g [rows, cols], dst [cols]; scale finite.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the column sums, shared by the CPU kernel and the GPU launcher.</summary>
internal static class ColumnSumsShapes
{
    public static void Sum(long g, long dst, int rows, int cols, float scale)
    {
        Check.NonNegative(rows, "rows");
        Check.Positive(cols, "cols");
        Check.Length("g", g, (long)rows * cols, "rows·cols");
        Check.Length("dst", dst, cols, "cols");
        Check.Require(float.IsFinite(scale), nameof(scale), $"scale must be finite, got {scale}.");
    }
}
