// Rotary position embedding, rotate-half form (HF Llama; docs/formats/llama-checkpoints.md#forward), x [n, heads·headDim], positions [n]:
//   θ_j = positions[t] · invFreq[j];   y = x ⊙ cos θ + rotate_half(x) ⊙ sin θ
//   backward: a rotation, so dx = the rotation of dy by −θ
// CPU: Kernels.Cpu.Rope; GPU: RopeKernels (positions and frequencies uploaded per call).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>Rotary embedding (rotate-half) of x [tokens, heads·headDim]; token t has position positions[t].</summary>
    public static Tensor Rope(Tensor x, int[] positions, float[] invFreq, int heads, int headDim, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(positions);
        ArgumentNullException.ThrowIfNull(invFreq);
        int n = positions.Length;
        if (x.Count != (long)n * heads * headDim)
        {
            throw new ArgumentException($"RoPE input has shape [{string.Join(", ", x.Shape)}]; expected {n} tokens × {heads} heads × {headDim}.", nameof(x));
        }

        if (x.Device.IsGpu)
        {
            return RopeOnDevice(x, positions, invFreq, heads, headDim);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        Kernels.Cpu.Rope.Forward(x.Data, positions, invFreq, y, n, heads, headDim, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () => Grad.Accumulate(x, dx => Kernels.Cpu.Rope.Backward(output.Grad!, positions, invFreq, dx, n, heads, headDim, options)));
        }

        return output;
    }

    private static Tensor RopeOnDevice(Tensor x, int[] positions, float[] invFreq, int heads, int headDim)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, x.Shape);
        using (var pos = accelerator.Upload(positions))
        using (var freq = accelerator.Upload(invFreq))
        {
            RopeKernels.Forward(accelerator, x.View(device), pos.View, freq.View, output.View(device), positions.Length, heads, headDim);
        }

        if (Tape.ShouldRecord(x))
        {
            Tape.Record(output, () =>
            {
                var dx = DeviceGrad.Buffer(device, x)!;
                using (var pos = accelerator.Upload(positions))
                using (var freq = accelerator.Upload(invFreq))
                {
                    RopeKernels.Backward(accelerator, output.DeviceGrad, pos.View, freq.View, dx.View, positions.Length, heads, headDim);
                }

                DeviceGrad.Give(x, dx);
            });
        }

        return output;
    }
}
