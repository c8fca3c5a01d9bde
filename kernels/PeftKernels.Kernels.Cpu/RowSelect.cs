// Row selection of a row-major [n, cols] matrix, and its adjoint (docs/formats/bottleneck-adapters.md#rows):
//   gather   y[j] = x[rows[j]]                      y [k, cols]
//   scatter  y[rows[j]] = x[j], other rows 0        y [n, cols]   (rows distinct)
// Each is the other's backward: d(gather) scatters dy back (adding, so repeated rows accumulate);
// d(scatter) gathers dy. The bottleneck sites use them to run one adapter setup on the rows
// (sequences) that chose it, and to replicate a batch for a Parallel block.
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
