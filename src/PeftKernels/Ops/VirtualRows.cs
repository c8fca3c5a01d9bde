// Virtual rows of prompt learning (docs/formats/prompt-learning.md#ops):
//   PrependRows:     y [batch·(n+t), d] = for each batch row b, [p[:, c..c+d) ; x_b], p [n, width] shared by every row
//                    dx = the t trailing rows of each batch row of dy;  dp[:, c..c+d) = Σ_b leading n rows of dy_b
//   DropLeadingRows: y [batch·t, d] = x [batch·(n+t), d] without each batch row's n leading rows; dx = dy scattered back
//   Relu, Tanh:      the activations of P-tuning's MLP encoder and of prefix tuning's projection.
// Prompt tuning prepends its [N, H] table to the token embeddings and drops the N rows before the final norm, so
// logits stay [B·T, vocab]; prefix tuning prepends a layer's [N, kvDim] keys / values (a column window of its
// [N, 2·L·kvDim] table) to the attention's keys and values. CPU: Kernels.Cpu.VirtualRows; GPU: VirtualRowsKernels
// (device bodies below: copies only, no temporaries, so the forward does not wait; each backward waits once).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// Prepends the <paramref name="prefix"/> rows (columns <paramref name="column"/> .. column + d of a [n, width] table) before
    /// each of the <paramref name="batch"/> row blocks of <paramref name="x"/> [batch·t, d]: the result is [batch·(n+t), d].
    /// </summary>
    public static Tensor PrependRows(Tensor prefix, Tensor x, int batch, int column = 0)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        ArgumentNullException.ThrowIfNull(x);
        int d = x.Columns, n = prefix.Rows, width = prefix.Columns;
        if (batch <= 0 || x.Rows % batch != 0)
        {
            throw new ArgumentException($"PrependRows: x [{string.Join(", ", x.Shape)}] does not split into batch {batch}.", nameof(batch));
        }

        if (column < 0 || column + d > width)
        {
            throw new ArgumentException($"PrependRows: the window [{column}, {column + d}) of x's width {d} does not fit the prefix [{string.Join(", ", prefix.Shape)}].", nameof(column));
        }

        int t = x.Rows / batch;
        if (x.Device.IsGpu || prefix.Device.IsGpu)
        {
            return PrependRowsOnDevice(prefix, x, batch, n, t, width, column, d);
        }

        var y = GC.AllocateUninitializedArray<float>(checked(batch * (n + t) * d));
        VirtualRows.Prepend(prefix.Data, x.Data, y, batch, n, t, width, column, d);
        var output = new Tensor(y, batch * (n + t), d);
        if (Tape.ShouldRecord(prefix, x))
        {
            Tape.Record(output, () =>
            {
                float[] dp = prefix.RequiresGrad ? new float[prefix.Count] : [];
                float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(checked((int)x.Count)) : [];
                VirtualRows.PrependBackward(output.Grad!, dp, dx, batch, n, t, width, column, d);
                Grad.AddOwned(prefix, dp);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    /// <summary>Drops the <paramref name="count"/> leading rows of each of the <paramref name="batch"/> row blocks of <paramref name="x"/> [batch·(count+t), d].</summary>
    public static Tensor DropLeadingRows(Tensor x, int batch, int count)
    {
        ArgumentNullException.ThrowIfNull(x);
        int d = x.Columns;
        if (batch <= 0 || x.Rows % batch != 0 || count < 0 || count > x.Rows / batch)
        {
            throw new ArgumentException($"DropLeadingRows: x [{string.Join(", ", x.Shape)}] does not split into batch {batch} rows of at least {count} rows.", nameof(count));
        }

        int t = (x.Rows / batch) - count;
        if (x.Device.IsGpu)
        {
            return DropLeadingRowsOnDevice(x, batch, count, t, d);
        }

        var y = GC.AllocateUninitializedArray<float>(checked(batch * t * d));
        VirtualRows.DropLeading(x.Data, y, batch, count, t, d);
        var output = new Tensor(y, batch * t, d);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
                VirtualRows.DropLeadingBackward(output.Grad!, dx, batch, count, t, d);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    /// <summary>max(x, 0), element-wise.</summary>
    public static Tensor Relu(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.Device.IsGpu)
        {
            return EncoderActivationOnDevice(x, tanh: false);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        VirtualRows.Relu(x.Data, y);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = GC.AllocateUninitializedArray<float>(y.Length);
                VirtualRows.ReluBackward(output.Grad!, x.Data, dx);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    /// <summary>tanh(x), element-wise.</summary>
    public static Tensor Tanh(Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.Device.IsGpu)
        {
            return EncoderActivationOnDevice(x, tanh: true);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        VirtualRows.Tanh(x.Data, y);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = GC.AllocateUninitializedArray<float>(y.Length);
                VirtualRows.TanhBackward(output.Grad!, y, dx);
                Grad.AddOwned(x, dx);
            });
        }

        return output;
    }

    private static Tensor PrependRowsOnDevice(Tensor prefix, Tensor x, int batch, int n, int t, int width, int column, int d)
    {
        var device = x.Device;
        OpChecks.SameDevice(device, prefix, nameof(prefix));
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, [batch * (n + t), d]);
        VirtualRowsKernels.Prepend(accelerator, prefix.View(device), x.View(device), output.View(device), batch, n, t, width, column, d);
        if (Tape.ShouldRecord(prefix, x))
        {
            Tape.Record(output, () =>
            {
                var dp = DeviceGrad.Buffer(device, prefix);
                var dx = DeviceGrad.Buffer(device, x);
                dp?.Clear();
                VirtualRowsKernels.PrependBackward(accelerator, output.DeviceGrad, dp?.View ?? default, dx?.View ?? default, batch, n, t, width, column, d);
                DeviceGrad.Give((prefix, dp), (x, dx));
            });
        }

        return output;
    }

    private static Tensor DropLeadingRowsOnDevice(Tensor x, int batch, int count, int t, int d)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, [batch * t, d]);
        VirtualRowsKernels.DropLeading(accelerator, x.View(device), output.View(device), batch, count, t, d);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                VirtualRowsKernels.DropLeadingBackward(accelerator, output.DeviceGrad, dx.View, batch, count, t, d);
                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }

    /// <summary>Relu or Tanh of the prompt encoders on x's device (tanh's backward reads the output, as on the host).</summary>
    private static Tensor EncoderActivationOnDevice(Tensor x, bool tanh)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, x.Shape);
        if (tanh)
        {
            VirtualRowsKernels.Tanh(accelerator, x.View(device), output.View(device));
        }
        else
        {
            VirtualRowsKernels.Relu(accelerator, x.View(device), output.View(device));
        }

        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                if (tanh)
                {
                    VirtualRowsKernels.TanhBackward(accelerator, output.DeviceGrad, output.View(device), dx.View);
                }
                else
                {
                    VirtualRowsKernels.ReluBackward(accelerator, output.DeviceGrad, x.View(device), dx.View);
                }

                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }
}
