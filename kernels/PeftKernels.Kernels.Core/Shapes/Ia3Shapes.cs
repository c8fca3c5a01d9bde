// Shape checks of the column scaling y = x ⊙ l (l broadcast over rows: IA³'s activation scaling and
// DoRA's c ⊙ z), called by the CPU kernel (Ia3.ScaleColumns) and the GPU launcher (Ia3Kernels.ScaleColumns).
// Shapes: x, y, dy, dx [n, features]; l, dl [features]; dx and dl may be empty (skipped); x may be
// empty only when dl is (dx = dy ⊙ l does not read x).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the column scaling, shared by the CPU kernel and the GPU launcher.</summary>
internal static class Ia3Shapes
{
    public static void ScaleColumns(long x, long l, long y, int n, int features)
    {
        Dims(n, features);
        Check.Length("x", x, (long)n * features, "n·features");
        Check.Length("l", l, features, "features");
        Check.Length("y", y, (long)n * features, "n·features");
    }

    public static void ScaleColumnsBackward(long dy, long x, long l, long dx, long dl, int n, int features)
    {
        Dims(n, features);
        Check.Length("dy", dy, (long)n * features, "n·features");
        if (dl != 0 || x != 0)
        {
            Check.Length("x", x, (long)n * features, "n·features (x may be empty only when dl is empty)");
        }

        Check.Length("l", l, features, "features");
        Check.LengthOrEmpty("dx", dx, (long)n * features, "n·features, or empty to skip");
        Check.LengthOrEmpty("dl", dl, features, "features, or empty to skip");
    }

    private static void Dims(int n, int features)
    {
        Check.NonNegative(n, "n");
        Check.Positive(features, "features");
    }
}
