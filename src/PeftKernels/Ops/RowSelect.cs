// Row selection of x [n, cols] and its adjoint (docs/formats/bottleneck-adapters.md#rows):
//   GatherRows   y = x[rows]            [k, cols];   dx[rows[j]] += dy[j]  (into x's gradient when it has one,
//                                                   else each row of a fresh buffer written once: ScatterSum)
//   ScatterRows  y[rows[j]] = x[j]      [n, cols], other rows 0 (rows distinct);   dx = dy[rows]
// The bottleneck sites run an adapter setup on the rows (sequences) that chose it: gather them, run
// the setup, scatter its contribution back; MixLoRA gathers each expert's tokens. CPU: Kernels.Cpu.RowSelect;
// GPU: RowSelectKernels. On a device the row list (host data, checked on the host) is uploaded, and the
// scatter-add's grouping of the rows (RowSelectKernels.Group) with it; both are freed after the wait at the end of
// the forward body or of the backward closure. Host: kernel options give the threads of the copy and of
// the scatter (the same bits for any count). GatherRowsScratch (internal, MixLoRA's gathered x̃ rows): the
// output's storage comes from ScratchArrays, and the backward hands it and the output's gradient back
// once it has scattered them (the caller guarantees nothing else reads the output after its backward).
// With sourceTakesGrad, x's gradient (when x has none yet) is written over x's own storage: for a non-leaf
// x that no node reads after this op's forward (MixLoRA's W_gate·x̃ and W_up·x̃: their linears' backward
// reads only their output's gradient), so no fresh [n, cols] buffer.
namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>x[rows] for x [n, cols]: [rows.Length, cols].</summary>
    public static Tensor GatherRows(Tensor x, int[] rows, KernelOptions kernel = default) => GatherRowsCore(x, rows, kernel, scratch: false);

    /// <summary>
    /// x[rows] on the host into a pooled array (<see cref="ScratchArrays"/>); the backward returns the output's storage and its
    /// gradient to the pool: only for a temporary that no one reads once this op's backward has run.
    /// </summary>
    internal static Tensor GatherRowsScratch(Tensor x, int[] rows, KernelOptions kernel = default, bool sourceTakesGrad = false) =>
        GatherRowsCore(x, rows, kernel, scratch: true, sourceTakesGrad);

    private static Tensor GatherRowsCore(Tensor x, int[] rows, KernelOptions kernel, bool scratch, bool sourceTakesGrad = false)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(rows);
        int n = x.Rows, cols = x.Columns;
        if (x.Device.IsGpu)
        {
            return GatherRowsOnDevice(x, rows, n, cols);
        }

        bool record = Tape.ShouldRecord(x);
        int length = checked(rows.Length * cols);
        var y = scratch && record ? ScratchArrays.Rent(length) : GC.AllocateUninitializedArray<float>(length);
        Kernels.Cpu.RowSelect.Gather(x.Data, rows, y, n, cols, kernel);
        var output = new Tensor(y, rows.Length, cols);
        if (record)
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                ScatterRowsBack(x, rows, g, kernel, sourceTakesGrad);
                if (scratch)
                {
                    ScratchArrays.Return(y);
                    if (!ReferenceEquals(g, y))
                    {
                        ScratchArrays.Return(g);
                    }
                }
            });
        }

        return output;
    }

    /// <summary>[n, cols] zeros with row rows[j] = x[j] (distinct rows).</summary>
    /// <exception cref="ArgumentException">The row count does not match, or a row repeats.</exception>
    public static Tensor ScatterRows(Tensor x, int[] rows, int n)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(rows);
        if (x.Rows != rows.Length)
        {
            throw new ArgumentException($"x has {x.Rows} rows but {rows.Length} target rows were given.", nameof(rows));
        }

        if (rows.Distinct().Count() != rows.Length)
        {
            throw new ArgumentException("ScatterRows needs distinct target rows.", nameof(rows));
        }

        int cols = x.Columns;
        if (x.Device.IsGpu)
        {
            return ScatterRowsOnDevice(x, rows, n, cols);
        }

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

    private static Tensor GatherRowsOnDevice(Tensor x, int[] rows, int n, int cols)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var groups = RowSelectKernels.Group(rows, n); // checks the rows on the host before upload
        var output = OpChecks.DeviceTensor(device, [rows.Length, cols]);
        var deviceRows = Upload(accelerator, rows);
        RowSelectKernels.Gather(accelerator, x.View(device), deviceRows.View, output.View(device), n, cols);
        deviceRows.Dispose();
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                var targets = Upload(accelerator, groups.Targets);
                var offsets = Upload(accelerator, groups.Offsets);
                var order = Upload(accelerator, groups.Order);
                dx.Clear();
                var dy = rows.Length == 0 ? default : output.DeviceGrad; // no rows: nothing to scatter (dx stays 0)
                RowSelectKernels.ScatterAdd(accelerator, dy, targets.View, offsets.View, order.View, dx.View, n, cols);
                targets.Dispose();
                offsets.Dispose();
                order.Dispose();
                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }

    private static Tensor ScatterRowsOnDevice(Tensor x, int[] rows, int n, int cols)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var groups = RowSelectKernels.Group(rows, n); // checks the rows on the host before upload
        var output = OpChecks.DeviceTensor(device, [n, cols]);
        var targets = Upload(accelerator, groups.Targets);
        var offsets = Upload(accelerator, groups.Offsets);
        var order = Upload(accelerator, groups.Order);
        output.View(device).MemSetToZero();
        RowSelectKernels.ScatterAdd(accelerator, x.View(device), targets.View, offsets.View, order.View, output.View(device), n, cols);
        targets.Dispose();
        offsets.Dispose();
        order.Dispose();
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                var deviceRows = Upload(accelerator, rows);
                RowSelectKernels.Gather(accelerator, output.DeviceGrad, deviceRows.View, dx.View, n, cols);
                deviceRows.Dispose();
                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }

    /// <summary>A device copy of a small host index array (an empty one allocates an empty buffer).</summary>
    private static DeviceArray<int> Upload(Accelerator accelerator, int[] values) =>
        values.Length == 0 ? accelerator.Rent<int>(0) : accelerator.Upload(values);
}
