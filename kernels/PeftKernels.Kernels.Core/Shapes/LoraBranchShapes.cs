// Shape checks of one extra LoRA branch on a row subset R of a Linear's rows, called by the CPU
// kernel (LoraBranch) and the GPU launcher (LoraBranchKernels). R = rows (distinct, each in [0, n)) or
// all n rows (rows null); m = |R|. Shapes: x [n, in] (may be empty in backward when da is), a [r, in],
// b [out, r], bias [out] or empty, y, dy [n, out], h [m, r], dx [n, in], da [r, in], db [out, r]
// (each gradient may be empty: skipped); dropout p in [0, 1). The rows are host data.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of a LoRA branch, shared by the CPU kernel and the GPU launcher.</summary>
internal static class LoraBranchShapes
{
    /// <summary>Checks the dims and the rows; returns m, the branch's row count.</summary>
    public static int Rows(int[]? rows, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulShapes.Dims(n, inFeatures, outFeatures, rank, options);
        if (rows == null)
        {
            return n;
        }

        Check.Require(rows.Length <= n, nameof(rows), $"rows has {rows.Length} entries; there are only n = {n} rows.");
        var seen = new bool[n];
        for (int i = 0; i < rows.Length; i++)
        {
            int row = rows[i];
            Check.Require((uint)row < (uint)n, nameof(rows), $"rows[{i}] = {row} is outside [0, {n}).");
            Check.Require(!seen[row], nameof(rows), $"rows[{i}] = {row} appears twice; a branch's rows must be distinct.");
            seen[row] = true;
        }

        return rows.Length;
    }

    /// <summary>Checks the forward's arguments; returns m.</summary>
    public static int Forward(long x, int[]? rows, long a, long b, long bias, long y, long h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        int m = Rows(rows, n, inFeatures, outFeatures, rank, options);
        Check.Length("x", x, (long)n * inFeatures, "n·inFeatures");
        AdapterShapes.Matrices(a, b, inFeatures, outFeatures, rank);
        Check.LengthOrEmpty("bias", bias, outFeatures, "outFeatures, or empty");
        Check.Length("y", y, (long)n * outFeatures, "n·outFeatures");
        Check.Length("h", h, (long)m * rank, "m·rank (m = rows of the branch)");
        return m;
    }

    /// <summary>Checks the backward's arguments; returns m.</summary>
    public static int Backward(long dy, long x, int[]? rows, long h, long a, long b, long dx, long da, long db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        int m = Rows(rows, n, inFeatures, outFeatures, rank, options);
        AdapterShapes.BackwardInputs(dy, x, da, n, inFeatures, outFeatures);
        Check.Length("h", h, (long)m * rank, "m·rank (m = rows of the branch)");
        AdapterShapes.Matrices(a, b, inFeatures, outFeatures, rank);
        Check.LengthOrEmpty("dx", dx, (long)n * inFeatures, "n·inFeatures, or empty to skip");
        Check.LengthOrEmpty("da", da, (long)rank * inFeatures, "rank·inFeatures, or empty to skip");
        Check.LengthOrEmpty("db", db, (long)outFeatures * rank, "outFeatures·rank, or empty to skip");
        return m;
    }
}
