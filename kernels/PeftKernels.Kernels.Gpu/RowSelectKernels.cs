// Row selection of a row-major [n, cols] matrix on the GPU (RowSelect.cs on the CPU;
// docs/formats/bottleneck-adapters.md#rows):
//   gather       y[j] = x[rows[j]]                          y [k, cols]
//   scatter-add  y[r] += Σ_{j: rows[j] = r} x[j]            y [n, cols] (accumulated, not cleared)
// Each is the other's backward (d gather = scatter-add of dy; d scatter = gather of dy). The row indices are host
// data, checked on the host before upload (RowSelectShapes.Rows: a launcher never downloads). The scatter-add has no
// atomics: the host groups the positions j by target row (Group: stable, so each group lists its j ascending) and
// one thread per (distinct row, column) adds its group in that order to y's value, exactly as the CPU loop over j
// does (bit-identical). The bottleneck sites and MixLoRA's experts gather the rows (sequences, tokens) that chose
// a setup or an expert, run it on them, and scatter the result back.
namespace PeftKernels.Kernels.Gpu;

/// <summary>The grouping of a row list for <see cref="RowSelectKernels.ScatterAdd"/>: distinct target rows, offsets into order, the positions j per row.</summary>
/// <param name="Targets">The distinct rows, ascending.</param>
/// <param name="Offsets">Targets.Length + 1 offsets into Order.</param>
/// <param name="Order">The positions j grouped by target row, each group ascending.</param>
public sealed record RowGroups(int[] Targets, int[] Offsets, int[] Order);

/// <summary>Gather and scatter-add of matrix rows on an ILGPU accelerator.</summary>
public static class RowSelectKernels
{
    /// <summary>y[j] = x[rows[j]]; x holds n rows of <paramref name="cols"/>, the rows (checked on the host) are in [0, n). Enqueues only.</summary>
    public static void Gather(Accelerator accelerator, FloatView x, IntView rows, FloatView y, int n, int cols)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(rows.Length, nameof(rows));
        RowSelectShapes.Gather(x.Length, y.Length, (int)rows.Length, n, cols);
        GpuCheck.FitsInt(y.Length, nameof(y));
        if (y.Length != 0)
        {
            Loaded.For(accelerator).Gather((int)y.Length, x, rows, y, cols);
        }
    }

    /// <summary>
    /// y[Targets[g]] += Σ over p in Offsets[g]..Offsets[g+1] of x[Order[p]] (accumulated into y [n, cols]), for x [k, cols] and the
    /// grouping <see cref="Group"/> made of the k row indices (uploaded: targets, offsets, order). Enqueues only.
    /// </summary>
    public static void ScatterAdd(Accelerator accelerator, FloatView x, IntView targets, IntView offsets, IntView order, FloatView y, int n, int cols)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(order.Length, nameof(order));
        RowSelectShapes.ScatterAdd(x.Length, y.Length, (int)order.Length, n, cols);
        Check.Length("offsets", offsets.Length, targets.Length + 1, "targets + 1");
        GpuCheck.FitsInt(y.Length, nameof(y));
        if (targets.Length != 0 && cols != 0)
        {
            Loaded.For(accelerator).Scatter((int)targets.Length * cols, x, targets, offsets, order, y, cols);
        }
    }

    /// <summary>Checks each row is in [0, n) and groups the positions by row (see the header).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A row is outside [0, n) (the CPU kernel's message).</exception>
    public static RowGroups Group(ReadOnlySpan<int> rows, int n)
    {
        RowSelectShapes.Rows(rows, n);
        var keys = new long[rows.Length];
        for (int j = 0; j < rows.Length; j++)
        {
            keys[j] = ((long)rows[j] << 32) | (uint)j;
        }

        Array.Sort(keys);
        var order = new int[rows.Length];
        var targets = new List<int>();
        var offsets = new List<int>();
        for (int p = 0; p < keys.Length; p++)
        {
            int row = (int)(keys[p] >> 32);
            order[p] = (int)(keys[p] & uint.MaxValue);
            if (p == 0 || row != targets[^1])
            {
                targets.Add(row);
                offsets.Add(p);
            }
        }

        offsets.Add(rows.Length);
        return new RowGroups([.. targets], [.. offsets], order);
    }

    internal static void GatherKernel(Index1D i, FloatView x, IntView rows, FloatView y, int cols)
    {
        int j = i / cols;
        y[i] = x[(rows[j] * cols) + (i - (j * cols))];
    }

    internal static void ScatterKernel(Index1D i, FloatView x, IntView targets, IntView offsets, IntView order, FloatView y, int cols)
    {
        int g = i / cols, c = i - (g * cols);
        int at = (targets[g] * cols) + c;
        float sum = y[at];
        for (int p = offsets[g]; p < offsets[g + 1]; p++)
        {
            sum += x[(order[p] * cols) + c];
        }

        y[at] = sum;
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, IntView, FloatView, int> Gather;
        public readonly Action<Index1D, FloatView, IntView, IntView, IntView, FloatView, int> Scatter;

        private Loaded(Accelerator a)
        {
            Gather = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int>(GatherKernel);
            Scatter = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, IntView, IntView, FloatView, int>(ScatterKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
