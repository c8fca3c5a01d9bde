// Sources grouped by target row (a stable counting sort): for rows [m] with every rows[j] in [0, n),
//   first [n + 1]:  target r's sources are order[first[r] .. first[r + 1])
//   order [m]:      the source indices j, ascending within each target
// Why: a scatter (y[rows[j]] += x[j]) split over threads by source rows would have two threads add into
// one target row; split by target rows, each thread owns its rows and adds their sources in j order,
// so the sum has the same bits as the serial loop for any number of threads (RowSelect's scatters,
// MoeRouting's routed sum).
namespace PeftKernels.Kernels.Cpu;

/// <summary>A stable grouping of source rows by target row.</summary>
internal static class RowGroups
{
    /// <summary>(first, order) for rows [m] into n targets (each row checked to be in [0, n)).</summary>
    public static (int[] First, int[] Order) ByTarget(ReadOnlySpan<int> rows, int n)
    {
        var first = new int[n + 1];
        for (int j = 0; j < rows.Length; j++)
        {
            RowSelectShapes.Row(rows[j], j, n);
            first[rows[j] + 1]++;
        }

        for (int r = 0; r < n; r++)
        {
            first[r + 1] += first[r];
        }

        var order = new int[rows.Length];
        var fill = first.AsSpan(0, n).ToArray();
        for (int j = 0; j < rows.Length; j++)
        {
            order[fill[rows[j]]++] = j;
        }

        return (first, order);
    }
}
