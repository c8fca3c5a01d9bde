// Linear on an accelerator: y = x·Wᵀ + b through GemmKernels.Forward over the weight's device
// operand (Weight.DeviceWeight: fp32, bf16 / fp16 widened to fp32 when uploaded, or 4-bit), or with
// one active LoRA adapter the fused LoraMatmulKernels (y and h in one pass, as on the CPU). DoRA and
// extra branches (several active adapters, per-row adapters) go to Linear.DeviceAdapters.cs.
// Backward, g = dL/dy: without an adapter dx = g·W (GemmKernels.Backward); with one,
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
            GemmKernels.Forward(accelerator, xv, w.DeviceWeight(device), Bias?.View(device) ?? default, y, n, inF, outF);

            if (record)
            {
                Tape.Record(output, () =>
                {
                    var dx = Functional.GradBuffer(device, x);
                    var g = output.DeviceGrad;
                    if (dx != null)
                    {
                        GemmKernels.Backward(accelerator, g, w.DeviceWeight(device), dx.View, n, inF, outF);
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
        LoraMatmulKernels.Forward(accelerator, xv, w.DeviceWeight(device), bias, lora.A.View(device), lora.B.View(device), lora.Scale, y, h.View, n, inF, outF, r, options);

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
            LoraMatmulKernels.Backward(accelerator, g, x.View(device), h.View, w.DeviceWeight(device), a.View(device), b.View(device), lora.Scale,
                dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);

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
                AddKernels.ColumnSums(accelerator, g, db.View, n, OutFeatures);
                if (scale is float s)
                {
                    AdamWKernels.Scale(accelerator, db.View, s);
                }

                accelerator.Synchronize();
                Functional.GiveGrad(bias, db);
            }
        }
    }
}
