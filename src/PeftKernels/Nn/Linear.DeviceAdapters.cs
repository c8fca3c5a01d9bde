// Linear on an accelerator with more than one fused LoRA adapter: DoRA and extra LoRA branches
// (several active adapters, per-row adapters), the math of Linear.Dora.cs and LoraBranch.cs.
// DoRA (the fused adapter carries a magnitude m [out]; the norm is detached, as on the CPU):
//   norm = ‖W + s·B·A‖₂ per row (DoraNormKernels, fp32 / widened bf16, fp16 / 4-bit W);  c = m / norm
//   z = x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ (LoraMatmulKernels / QLoraMatmulKernels, no bias);  y = c ⊙ z + b
//   backward, g = dL/dy: ĝ = g ⊙ c;  dm = (Σ_rows g ⊙ z) / norm;  dx, dA, dB from the LoRA backward with ĝ
// Extra branches (LoraBranchKernels), rows R of each (all rows, or one adapter's rows of a per-row
// batch; "__base__" rows belong to none): y'[R] = y[R] + s·drop(x[R])·Aᵀ·Bᵀ + s·bias_B, the dropout
// mask of the gathered rows as on the CPU. While recording y' is a new tensor (its gradient is
// handed on to y unchanged); in inference the branches are added to y in place.
// Gradients are handed over through Functional.GiveGrad. Trainable base weights, biases and lora_B
// biases are refused here, as for the single fused adapter.
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Nn;

public sealed partial class Linear
{
    /// <summary>The fused adapter (DoRA, plain LoRA or none), then the extra branches, on the input's device.</summary>
    private Tensor ForwardAdaptersOnDevice(Tensor x, LoraAdapter? lora, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras, int[] shape, ForwardContext context)
    {
        var y = lora?.UseDora == true ? DoraOnDevice(x, lora, shape, context) : ForwardOnDevice(x, lora, [], shape, context);
        return extras.Count == 0 ? y : BranchesOnDevice(x, y, extras, shape, context);
    }

