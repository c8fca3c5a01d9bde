// Linear on an accelerator (inference): y = x·Wᵀ + b through the GPU GEMM (fp32 weights, bf16
// ones widened to fp32 when uploaded), the fused 4-bit matmul, or with one active LoRA adapter
// the fused LoraMatmul / QLoraMatmul kernels (y and h in one pass, as on the CPU). Extra
// branches (several active adapters, per-row adapters) and DoRA run on the CPU only.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Nn;

public sealed partial class Linear
{
    private Tensor ForwardOnDevice(Tensor x, LoraAdapter? lora, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras, int[] shape, ForwardContext context)
    {
        var device = x.Device;
        string layer = $"Linear [{OutFeatures}, {InFeatures}]";
        if (extras.Count != 0 || lora?.UseDora == true)
        {
            throw new NotSupportedException($"{layer}: several active adapters, per-row adapters and DoRA run on the cpu device only.");
        }

        bool record = Tape.IsRecording && (x.RequiresGrad || Weight.RequiresGrad || Bias?.RequiresGrad == true
            || (lora != null && lora.Parameters.Any(p => p.RequiresGrad)));
        Functional.DeviceInferenceOnly(record, layer);
        int n = x.Rows, inF = InFeatures, outF = OutFeatures;
        var accelerator = device.Accelerator;
        var output = Functional.DeviceTensor(device, shape);
        var xv = x.View(device);
        var y = output.View(device);
        var w = Weight;
        if (lora == null)
        {
            if (w.DType == TensorDType.Q4)
            {
                Quant4MatmulKernels.Forward(accelerator, xv, w.QuantView(device), Bias?.View(device) ?? default, y, n, inF, outF);
            }
            else
            {
                GemmKernels.Multiply(accelerator, false, true, n, outF, inF, 1f, xv, w.View(device), 0f, y);
                if (Bias != null)
                {
                    AddKernels.Forward(accelerator, y, Bias.View(device), y);
                }
            }

            return output;
        }

        int r = lora.Rank;
        var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed));
        using var h = accelerator.Allocate1D<float>((long)n * r);
        using var loraBias = lora.Bias == null ? null : accelerator.Allocate1D(KernelBias(lora));
        var bias = loraBias?.View ?? Bias?.View(device) ?? default;
        if (w.DType == TensorDType.Q4)
        {
            QLoraMatmulKernels.Forward(accelerator, xv, w.QuantView(device), bias, lora.A.View(device), lora.B.View(device), lora.Scale, y, h.View, n, inF, outF, r, options);
        }
        else
        {
            LoraMatmulKernels.Forward(accelerator, xv, w.View(device), bias, lora.A.View(device), lora.B.View(device), lora.Scale, y, h.View, n, inF, outF, r, options);
        }

        accelerator.Synchronize();
        return output;
    }
}
