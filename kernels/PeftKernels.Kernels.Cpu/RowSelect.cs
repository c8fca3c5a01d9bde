// Row selection of a row-major [n, cols] matrix, and its adjoint (docs/formats/bottleneck-adapters.md#rows):
//   gather   y[j] = x[rows[j]]                      y [k, cols]
//   scatter  y[rows[j]] = x[j], other rows 0        y [n, cols]   (rows distinct)
//   scatter-sum y[r] = Σ_{j: rows[j] = r} x[j] (in j order), 0 for rows never named    y [n, cols]
// Each is the other's backward: d(gather) scatters dy back (adding, so repeated rows accumulate);
// d(scatter) gathers dy. The bottleneck sites use them to run one adapter setup on the rows
// (sequences) that chose it, and to replicate a batch for a Parallel block. Scatter-sum is the
// gather's backward into a fresh buffer: it writes each row once (the first source copied, the
// others added in j order, so the same bits as scatter-add into zeros) instead of zeroing the whole
// buffer and reading every row back per source (MixLoRA's [k·n, ·] gathers: k sources per row).
namespace PeftKernels.Kernels.Cpu;

/// <summary>Gather and scatter-add of matrix rows on the CPU.</summary>
public static class RowSelect
{
    /// <summary>y[j] = x[rows[j]]; x holds n rows of <paramref name="cols"/>.</summary>
    public static void Gather(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols)
    {
        RowSelectShapes.Gather(x.Length, y.Length, rows.Length, n, cols);
        for (int j = 0; j < rows.Length; j++)
        {
            RowSelectShapes.Row(rows[j], j, n);
            x.Slice(rows[j] * cols, cols).CopyTo(y.Slice(j * cols, cols));
        }
    }

    /// <summary>
    /// y[r] = Σ x[j] over the j with rows[j] = r, in j order (overwritten; rows no j names are zero); y holds n rows of
    /// <paramref name="cols"/>. Equals <see cref="ScatterAdd"/> into a zeroed y bit for bit.
    /// </summary>
    public static void ScatterSum(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols)
    {
        RowSelectShapes.ScatterAdd(x.Length, y.Length, rows.Length, n, cols);
        // Sources grouped by target row (counting sort, stable in j): first[r] .. first[r + 1] index order.
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

        for (int r = 0; r < n; r++)
        {
            var target = y.Slice(r * cols, cols);
            int from = first[r], to = first[r + 1];
            if (from == to)
            {
                target.Clear();
                continue;
            }

            x.Slice(order[from] * cols, cols).CopyTo(target);
            for (int q = from + 1; q < to; q++)
            {
                System.Numerics.Tensors.TensorPrimitives.Add(target, x.Slice(order[q] * cols, cols), target);
            }
        }
    }

    /// <summary>y[rows[j]] += x[j]; y holds n rows of <paramref name="cols"/> (not cleared).</summary>
    public static void ScatterAdd(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols)
    {
        RowSelectShapes.ScatterAdd(x.Length, y.Length, rows.Length, n, cols);
        for (int j = 0; j < rows.Length; j++)
        {
            RowSelectShapes.Row(rows[j], j, n);
            var target = y.Slice(rows[j] * cols, cols);
            System.Numerics.Tensors.TensorPrimitives.Add(target, x.Slice(j * cols, cols), target);
        }
    }
}