    private Tensor DoraOnDevice(Tensor x, LoraAdapter lora, int[] shape, ForwardContext context)
    {
        var device = x.Device;
        string layer = $"Linear [{OutFeatures}, {InFeatures}] DoRA adapter '{lora.Name}'";
        var magnitude = lora.Magnitude!;
        bool record = Tape.IsRecording && (x.RequiresGrad || lora.Parameters.Any(p => p.RequiresGrad));
        Functional.DeviceInferenceOnly(Tape.IsRecording && (Weight.RequiresGrad || Bias?.RequiresGrad == true || lora.Bias?.RequiresGrad == true),
            $"{layer} (trainable base weight, bias or lora_B bias)");
        int n = x.Rows, inF = InFeatures, outF = OutFeatures, r = lora.Rank;
        var accelerator = device.Accelerator;
        var w = Weight;
        var a = lora.A;
        var b = lora.B;
        var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed));
        var norms = accelerator.Allocate1D<float>(outF);
        var c = accelerator.Allocate1D<float>(outF);
        if (w.DType == TensorDType.Q4)
        {
            DoraNormKernels.RowNorms(accelerator, w.QuantView(device), a.View(device), b.View(device), lora.Scale, norms.View, inF, outF, r);
        }
        else
        {
            DoraNormKernels.RowNorms(accelerator, w.View(device), a.View(device), b.View(device), lora.Scale, norms.View, inF, outF, r);
        }

        DoraNormKernels.Divide(accelerator, magnitude.View(device), norms.View, c.View);
        var output = Functional.DeviceTensor(device, shape);
        var y = output.View(device);

        // z (the unscaled output) is kept only when dm is wanted; otherwise y is scaled in place.
        var z = record && magnitude.RequiresGrad ? accelerator.Allocate1D<float>((long)n * outF) : null;
        var zv = z?.View ?? y;
        var h = accelerator.Allocate1D<float>((long)n * r);
        if (w.DType == TensorDType.Q4)
        {
            QLoraMatmulKernels.Forward(accelerator, x.View(device), w.QuantView(device), default, a.View(device), b.View(device), lora.Scale, zv, h.View, n, inF, outF, r, options);
        }
        else
        {
            LoraMatmulKernels.Forward(accelerator, x.View(device), w.View(device), default, a.View(device), b.View(device), lora.Scale, zv, h.View, n, inF, outF, r, options);
        }

        Ia3Kernels.ScaleColumns(accelerator, zv, c.View, y, n, outF);
        if (Bias != null)
        {
            AddKernels.Forward(accelerator, y, Bias.View(device), y);
        }

        accelerator.Synchronize();
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
            using var scaled = accelerator.Allocate1D<float>((long)n * outF);
            var dm = z != null ? accelerator.Allocate1D<float>(outF) : null;
            if (dm != null)
            {
                Ia3Kernels.ScaleColumnsBackward(accelerator, g, z!.View, c.View, scaled.View, dm.View, n, outF);
                DoraNormKernels.Divide(accelerator, dm.View, norms.View, dm.View);
            }
            else
            {
                Ia3Kernels.ScaleColumns(accelerator, g, c.View, scaled.View, n, outF);
            }

            var dx = Functional.GradBuffer(device, x);
            var da = Functional.GradBuffer(device, a);
            var db = accelerator.Allocate1D<float>(b.Count);
            if (w.DType == TensorDType.Q4)
            {
                QLoraMatmulKernels.Backward(accelerator, scaled.View, x.View(device), h.View, w.QuantView(device), a.View(device), b.View(device), lora.Scale,
                    dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            }
            else
            {
                LoraMatmulKernels.Backward(accelerator, scaled.View, x.View(device), h.View, w.View(device), a.View(device), b.View(device), lora.Scale,
                    dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            }

            accelerator.Synchronize();
            h.Dispose();
            z?.Dispose();
            c.Dispose();
            norms.Dispose();
            Functional.GiveGrad(x, dx);
            Functional.GiveGrad(a, da);
            Functional.GiveGrad(b, db);
            Functional.GiveGrad(magnitude, dm);
        });
        return output;
    }

    private Tensor BranchesOnDevice(Tensor x, Tensor y, IReadOnlyList<(LoraAdapter Adapter, int[]? Rows)> extras, int[] shape, ForwardContext context)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        string layer = $"Linear [{OutFeatures}, {InFeatures}]";
        Functional.DeviceInferenceOnly(Tape.IsRecording && extras.Any(e => e.Adapter.Bias?.RequiresGrad == true), $"{layer} (trainable lora_B bias of an extra adapter)");
        bool record = Tape.IsRecording && (y.RequiresGrad || x.RequiresGrad || extras.Any(e => e.Adapter.A.RequiresGrad || e.Adapter.B.RequiresGrad));
        int n = x.Rows, inF = InFeatures, outF = OutFeatures;
        var output = y;
        if (record)
        {
            output = Functional.DeviceTensor(device, shape);
            output.View(device).CopyFrom(y.View(device));
        }

        var branches = new List<(LoraAdapter Lora, int[]? Rows, LoraOptions Options, MemoryBuffer1D<float, Stride1D.Dense> H)>();
        foreach (var (lora, rows) in extras)
        {
            var options = new LoraOptions(Training ? lora.Dropout : 0f, ForwardContext.Mix(lora.Seed, context.DropoutSeed));
            var h = accelerator.Allocate1D<float>((long)(rows?.Length ?? n) * lora.Rank);
            using var bias = lora.Bias == null ? null : accelerator.Allocate1D(ScaledBias(lora));
            LoraBranchKernels.ForwardAccumulate(accelerator, x.View(device), rows, lora.A.View(device), lora.B.View(device), bias?.View ?? default, lora.Scale,
                output.View(device), h.View, n, inF, outF, lora.Rank, options);
            accelerator.Synchronize();
            branches.Add((lora, rows, options, h));
        }

        if (!record)
        {
            branches.ForEach(br => br.H.Dispose());
            return output;
        }

        Tape.Record(output, () =>
        {
            var g = output.DeviceGrad;
            if (y.RequiresGrad)
            {
                var copy = accelerator.Allocate1D<float>(g.Length);
                copy.View.CopyFrom(g);
                accelerator.Synchronize();
                Functional.GiveGrad(y, copy);
            }

            foreach (var (lora, rows, options, h) in branches)
            {
                var dx = Functional.GradBuffer(device, x);
                var da = Functional.GradBuffer(device, lora.A);
                var db = Functional.GradBuffer(device, lora.B);
                LoraBranchKernels.Backward(accelerator, g, x.View(device), rows, h.View, lora.A.View(device), lora.B.View(device), lora.Scale,
                    dx?.View ?? default, da?.View ?? default, db?.View ?? default, n, inF, outF, lora.Rank, options);
                accelerator.Synchronize();
                h.Dispose();
                Functional.GiveGrad(x, dx);
                Functional.GiveGrad(lora.A, da);
                Functional.GiveGrad(lora.B, db);
            }
        });
        return output;
    }

    /// <summary>s·bias_B of an extra branch (the kernel adds it to each of the branch's rows).</summary>
    private static float[] ScaledBias(LoraAdapter lora)
    {
        var bias = new float[lora.Bias!.Count];
        System.Numerics.Tensors.TensorPrimitives.Multiply(lora.Bias.Data, lora.Scale, bias);
        return bias;
    }
}
