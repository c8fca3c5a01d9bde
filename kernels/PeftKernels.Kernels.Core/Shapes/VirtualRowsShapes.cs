// Shape checks of prompt learning's virtual rows (PrependRows / DropLeadingRows) and of the ReLU / tanh of its
// encoders, called by the CPU kernel (VirtualRows) and the GPU launcher (VirtualRowsKernels), so both reject a bad
// argument with the same message. Row-major: p [n, width] (a window of d columns from column c is read),
// x [batch·t, d], y [batch·(n+t), d]; DropLeading x [batch·(n+t), d] → y [batch·t, d].
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the virtual-row copies, shared by the CPU kernel and the GPU launcher.</summary>
internal static class VirtualRowsShapes
{
    public static void Prepend(long p, long x, long y, int batch, int n, int t, int width, int column, int d)
    {
        if (batch <= 0 || n < 0 || t < 0 || d <= 0 || column < 0 || column + d > width)
        {
            throw new ArgumentException($"PrependRows: bad dims batch {batch}, n {n}, t {t}, window [{column}, {column + d}) of width {width}.");
        }

        if (p != (long)n * width || x != (long)batch * t * d || y != (long)batch * (n + t) * d)
        {
            throw new ArgumentException($"PrependRows: p {p}, x {x}, y {y} elements do not fit batch {batch}, n {n}, t {t}, width {width}, d {d}.");
        }
    }

    /// <summary>dp and dx may be empty (skipped).</summary>
    public static void PrependBackward(long dy, long dp, long dx, int batch, int n, int t, int width, int column, int d)
    {
        if (batch <= 0 || n < 0 || t < 0 || d <= 0 || column < 0 || column + d > width
            || dy != (long)batch * (n + t) * d || (dp != 0 && dp != (long)n * width) || (dx != 0 && dx != (long)batch * t * d))
        {
            throw new ArgumentException($"PrependRows backward: dy {dy}, dp {dp}, dx {dx} do not fit batch {batch}, n {n}, t {t}, width {width}, d {d}.");
        }
    }

    public static void DropLeading(long x, long y, int batch, int n, int t, int d)
    {
        if (batch < 0 || n < 0 || t < 0 || d < 0 || x != (long)batch * (n + t) * d || y != (long)batch * t * d)
        {
            throw new ArgumentException($"DropLeadingRows: x {x} and y {y} do not fit batch {batch}, n {n}, t {t}, d {d}.");
        }
    }

    public static void DropLeadingBackward(long dy, long dx, int batch, int n, int t, int d)
    {
        if (batch < 0 || n < 0 || t < 0 || d < 0 || dx != (long)batch * (n + t) * d || dy != (long)batch * t * d)
        {
            throw new ArgumentException($"DropLeadingRows backward: dy {dy} and dx {dx} do not fit batch {batch}, n {n}, t {t}, d {d}.");
        }
    }

    /// <summary>ReLU / tanh forward: y as long as x.</summary>
    public static void Elementwise(long x, long y) => Check.Length("y", y, x, "x.Length");

    /// <summary>ReLU / tanh backward: the saved forward tensor (x or y) and dx as long as dy.</summary>
    public static void ElementwiseBackward(long dy, long saved, long dx)
    {
        Check.Length("saved", saved, dy, "dy.Length");
        Check.Length("dx", dx, dy, "dy.Length");
    }
}
