// Shape checks of MixLoRA's routing kernels (rows are tokens; z, p [n, E]; sel, w [n, k]; one expert's part
// [|rows|, c] into y [n, c]), called by the CPU kernel (MoeRouting) and the GPU launcher (MoeRoutingKernels),
// so both reject a bad argument with the same message. Row and slot indices are host data: the CPU kernel checks
// them as it goes, the GPU caller before upload (Routes).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the MoE routing, shared by the CPU kernel and the GPU launcher.</summary>
internal static class MoeRoutingShapes
{
    public static void Softmax(long z, long p, int n, int e) =>
        Require(z == (long)n * e && p == (long)n * e, $"softmax: z ({z}) and p ({p}) must both hold n·E = {n}·{e} values.");

    public static void SoftmaxBackward(long g, long p, long dz, int n, int e) =>
        Require(g == (long)n * e && p == (long)n * e && dz == (long)n * e, $"softmax backward: g, p and dz must hold n·E = {n}·{e} values.");

    public static void TopK(long p, long sel, long w, int n, int e, int k)
    {
        Require(k >= 1 && k <= e, $"top-k: k = {k} must be in [1, E = {e}].");
        Require(p == (long)n * e && sel == (long)n * k && w == (long)n * k, $"top-k: p must hold n·E = {n}·{e} values, sel and w n·k = {n}·{k}.");
    }

    public static void TopKBackward(long g, long p, long sel, long w, long dp, int n, int e, int k) =>
        Require(g == (long)n * k && w == (long)n * k && sel == (long)n * k && p == (long)n * e && dp == (long)n * e,
            $"top-k backward: g, w and sel must hold n·k = {n}·{k} values, p and dp n·E = {n}·{e}.");

    public static void RoutedSum(long part, int rows, int slots, long w, long y, int n, int c, int k) =>
        Require(rows == slots && part == (long)rows * c && y == (long)n * c && w == (long)n * k,
            $"routed sum: part must hold |rows|·c = {rows}·{c} values (one slot per row), y n·c = {n}·{c}, w n·k = {n}·{k}.");

    /// <summary>dpart and dw may be empty (skipped).</summary>
    public static void RoutedSumBackward(long g, long part, int rows, long dpart, long dw, int n, int c, int k) =>
        Require(g == (long)n * c && part == (long)rows * c && (dpart == 0 || dpart == part) && (dw == 0 || dw == (long)n * k),
            $"routed sum backward: g must hold n·c = {n}·{c} values, part and dpart |rows|·c = {rows}·{c}, dw n·k = {n}·{k}.");

    /// <summary>One routed row and slot: in [0, n) × [0, k).</summary>
    public static void Route(int row, int slot, int n, int k) =>
        Require((uint)row < (uint)n && (uint)slot < (uint)k, $"routed sum: row {row} or slot {slot} is outside [0, {n}) × [0, {k}).");

    /// <summary>Every (row, slot) pair, checked on the host before upload.</summary>
    public static void Routes(ReadOnlySpan<int> rows, ReadOnlySpan<int> slots, int n, int k)
    {
        Require(rows.Length == slots.Length, $"routed sum: {rows.Length} rows and {slots.Length} slots; give one slot per row.");
        for (int i = 0; i < rows.Length; i++)
        {
            Route(rows[i], slots[i], n, k);
        }
    }

    /// <summary>Expert probability sums of the load-balancing loss: p [n, E], sums [E].</summary>
    public static void ExpertSums(long p, long sums, int n, int e) =>
        Require(p == (long)n * e && sums == e, $"load-balancing loss: p must hold n·E = {n}·{e} values and the sums E = {e}.");

    /// <summary>Its backward dp[t, e] = g·f[e]: f [E], dp [n, E].</summary>
    public static void ExpertBroadcast(long f, long dp, int n, int e) =>
        Require(f == e && dp == (long)n * e, $"load-balancing loss backward: f must hold E = {e} values and dp n·E = {n}·{e}.");

    /// <summary>y = x ⊙ f: all three of one length.</summary>
    public static void ScaleElements(long x, long f, long y) =>
        Require(f == x && y == x, $"scale elements: x ({x}), f ({f}) and y ({y}) must have one length.");

    private static void Require(bool ok, string message)
    {
        if (!ok)
        {
            throw new ArgumentException(message);
        }
    }
}
