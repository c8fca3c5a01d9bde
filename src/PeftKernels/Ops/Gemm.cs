// The base linear map (torch's F.linear) over a weight of any storage, x [n, in], W [out, in]
// (fp32, bf16, fp16 or 4-bit NF4/FP4: one WeightOperand), b [out] optional:
//   forward   y = x·Wᵀ + b                                 [n, out]
//   backward  dx = dy·W                                    [n, in]   (4-bit: the fused dequant-matmul)
//             dW = dyᵀ·x      only when W itself trains (fp32: full fine-tuning, pre-training)
//             db = Σ_rows dy  only when the bias trains
// CPU: Kernels.Cpu.Gemm (Forward/Backward over a WeightOperand); GPU: GemmKernels (over a
// DeviceWeightOperand). BaseGrads is shared with LoraMatmul, whose W and b get the same gradients.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>y = x·Wᵀ + b for x [.., in], a weight W [out, in] of any storage and an optional fp32 bias [out] (F.linear).</summary>
    public static Tensor Gemm(Tensor x, Tensor weight, Tensor? bias, KernelOptions options = default)
    {
        var (n, inF, outF) = LinearShapes(x, weight, bias, "linear");
        int[] shape = [.. x.Shape[..^1], outF];
        if (x.Device.IsGpu)
        {
            return GemmOnDevice(x, weight, bias, shape);
        }

        var w = weight.AsWeight();
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        Kernels.Cpu.Gemm.Forward(x.Data, w, bias?.Data ?? [], y, n, inF, outF, options);
        var output = new Tensor(y, shape);
        if (Tape.IsRecording && (x.RequiresGrad || weight.RequiresGrad || bias?.RequiresGrad == true))
        {
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                if (x.RequiresGrad)
                {
                    Grad.Accumulate(x, dx => Kernels.Cpu.Gemm.Backward(g, w, dx, n, inF, outF, options));
                }

                BaseGrads(g, g, x, weight, bias, null, n, options);
            });
        }

        return output;
    }

    /// <summary>(n, in, out) of a linear map, checking x [.., in], W [out, in] and b [out].</summary>
    internal static (int N, int In, int Out) LinearShapes(Tensor x, Tensor weight, Tensor? bias, string op)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Length != 2)
        {
            throw new ArgumentException($"{op}: the weight must be 2-D [out, in]; got [{string.Join(", ", weight.Shape)}].", nameof(weight));
        }

        int outF = weight.Shape[0], inF = weight.Shape[1];
        if (x.Columns != inF)
        {
            throw new ArgumentException($"{op}: input [{string.Join(", ", x.Shape)}] has last dimension {x.Columns}; the weight [{outF}, {inF}] needs {inF}.", nameof(x));
        }

        if (bias != null && (bias.Count != outF || bias.DType != TensorDType.F32))
        {
            throw new ArgumentException($"{op}: the bias must be fp32 [{outF}]; got {bias.DType} [{string.Join(", ", bias.Shape)}].", nameof(bias));
        }

        return (x.Rows, inF, outF);
    }

    /// <summary>
    /// The base weight's and biases' gradients on the host: dW += gWᵀ·x (trainable W only; gW differs from g under DoRA's
    /// scaling), db += Σ_rows g (trainable bias) and dbias_B += s·Σ_rows g (a trainable lora_B bias of scale s).
    /// </summary>
    internal static void BaseGrads(float[] gW, float[] g, Tensor x, Tensor weight, Tensor? bias, (Tensor Bias, float Scale)? loraBias, int n, KernelOptions k)
    {
        int outF = weight.Shape[0], inF = weight.Shape[1];
        if (weight.RequiresGrad)
        {
            var dw = weight.GradOrCreate();
            Kernels.Cpu.Gemm.Multiply(true, false, outF, inF, n, 1f, gW, x.Data, 1f, dw, k);
        }

        if (bias?.RequiresGrad == true)
        {
            Grad.AddColumnSums(bias, g, n, outF, 1f);
        }

        if (loraBias is { } lb && lb.Bias.RequiresGrad)
        {
            Grad.AddColumnSums(lb.Bias, g, n, outF, lb.Scale);
        }
    }

    private static Tensor GemmOnDevice(Tensor x, Tensor weight, Tensor? bias, int[] shape)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        int n = x.Rows, inF = weight.Shape[1], outF = weight.Shape[0];
        var w = weight.DeviceWeight(device);
        var output = OpChecks.DeviceTensor(device, shape);
        GemmKernels.Forward(accelerator, x.View(device), w, bias?.View(device) ?? default, output.View(device), n, inF, outF);
        if (Tape.IsRecording && (x.RequiresGrad || weight.RequiresGrad || bias?.RequiresGrad == true))
        {
            Tape.Record(output, () =>
            {
                var g = output.DeviceGrad;
                var dx = DeviceGrad.Buffer(device, x);
                if (dx != null)
                {
                    GemmKernels.Backward(accelerator, g, w, dx.View, n, inF, outF);
                }

                DeviceGrad.Give(x, dx);
                BaseGradsOnDevice(g, x, weight, bias, null);
            });
        }

        return output;
    }

    /// <summary>The device twin of <see cref="BaseGrads"/> (no DoRA scaling here: DoRA refuses trainable base weights on a device).</summary>
    internal static void BaseGradsOnDevice(ArrayView1D<float, Stride1D.Dense> g, Tensor x, Tensor weight, Tensor? bias, (Tensor Bias, float Scale)? loraBias)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        int n = x.Rows, outF = weight.Shape[0], inF = weight.Shape[1];
        if (weight.RequiresGrad)
        {
            var dw = accelerator.Rent<float>(weight.Count);
            GemmKernels.Multiply(accelerator, true, false, outF, inF, n, 1f, g, x.View(device), 0f, dw.View);
            DeviceGrad.Give(weight, dw);
        }

        foreach (var (b, scale) in new[] { (bias, 1f), (loraBias?.Bias, loraBias?.Scale ?? 1f) })
        {
            if (b?.RequiresGrad == true)
            {
                var db = accelerator.Rent<float>(outF);
                ColumnSumsOnDevice(accelerator, g, db.View, n, outF, scale);
                DeviceGrad.Give(b, db);
            }
        }
    }
}
