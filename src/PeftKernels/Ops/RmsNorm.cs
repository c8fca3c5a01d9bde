// RMSNorm over the last dimension (HF LlamaRMSNorm), x [n, dim], w [dim]:
//   forward   rstd = 1 / sqrt(mean(x²) + eps);   y = w ⊙ x · rstd        (rstd [n] saved for backward)
//   backward  x̂ = x·rstd;  dw = Σ_rows dy ⊙ x̂;  dx = rstd · (dy⊙w − x̂ · mean(dy⊙w⊙x̂))
// CPU: Kernels.Cpu.RmsNorm; GPU: RmsNormKernels. The module is Nn/RmsNormLayer.cs.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>RMSNorm over the last dimension: y = weight ⊙ x / sqrt(mean(x²) + eps).</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, float eps, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        int dim = x.Columns, n = x.Rows;
        if (weight.Count != dim)
        {
            throw new ArgumentException($"RMSNorm weight has {weight.Count} elements; the input's last dimension is {dim}.", nameof(weight));
        }

        if (x.Device.IsGpu)
        {
            return RmsNormOnDevice(x, weight, eps);
        }

        var y = GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        var rstd = new float[n];
        Kernels.Cpu.RmsNorm.Forward(x.Data, weight.Data, eps, y, rstd, n, dim, options);
        var output = new Tensor(y, x.Shape);
        if (Tape.ShouldRecord(x, weight))
        {
            Tape.Record(output, () =>
            {
                var dy = output.Grad!;
                float[] dw = weight.RequiresGrad ? new float[dim] : [];
                if (x.RequiresGrad)
                {
                    Grad.Accumulate(x, dx => Kernels.Cpu.RmsNorm.Backward(dy, x.Data, weight.Data, rstd, dx, dw, n, dim, options));
                }
                else
                {
                    Kernels.Cpu.RmsNorm.Backward(dy, x.Data, weight.Data, rstd, [], dw, n, dim, options);
                }

                if (weight.RequiresGrad)
                {
                    Grad.Add(weight, dw);
                }
            });
        }

        return output;
    }

    private static Tensor RmsNormOnDevice(Tensor x, Tensor weight, float eps)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var output = OpChecks.DeviceTensor(device, x.Shape);
        var rstd = accelerator.Rent<float>(x.Rows);
        int n = x.Rows, dim = x.Columns;
        RmsNormKernels.Forward(accelerator, x.View(device), weight.View(device), eps, output.View(device), rstd.View, n, dim);
        if (!Tape.ShouldRecord(x, weight))
        {
            rstd.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var dx = DeviceGrad.Buffer(device, x);
            var dw = DeviceGrad.Buffer(device, weight);
            RmsNormKernels.Backward(accelerator, output.DeviceGrad, x.View(device), weight.View(device), rstd.View,
                dx?.View ?? default, dw?.View ?? default, n, dim);
            rstd.Dispose();
            DeviceGrad.Give((x, dx), (weight, dw));
        });
        return output;
    }
}
