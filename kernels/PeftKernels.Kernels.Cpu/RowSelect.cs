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
// Threads (KernelOptions.Threads; large calls only): the gather splits its output rows, the scatters
// their target rows (sources grouped by target with a stable counting sort, RowGroups). Every output
// row is written by one thread, with its sources in j order, so the bits never depend on the split.
namespace PeftKernels.Kernels.Cpu;

/// <summary>Gather and scatter-add of matrix rows on the CPU.</summary>
public static unsafe class RowSelect
{
    /// <summary>Below this many floats moved, a call runs on one thread (a fork-join costs more than the copy).</summary>
    internal const int ParallelFloats = 64 * 1024;

    /// <summary>y[j] = x[rows[j]]; x holds n rows of <paramref name="cols"/>.</summary>
    public static void Gather(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols, KernelOptions options = default)
    {
        RowSelectShapes.Gather(x.Length, y.Length, rows.Length, n, cols);
        RowSelectShapes.Rows(rows, n);
        int parts = Parts(rows.Length, (long)rows.Length * cols, options);
        fixed (float* px = x, py = y)
        fixed (int* pr = rows)
        {
            nint xp = (nint)px, yp = (nint)py, rp = (nint)pr;
            int count = rows.Length;
            CpuParallel.For(parts, parts, part =>
            {
                var (j0, j1) = CpuParallel.Split(count, parts, part);
                for (int j = j0; j < j1; j++)
                {
                    new ReadOnlySpan<float>((float*)xp + ((long)((int*)rp)[j] * cols), cols).CopyTo(new Span<float>((float*)yp + ((long)j * cols), cols));
                }
            });
        }
    }

    /// <summary>
    /// y[r] = Σ x[j] over the j with rows[j] = r, in j order (overwritten; rows no j names are zero); y holds n rows of
    /// <paramref name="cols"/>. Equals <see cref="ScatterAdd"/> into a zeroed y bit for bit, for any thread count.
    /// </summary>
    public static void ScatterSum(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols, KernelOptions options = default)
    {
        RowSelectShapes.ScatterAdd(x.Length, y.Length, rows.Length, n, cols);
        Scatter(x, rows, y, n, cols, options, overwrite: true);
    }

    /// <summary>y[rows[j]] += x[j] in j order; y holds n rows of <paramref name="cols"/> (not cleared). The same bits for any thread count.</summary>
    public static void ScatterAdd(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols, KernelOptions options = default)
    {
        RowSelectShapes.ScatterAdd(x.Length, y.Length, rows.Length, n, cols);
        Scatter(x, rows, y, n, cols, options, overwrite: false);
    }

    /// <summary>The two scatters: each target row r gets its sources in j order, copied over (first source, overwrite) or added.</summary>
    private static void Scatter(ReadOnlySpan<float> x, ReadOnlySpan<int> rows, Span<float> y, int n, int cols, KernelOptions options, bool overwrite)
    {
        int parts = Parts(n, (long)rows.Length * cols, options);
        if (parts == 1 && !overwrite)
        {
            for (int j = 0; j < rows.Length; j++)
            {
                RowSelectShapes.Row(rows[j], j, n);
                var target = y.Slice(rows[j] * cols, cols);
                System.Numerics.Tensors.TensorPrimitives.Add(target, x.Slice(j * cols, cols), target);
            }

            return;
        }

        var (first, order) = RowGroups.ByTarget(rows, n);
        fixed (float* px = x, py = y)
        {
            nint xp = (nint)px, yp = (nint)py;
            CpuParallel.For(parts, parts, part =>
            {
                var (r0, r1) = CpuParallel.Split(n, parts, part);
                for (int r = r0; r < r1; r++)
                {
                    var target = new Span<float>((float*)yp + ((long)r * cols), cols);
                    int from = first[r], to = first[r + 1];
                    if (overwrite)
                    {
                        if (from == to)
                        {
                            target.Clear();
                            continue;
                        }

                        new ReadOnlySpan<float>((float*)xp + ((long)order[from] * cols), cols).CopyTo(target);
                        from++;
                    }

                    for (int q = from; q < to; q++)
                    {
                        System.Numerics.Tensors.TensorPrimitives.Add(target, new ReadOnlySpan<float>((float*)xp + ((long)order[q] * cols), cols), target);
                    }
                }
            });
        }
    }

    /// <summary>Parts for <paramref name="items"/> rows moving <paramref name="floats"/> floats: 1 below <see cref="ParallelFloats"/>, else up to the threads.</summary>
    internal static int Parts(int items, long floats, KernelOptions options) =>
        floats < ParallelFloats ? 1 : Math.Max(1, Math.Min(options.ResolveThreads(), items));
}
