// The bottleneck adapters' non-linearity f, element-wise over z of any shape (docs/formats/bottleneck-adapters.md):
//   y = f(z),  f ∈ {relu, silu ("swish"), tanh};   dz = dy ⊙ f'(z)
// CPU: Kernels.Cpu.Activation. No GPU path yet: a device tensor is refused (the bottleneck runs on the CPU).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>f(z), element-wise, for a bottleneck non-linearity.</summary>
    /// <exception cref="NotSupportedException"><paramref name="z"/> lives on a GPU device.</exception>
    public static Tensor Activation(Tensor z, ActivationKind kind)
    {
        ArgumentNullException.ThrowIfNull(z);
        HostOnly(z, "Activation");
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

    /// <summary>Refuses a device tensor in an op that has only a CPU body.</summary>
    private static void HostOnly(Tensor t, string op)
    {
        if (t.Device.IsGpu)
        {
            throw new NotSupportedException($"Functional.{op} has no GPU path yet; its input is on {t.Device}. Run the bottleneck adapters on the CPU.");
        }
    }
}
