// IA³ scaling: each column of x [n, f] times one learned factor, l [f] in any shape ([f], [f, 1], [1, f]):
//   y[i, j] = x[i, j] · l[j]
//   dx = dy ⊙ l (broadcast over rows);   dl[j] = Σ_i dy[i, j] · x[i, j]
// Linear applies it to the input (feed-forward IA³) or the output (the others); DoRA's c ⊙ z
// uses the same kernel. CPU: Kernels.Cpu.Ia3; GPU: Ia3Kernels. Equations: docs/formats/methods.md.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// y[i, j] = x[i, j] · l[j] over the last dimension of <paramref name="x"/> (IA³ scaling): <paramref name="l"/> holds one entry
    /// per column, in any shape ([f], [f, 1], [1, f]).
    /// </summary>
    public static Tensor ScaleColumns(Tensor x, Tensor l, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(l);
        int features = x.Columns, n = x.Rows;
        if (l.Count != features)
        {
            throw new ArgumentException($"the scale has shape [{string.Join(", ", l.Shape)}] ({l.Count} entries); x [{string.Join(", ", x.Shape)}] needs one per column ({features}).", nameof(l));
        }

        if (x.Device.IsGpu)
        {
            return ScaleColumnsOnDevice(x, l);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        Ia3.ScaleColumns(x.Data, l.Data, y, n, features, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, l))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(y.Length) : [];
                float[] dl = l.RequiresGrad ? GC.AllocateUninitializedArray<float>(features) : [];
                Ia3.ScaleColumnsBackward(dy, dl.Length != 0 ? x.Data : [], l.Data, dx, dl, n, features, options);
                Grad.AddOwned(x, dx);
                Grad.AddOwned(l, dl);
            });
        }

        return output;
    }

    private static Tensor ScaleColumnsOnDevice(Tensor x, Tensor l)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, x.Shape);
        int n = x.Rows, dim = x.Columns;
        Ia3Kernels.ScaleColumns(accelerator, x.View(device), l.View(device), output.View(device), n, dim);
        if (Tape.ShouldRecord(x, l))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x);
                var dl = accelerator.Rent<float>(dim);
                Ia3Kernels.ScaleColumnsBackward(accelerator, output.DeviceGrad, x.View(device), l.View(device), dx?.View ?? default, dl.View, n, dim);
                DeviceGrad.Give((x, dx), (l, dl));
            });
        }

        return output;
    }
}
