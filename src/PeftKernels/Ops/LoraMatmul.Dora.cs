// DoRA through the fused LoRA op (docs/formats/methods.md#dora; PEFT's DoraLinearLayer): the
// factors carry a magnitude m [out]. With c = m / norm:
//   norm = ‖W + s·B·A‖₂ per output row   (DoraNorm.RowNorms over any storage), DETACHED: a
//                                         constant in backward, as PEFT does
//   z    = x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ         (the LoRA kernel, bias passed empty)
//   y    = c ⊙ z + b                      (Ia3.ScaleColumns; the bias is not scaled)
// Backward, g = dL/dy (Ia3.ScaleColumnsBackward, then the LoRA kernel backward):
//   ĝ = g ⊙ c;  dm = Σ_rows g ⊙ z / norm;  dx, dA, dB from the LoRA backward with ĝ;
//   dW = ĝᵀ·x only when W trains;  db = Σ_rows g.
// Dropout (docs/formats/methods.md#dora-dropout): PEFT computes, in training with p > 0, x·Wᵀ + b + (c − 1)⊙(drop(x)·Wᵀ) + c⊙s·drop(x)·Aᵀ·Bᵀ
// (its DoRA base term sees the dropped x); this op computes the formula above, dropout on the
// LoRA branch only as for plain LoRA. The two agree exactly with p = 0 and in evaluation mode;
// with p > 0 training differs by (c − 1)⊙((x − drop(x))·Wᵀ), zero in expectation.
// On a device, trainable base weights, biases and lora_B biases are refused under DoRA.
using System.Numerics.Tensors;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>DoRA's row norms ‖W + s·B·A‖₂ [out] of a weight of any storage for one adapter's factors (detached).</summary>
    public static float[] DoraNorms(Tensor weight, LoraFactors lora, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(lora);
        int outF = weight.Shape[0], inF = weight.Shape[1];
        lora.Check(inF, outF, "DoRA norms");
        var norms = new float[outF];
        DoraNorm.RowNorms(weight.AsWeight(), lora.A.Data, lora.B.Data, lora.Scale, norms, inF, outF, lora.Rank, options);
        return norms;
    }

    private static Tensor Dora(Tensor x, Tensor weight, Tensor? bias, LoraFactors lora, LoraOptions options, int[] shape)
    {
        int n = x.Rows, inF = weight.Shape[1], outF = weight.Shape[0], r = lora.Rank;
        var magnitude = lora.Magnitude!;
        var norms = DoraNorms(weight, lora, options.Kernel);
        var c = new float[outF];
        TensorPrimitives.Divide(magnitude.Data, norms, c);
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var h = GC.AllocateUninitializedArray<float>(checked(n * r));

        // z (the unscaled output) is kept only when dm is wanted; otherwise y is scaled in place.
        var z = magnitude.RequiresGrad && Tape.IsRecording ? GC.AllocateUninitializedArray<float>(y.Length) : y;
        Kernels.Cpu.LoraMatmul.Forward(x.Data, weight.AsWeight(), [], lora.A.Data, lora.B.Data, lora.Scale, z, h, n, inF, outF, r, options);
        Ia3.ScaleColumns(z, c, y, n, outF, options.Kernel);
        if (bias != null)
        {
            for (int i = 0; i < n; i++)
            {
                TensorPrimitives.Add(y.AsSpan(i * outF, outF), bias.Data, y.AsSpan(i * outF, outF));
            }
        }

        var output = new Tensor(y, shape);
        if (Tape.IsRecording && (x.RequiresGrad || lora.RequiresGrad || weight.RequiresGrad || bias?.RequiresGrad == true))
        {
            var saved = ReferenceEquals(z, y) ? null : z;
            var opts = options;
            Tape.Record(output, () =>
            {
                var g = output.Grad!;
                var scaled = GC.AllocateUninitializedArray<float>(g.Length);
                float[] dm = magnitude.RequiresGrad && saved != null ? GC.AllocateUninitializedArray<float>(outF) : [];
                Ia3.ScaleColumnsBackward(g, dm.Length != 0 ? saved : [], c, scaled, dm, n, outF, opts.Kernel);
                if (dm.Length != 0)
                {
                    TensorPrimitives.Divide(dm, norms, dm);
                    Grad.AddOwned(magnitude, dm);
                }

                LoraBackward(scaled, g, x, weight, bias, lora, h, opts);
            });
        }

        return output;
    }

    private static Tensor DoraOnDevice(Tensor x, Tensor weight, Tensor? bias, LoraFactors lora, LoraOptions options, int[] shape)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        var magnitude = lora.Magnitude!;
        bool record = Tape.IsRecording && (x.RequiresGrad || lora.A.RequiresGrad || lora.B.RequiresGrad || magnitude.RequiresGrad);
        OpChecks.DeviceInferenceOnly(Tape.IsRecording && (weight.RequiresGrad || bias?.RequiresGrad == true || lora.Bias?.RequiresGrad == true),
            $"Linear [{weight.Shape[0]}, {weight.Shape[1]}] DoRA adapter '{lora.Name}' (trainable base weight, bias or lora_B bias)");
        int n = x.Rows, inF = weight.Shape[1], outF = weight.Shape[0], r = lora.Rank;
        var w = weight.DeviceWeight(device);
        var (a, b) = (lora.A, lora.B);
        var norms = accelerator.Rent<float>(outF);
        var c = accelerator.Rent<float>(outF);
        DoraNormKernels.RowNorms(accelerator, w, a.View(device), b.View(device), lora.Scale, norms.View, inF, outF, r);
        DoraNormKernels.Divide(accelerator, magnitude.View(device), norms.View, c.View);
        var output = OpChecks.DeviceTensor(device, shape);
        var y = output.View(device);

        // z (the unscaled output) is kept only when dm is wanted; otherwise y is scaled in place.
        var z = record && magnitude.RequiresGrad ? accelerator.Rent<float>((long)n * outF) : null;
        var zv = z?.View ?? y;
        var h = accelerator.Rent<float>((long)n * r);
        LoraMatmulKernels.Forward(accelerator, x.View(device), w, default, a.View(device), b.View(device), lora.Scale, zv, h.View, n, inF, outF, r, options);
        Ia3Kernels.ScaleColumns(accelerator, zv, c.View, y, n, outF);
        if (bias != null)
        {
            AddKernels.Forward(accelerator, y, bias.View(device), y);
        }

        if (!record)
        {
            h.Dispose();
            c.Dispose();
            norms.Dispose();
            return output;
        }

        Tape.Record(output, () =>
        {
            var g = output.DeviceGrad;
            using var scaled = accelerator.Rent<float>((long)n * outF);
            var dm = z != null ? accelerator.Rent<float>(outF) : null;
            if (dm != null)
            {
                Ia3Kernels.ScaleColumnsBackward(accelerator, g, z!.View, c.View, scaled.View, dm.View, n, outF);
                DoraNormKernels.Divide(accelerator, dm.View, norms.View, dm.View);
            }
            else
            {
                Ia3Kernels.ScaleColumns(accelerator, g, c.View, scaled.View, n, outF);
            }

            var dx = DeviceGrad.Buffer(device, x);
            var da = DeviceGrad.Buffer(device, a);
            var db = accelerator.Rent<float>(b.Count);
            LoraMatmulKernels.Backward(accelerator, scaled.View, x.View(device), h.View, w, a.View(device), b.View(device), lora.Scale,
                dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            h.Dispose();
            z?.Dispose();
            c.Dispose();
            norms.Dispose();
            DeviceGrad.Give((x, dx), (a, da), (b, db), (magnitude, dm));
        });
        return output;
    }
}
