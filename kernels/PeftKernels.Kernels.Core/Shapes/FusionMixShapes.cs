// Shape checks of AdapterFusion's softmax mix (q [n, H], k and v [N, n, H] stacked, y [n, H], p [n, N]) and of
// the value regularization ‖I − V‖²_F (V [d, d]), called by the CPU kernel (FusionMix) and the GPU launcher
// (FusionMixKernels), so both reject a bad argument with the same message.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of AdapterFusion's mix, shared by the CPU kernel and the GPU launcher.</summary>
internal static class FusionMixShapes
{
    public static void Forward(long q, long k, long v, long y, long p, int n, int hidden, int adapters, float temperature)
    {
        Check.NonNegative((n, "n"), (hidden, "hidden"));
        Check.Positive(adapters, "adapters");
        Check.Length("q", q, (long)n * hidden, "n·H");
        Check.Length("k", k, (long)adapters * n * hidden, "N·n·H");
        Check.Length("v", v, (long)adapters * n * hidden, "N·n·H");
        Check.Length("y", y, (long)n * hidden, "n·H");
        Check.Length("p", p, (long)n * adapters, "n·N");
        Temperature(temperature);
    }

    public static void Backward(long g, long dq, long dk, long dv, int n, int hidden, int adapters)
    {
        Check.Length("g", g, (long)n * hidden, "n·H");
        Check.Length("dq", dq, (long)n * hidden, "n·H");
        Check.Length("dk", dk, (long)adapters * n * hidden, "N·n·H");
        Check.Length("dv", dv, (long)adapters * n * hidden, "N·n·H");
    }

    /// <summary>The GPU backward's inputs and its ds scratch [n, N].</summary>
    public static void BackwardInputs(long q, long k, long v, long p, long ds, int n, int hidden, int adapters)
    {
        Check.Positive(adapters, "adapters");
        Check.Length("q", q, (long)n * hidden, "n·H");
        Check.Length("k", k, (long)adapters * n * hidden, "N·n·H");
        Check.Length("v", v, (long)adapters * n * hidden, "N·n·H");
        Check.Length("p", p, (long)n * adapters, "n·N");
        Check.Length("ds", ds, (long)n * adapters, "n·N");
    }

    public static void Temperature(float temperature) =>
        Check.Require(temperature > 0f && float.IsFinite(temperature), nameof(temperature), $"temperature must be a positive finite number, got {temperature}.");

    /// <summary>‖I − V‖²_F: V [d, d], its gradient dv [d, d] and the one-element sum.</summary>
    public static void Regularization(long v, long other, int d, string otherName)
    {
        Check.NonNegative(d, "d");
        Check.Length("v", v, (long)d * d, "d·d");
        Check.Length(otherName, other, otherName == "sum" ? 1 : (long)d * d, otherName == "sum" ? "one scalar" : "d·d");
    }
}
