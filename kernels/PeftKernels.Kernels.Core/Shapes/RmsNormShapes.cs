// Shape checks of RMSNorm, called by the CPU kernel (RmsNorm) and the GPU launcher (RmsNormKernels).
// Shapes: x, y, dy, dx [n, dim]; weight, dweight [dim]; rstd [n]; dx and dweight may be empty (skipped);
// eps finite and ≥ 0.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of RMSNorm, shared by the CPU kernel and the GPU launcher.</summary>
internal static class RmsNormShapes
{
    public static void Forward(long x, long weight, long y, long rstd, int n, int dim, float eps)
    {
        Check.NonNegative(n, "n");
        Check.Positive(dim, "dim");
        Check.Require(eps >= 0f && float.IsFinite(eps), nameof(eps), $"eps must be finite and >= 0, got {eps}.");
        Check.Length("x", x, (long)n * dim, "n·dim");
        Check.Length("weight", weight, dim, "dim");
        Check.Length("y", y, (long)n * dim, "n·dim");
        Check.Length("rstd", rstd, n, "n");
    }

    public static void Backward(long dy, long x, long weight, long rstd, long dx, long dweight, int n, int dim)
    {
        Check.NonNegative(n, "n");
        Check.Positive(dim, "dim");
        Check.Length("dy", dy, (long)n * dim, "n·dim");
        Check.Length("x", x, (long)n * dim, "n·dim");
        Check.Length("weight", weight, dim, "dim");
        Check.Length("rstd", rstd, n, "n");
        Check.LengthOrEmpty("dx", dx, (long)n * dim, "n·dim, or empty to skip");
        Check.LengthOrEmpty("dweight", dweight, dim, "dim, or empty to skip");
    }
}
