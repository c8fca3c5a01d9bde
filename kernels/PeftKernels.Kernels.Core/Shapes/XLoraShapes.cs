// Shape checks of X-LoRA's kernels (the op Functional.ScaleRows / XLoraGate / ReluDropout checks its tensors first;
// these check the views the GPU launcher XLoraKernels gets): ScaleRows x, y [n, d], s [n, c], a column of s;
// the gate's logits z, p, y, keep [rows·E] in groups of E; ReLU-dropout x, y one length.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the X-LoRA kernels.</summary>
internal static class XLoraShapes
{
    public static void ScaleRows(long x, long s, long y, int n, int d, int c, int column)
    {
        Check.NonNegative((n, "n"), (d, "d"));
        Check.Require((uint)column < (uint)c, nameof(column), $"ScaleRows: column {column} is outside [0, {c}).");
        Check.Length("x", x, (long)n * d, "n·d");
        Check.Length("s", s, (long)n * c, "n·c");
        Check.Length("y", y, (long)n * d, "n·d");
    }

    /// <summary>dx and ds may be empty (skipped); x may be empty when ds is.</summary>
    public static void ScaleRowsBackward(long g, long x, long s, long dx, long ds, int n, int d, int c, int column)
    {
        Check.NonNegative((n, "n"), (d, "d"));
        Check.Require((uint)column < (uint)c, nameof(column), $"ScaleRows: column {column} is outside [0, {c}).");
        Check.Length("g", g, (long)n * d, "n·d");
        Check.Length("s", s, (long)n * c, "n·c");
        Check.LengthOrEmpty("dx", dx, (long)n * d, "n·d");
        Check.LengthOrEmpty("ds", ds, (long)n * c, "n·c");
        if (ds != 0)
        {
            Check.Length("x", x, (long)n * d, "n·d");
        }
    }

    /// <summary>The gate: every view holds rows·E values; E > 0, T > 0, 1 ≤ k ≤ E.</summary>
    public static void Gate(long z, long p, long keep, long y, int rows, int e, float temperature, int k)
    {
        Check.NonNegative(rows, "rows");
        Check.Positive(e, "experts");
        Check.Require(temperature > 0f, nameof(temperature), $"XLoraGate: the temperature must be > 0; got {temperature}.");
        Check.Require(k >= 1 && k <= e, nameof(k), $"XLoraGate: top-k {k} must be in [1, {e}].");
        long count = (long)rows * e;
        Check.Length("z", z, count, "rows·E");
        Check.Length("p", p, count, "rows·E");
        Check.Length("keep", keep, count, "rows·E");
        Check.Length("y", y, count, "rows·E");
    }

    public static void GateBackward(long g, long y, long p, long keep, long dz, int rows, int e, float temperature)
    {
        Check.NonNegative(rows, "rows");
        Check.Positive(e, "experts");
        Check.Require(temperature > 0f, nameof(temperature), $"XLoraGate: the temperature must be > 0; got {temperature}.");
        long count = (long)rows * e;
        Check.Length("g", g, count, "rows·E");
        Check.Length("y", y, count, "rows·E");
        Check.Length("p", p, count, "rows·E");
        Check.Length("keep", keep, count, "rows·E");
        Check.Length("dz", dz, count, "rows·E");
    }

    public static void ReluDropout(long x, long y, float p)
    {
        Check.Require(p >= 0f && p < 1f, nameof(p), $"ReluDropout: the dropout probability must be in [0, 1); got {p}.");
        Check.Length("y", y, x, "x.Length");
    }

    public static void ReluDropoutBackward(long g, long x, long dx, float p)
    {
        Check.Require(p >= 0f && p < 1f, nameof(p), $"ReluDropout: the dropout probability must be in [0, 1); got {p}.");
        Check.Length("x", x, g, "g.Length");
        Check.Length("dx", dx, g, "g.Length");
    }
}
