// Shape checks of the row gather / scatter-add of a row-major [n, cols] matrix, called by the CPU kernel
// (RowSelect) and the GPU launcher (RowSelectKernels). The row indices are host data: the CPU kernel checks each
// as it goes, the GPU caller before upload (Rows); the messages are the same.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the row selection, shared by the CPU kernel and the GPU launcher.</summary>
internal static class RowSelectShapes
{
    /// <summary>Gather: x [n, cols], y [k, cols].</summary>
    public static void Gather(long x, long y, int k, int n, int cols)
    {
        Check.NonNegative((n, "n"), (cols, "cols"));
        Check.Length("x", x, (long)n * cols, "n·cols");
        Check.Length("y", y, (long)k * cols, "rows·cols");
    }

    /// <summary>Scatter-add: x [k, cols] into y [n, cols].</summary>
    public static void ScatterAdd(long x, long y, int k, int n, int cols)
    {
        Check.NonNegative((n, "n"), (cols, "cols"));
        Check.Length("x", x, (long)k * cols, "rows·cols");
        Check.Length("y", y, (long)n * cols, "n·cols");
    }

    /// <summary>rows[j] is in [0, n).</summary>
    public static void Row(int row, int j, int n)
    {
        if ((uint)row >= (uint)n)
        {
            throw new ArgumentOutOfRangeException(nameof(row), $"rows[{j}] = {row} is outside [0, {n}).");
        }
    }

    /// <summary>Every row is in [0, n).</summary>
    public static void Rows(ReadOnlySpan<int> rows, int n)
    {
        for (int j = 0; j < rows.Length; j++)
        {
            Row(rows[j], j, n);
        }
    }
}
