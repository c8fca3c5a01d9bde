// Linear on an accelerator: y = x·Wᵀ + b through the GPU GEMM (fp32 weights, bf16 ones widened
// to fp32 when uploaded), the fused 4-bit matmul, or with one active LoRA adapter the fused
// LoraMatmul / QLoraMatmul kernels (y and h in one pass, as on the CPU). DoRA and extra branches
// (several active adapters, per-row adapters) go to Linear.DeviceAdapters.cs.
// Backward, g = dL/dy: without an adapter dx = g·W (GEMM, or the 4-bit dequant-matmul); with one,
// the fused LoRA backward gives dx, dA and dB (h kept from the forward, the same dropout mask).
// A trainable (fp32) base weight gets dW = gᵀ·x (GEMM), a trainable bias db = Σ_rows g, a lora_B
// bias s·Σ_rows g (full fine-tuning and pre-training on a device); all stay on the device.
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
        if (extras.Count != 0 || lora?.UseDora == true)
        {
            return ForwardAdaptersOnDevice(x, lora, extras, shape, context);
        }

        var device = x.Device;
        bool record = Tape.IsRecording && (x.RequiresGrad || Weight.RequiresGrad || Bias?.RequiresGrad == true
            || (lora != null && lora.Parameters.Any(p => p.RequiresGrad)));
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

            if (record)
            {
                Tape.Record(output, () =>
                {
                    var dx = Functional.GradBuffer(device, x);
                    var g = output.DeviceGrad;
                    if (dx != null && w.DType == TensorDType.Q4)
                    {
                        Quant4MatmulKernels.Backward(accelerator, g, w.QuantView(device), dx.View, n, inF, outF);
                    }
                    else if (dx != null)
                    {
                        GemmKernels.Multiply(accelerator, false, false, n, inF, outF, 1f, g, w.View(device), 0f, dx.View);
                    }

                    accelerator.Synchronize();
                    Functional.GiveGrad(x, dx);
                    WeightAndBiasGradsOnDevice(g, x, null);
                });
            }

            return output;
        }

        int r = lora.Rank;
        var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed));
        var h = accelerator.Allocate1D<float>((long)n * r);
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
        if (!record)
        {
            h.Dispose();
            return output;
        }

        var a = lora.A;
        var b = lora.B;
        Tape.Record(output, () =>
        {
            var g = output.DeviceGrad;
            var dx = Functional.GradBuffer(device, x);
            var da = Functional.GradBuffer(device, a);
            var db = accelerator.Allocate1D<float>(b.Count);
            if (w.DType == TensorDType.Q4)
            {
                QLoraMatmulKernels.Backward(accelerator, g, x.View(device), h.View, w.QuantView(device), a.View(device), b.View(device), lora.Scale,
                    dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            }
            else
            {
                LoraMatmulKernels.Backward(accelerator, g, x.View(device), h.View, w.View(device), a.View(device), b.View(device), lora.Scale,
                    dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            }

            accelerator.Synchronize();
            h.Dispose();
            Functional.GiveGrad(x, dx);
            Functional.GiveGrad(a, da);
            Functional.GiveGrad(b, db);
            WeightAndBiasGradsOnDevice(g, x, lora);
        });
        return output;
    }

    /// <summary>dW = gᵀ·x, db = Σ_rows g and the lora_B bias's s·Σ_rows g, for those that are trainable, kept on the device.</summary>
    private void WeightAndBiasGradsOnDevice(ArrayView1D<float, Stride1D.Dense> g, Tensor x, LoraAdapter? lora)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        int n = x.Rows;
        if (Weight.RequiresGrad)
        {
            var dw = accelerator.Allocate1D<float>(Weight.Count);
            GemmKernels.Multiply(accelerator, true, false, OutFeatures, InFeatures, n, 1f, g, x.View(device), 0f, dw.View);
            accelerator.Synchronize();
            Functional.GiveGrad(Weight, dw);
        }

        foreach (var (bias, scale) in new[] { (Bias, (float?)null), (lora?.Bias, lora?.Scale) })
        {
            if (bias?.RequiresGrad == true)
            {
                var db = accelerator.Allocate1D<float>(OutFeatures);
                db.MemSetToZero();
                ColumnSumsKernels.Add(accelerator, g, db.View, n, OutFeatures, scale ?? 1f);

                accelerator.Synchronize();
                Functional.GiveGrad(bias, db);
            }
        }
    }
}
