// Shape checks of the scaling by one scalar, y = s·x (Functional.Scale; the host body is TensorPrimitives, the GPU
// launcher ScaleKernels): s has one element, y and dx as long as x, ds one element (or empty: skipped).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the one-scalar scaling.</summary>
internal static class ScaleShapes
{
    public static void Forward(long x, long s, long y)
    {
        Check.Length("s", s, 1, "one scalar");
        Check.Length("y", y, x, "x.Length");
    }

    /// <summary>dx and ds may be empty (skipped); x may be empty when ds is.</summary>
    public static void Backward(long dy, long x, long s, long dx, long ds)
    {
        Check.Length("s", s, 1, "one scalar");
        Check.LengthOrEmpty("dx", dx, dy, "dy.Length");
        Check.LengthOrEmpty("ds", ds, 1, "one scalar");
        if (ds != 0)
        {
            Check.Length("x", x, dy, "dy.Length");
        }
    }
}
