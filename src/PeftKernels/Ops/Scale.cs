// Scaling by one scalar s (a one-element tensor: a constant, or a learned parameter):
//   y = s·x;   dx = s·dy;   ds = Σ dy ⊙ x
// Used for a bottleneck adapter's float or "learned" scaling and for Average's weights
// (docs/formats/bottleneck-adapters.md). CPU: TensorPrimitives; GPU: ScaleKernels. On a device, a learned s is read
// through its device view; a constant s (a host tensor without a device copy) is uploaded as a one-element
// temporary, freed after the forward's wait (no gradient) or the backward's.
using System.Numerics.Tensors;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>s·x for a one-element <paramref name="s"/>.</summary>
    public static Tensor Scale(Tensor x, Tensor s)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(s);
        if (s.Count != 1)
        {
            throw new ArgumentException($"the scale must have one element; it has shape [{string.Join(", ", s.Shape)}].", nameof(s));
        }

        if (x.Device.IsGpu)
        {
            return ScaleOnDevice(x, s);
        }

        float scale = s.Data[0];
        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        TensorPrimitives.Multiply(x.Data, scale, y);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, s))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                if (x.RequiresGrad)
                {
                    var dx = GC.AllocateUninitializedArray<float>(y.Length);
                    TensorPrimitives.Multiply(dy, scale, dx);
                    Grad.AddOwned(x, dx);
                }

                if (s.RequiresGrad)
                {
                    Grad.AddOwned(s, [TensorPrimitives.Dot(dy, x.Data)]);
                }
            });
        }

        return output;
    }

    private static Tensor ScaleOnDevice(Tensor x, Tensor s)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var staged = s.Device.IsGpu ? null : accelerator.Upload(s.Data);
        if (staged == null)
        {
            OpChecks.SameDevice(device, s, nameof(s));
        }

        var scale = staged?.View ?? s.View(device);
        var output = OpChecks.DeviceTensor(device, x.Shape);
        ScaleKernels.Forward(accelerator, x.View(device), scale, output.View(device));
        if (!Tape.ShouldRecord(x, s))
        {
            if (staged != null)
            {
                staged.Dispose();
            }

            return output;
        }

        Tape.Record(output, () =>
        {
            var dx = DeviceGrad.Buffer(device, x);
            var ds = DeviceGrad.Buffer(device, s);
            ScaleKernels.Backward(accelerator, output.DeviceGrad, x.View(device), scale, dx?.View ?? default, ds?.View ?? default);
            staged?.Dispose();
            DeviceGrad.Give((x, dx), (s, ds));
        });
        return output;
    }
}
