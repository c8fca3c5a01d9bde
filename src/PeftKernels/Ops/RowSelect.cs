// Row selection of x [n, cols] and its adjoint (docs/formats/bottleneck-adapters.md#rows):
//   GatherRows   y = x[rows]            [k, cols];   dx[rows[j]] += dy[j]
//   ScatterRows  y[rows[j]] = x[j]      [n, cols], other rows 0 (rows distinct);   dx = dy[rows]
// The bottleneck sites run an adapter setup on the rows (sequences) that chose it: gather them, run
// the setup, scatter its contribution back. CPU: Kernels.Cpu.RowSelect; no GPU path yet.
namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>x[rows] for x [n, cols]: [rows.Length, cols].</summary>
    /// <exception cref="NotSupportedException"><paramref name="x"/> lives on a GPU device.</exception>
    public static Tensor GatherRows(Tensor x, int[] rows)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(rows);
        HostOnly(x, "GatherRows");
        int n = x.Rows, cols = x.Columns;
        var y = GC.AllocateUninitializedArray<float>(checked(rows.Length * cols));
        Kernels.Cpu.RowSelect.Gather(x.Data, rows, y, n, cols);
        var output = new Tensor(y, rows.Length, cols);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = new float[x.Count];
                Kernels.Cpu.RowSelect.ScatterAdd(output.Grad!, rows, dx, n, cols);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    /// <summary>[n, cols] zeros with row rows[j] = x[j] (distinct rows).</summary>
    /// <exception cref="ArgumentException">The row count does not match, or a row repeats.</exception>
    /// <exception cref="NotSupportedException"><paramref name="x"/> lives on a GPU device.</exception>
    public static Tensor ScatterRows(Tensor x, int[] rows, int n)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(rows);
        HostOnly(x, "ScatterRows");
        if (x.Rows != rows.Length)
        {
            throw new ArgumentException($"x has {x.Rows} rows but {rows.Length} target rows were given.", nameof(rows));
        }

        if (rows.Distinct().Count() != rows.Length)
        {
            throw new ArgumentException("ScatterRows needs distinct target rows.", nameof(rows));
        }

        int cols = x.Columns;
        var y = new float[checked(n * cols)];
        Kernels.Cpu.RowSelect.ScatterAdd(x.Data, rows, y, n, cols);
        var output = new Tensor(y, n, cols);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = GC.AllocateUninitializedArray<float>(checked(rows.Length * cols));
                Kernels.Cpu.RowSelect.Gather(output.Grad!, rows, dx, n, cols);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }
}
