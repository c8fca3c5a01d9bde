// The bottleneck adapters' non-linearity f, element-wise over z of any shape (docs/formats/bottleneck-adapters.md):
//   y = f(z),  f ∈ {relu, silu ("swish"), tanh};   dz = dy ⊙ f'(z)
// CPU: Kernels.Cpu.Activation; GPU: ActivationKernels (no temporaries: the forward does not wait, the backward once).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>f(z), element-wise, for a bottleneck non-linearity.</summary>
    public static Tensor Activation(Tensor z, ActivationKind kind)
    {
        ArgumentNullException.ThrowIfNull(z);
        if (z.Device.IsGpu)
        {
            return ActivationOnDevice(z, kind);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)z.Count));
        Kernels.Cpu.Activation.Forward(kind, z.Data, y);
        var output = new Tensor(y, z.Shape);
        if (Tape.ShouldRecord(z))
        {
            Tape.Record(output, () =>
            {
                var dz = GC.AllocateUninitializedArray<float>(y.Length);
                Kernels.Cpu.Activation.Backward(kind, output.Grad!, z.Data, dz);
                Grad.AddOwned(z, dz);
            });
        }

        return output;
    }

    private static Tensor ActivationOnDevice(Tensor z, ActivationKind kind)
    {
        var device = z.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, z.Shape);
        ActivationKernels.Forward(accelerator, kind, z.View(device), output.View(device));
        if (Tape.ShouldRecord(z))
        {
            Tape.Record(output, () =>
            {
                var dz = DeviceGrad.Buffer(device, z)!;
                ActivationKernels.Backward(accelerator, kind, output.DeviceGrad, z.View(device), dz.View);
                DeviceGrad.Give(z, dz);
            });
        }

        return output;
    }
}
