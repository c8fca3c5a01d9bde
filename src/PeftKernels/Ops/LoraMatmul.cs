// The fused LoRA linear over a frozen weight of any storage (LoRA over fp32/bf16/fp16, QLoRA over
// 4-bit NF4/FP4; DoRA when the factors carry a magnitude: LoraMatmul.Dora.cs). x [n, in],
// W [out, in], A [r, in], B [out, r], scale s, dropout p with a seeded mask, optional bias b [out]
// and lora_B bias bias_B [out]:
//   h = drop(x)·Aᵀ                                  [n, r]    (kept for backward)
//   y = x·Wᵀ + b + s·bias_B + s·h·Bᵀ                [n, out]  (one GEMM over [x | s·h] and [W | B])
// Backward, g = dL/dy (the kernel's chain rule, docs/formats/methods.md#lora):
//   dB = s·gᵀ·h;  dh = s·g·B;  dA = dhᵀ·drop(x);  dx = g·W + drop'(dh·A)  (same mask and 1/(1 − p))
//   dW = gᵀ·x only when W trains;  db = Σ_rows g;  dbias_B = s·Σ_rows g   (Functional.BaseGrads)
// CPU: Kernels.Cpu.LoraMatmul (QLoraMatmul for 4-bit) over a WeightOperand; GPU: LoraMatmulKernels
// over a DeviceWeightOperand. Further adapters on the same layer are LoraBranch ops added after it.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

/// <summary>The factors of one LoRA adapter as the ops see them: A [r, in], B [out, r], the scale, and the optional lora_B bias [out] and DoRA magnitude [out].</summary>
/// <param name="A">lora_A [r, in].</param>
/// <param name="B">lora_B [out, r].</param>
/// <param name="Scale">s = α / r (or α / √r with rsLoRA).</param>
/// <param name="Bias">lora_B's bias [out], or null.</param>
/// <param name="Magnitude">DoRA's magnitude vector m [out], or null for plain LoRA.</param>
/// <param name="Name">The adapter's name, for error messages.</param>
public sealed record LoraFactors(Tensor A, Tensor B, float Scale, Tensor? Bias = null, Tensor? Magnitude = null, string Name = "default")
{
    /// <summary>The rank r.</summary>
    public int Rank => A.Shape[0];

    /// <summary>True when any factor trains.</summary>
    public bool RequiresGrad => A.RequiresGrad || B.RequiresGrad || Bias?.RequiresGrad == true || Magnitude?.RequiresGrad == true;

    /// <summary>Checks the factors against a layer [out, in], naming the adapter and what was wrong.</summary>
    internal void Check(int inF, int outF, string op)
    {
        if (A.Shape.Length != 2 || B.Shape.Length != 2 || A.Shape[1] != inF || B.Shape[0] != outF || B.Shape[1] != A.Shape[0])
        {
            throw new ArgumentException($"{op}, adapter '{Name}': A [{string.Join(", ", A.Shape)}] and B [{string.Join(", ", B.Shape)}] do not fit a layer [{outF}, {inF}]; "
                + $"expected A [r, {inF}] and B [{outF}, r].", nameof(A));
        }

        if (Bias != null && Bias.Count != outF)
        {
            throw new ArgumentException($"{op}, adapter '{Name}': lora_B bias has {Bias.Count} elements; expected {outF}.", nameof(Bias));
        }

        if (Magnitude != null && Magnitude.Count != outF)
        {
            throw new ArgumentException($"{op}, adapter '{Name}': DoRA magnitude has {Magnitude.Count} elements; expected {outF}.", nameof(Magnitude));
        }
    }
}

public static partial class Functional
{
    /// <summary>
    /// y = x·Wᵀ + b + s·drop(x)·Aᵀ·Bᵀ (+ s·bias_B) over a frozen or trainable weight W of any storage, in one fused GEMM;
    /// DoRA ((m / ‖W + s·B·A‖) ⊙ (x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ) + b) when the factors carry a magnitude.
    /// </summary>
    public static Tensor LoraMatmul(Tensor x, Tensor weight, Tensor? bias, LoraFactors lora, in LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(lora);
        var (n, inF, outF) = LinearShapes(x, weight, bias, "LoRA matmul");
        lora.Check(inF, outF, "LoRA matmul");
        int[] shape = [.. x.Shape[..^1], outF];
        if (lora.Magnitude != null)
        {
            return x.Device.IsGpu ? DoraOnDevice(x, weight, bias, lora, options, shape) : Dora(x, weight, bias, lora, options, shape);
        }

        if (x.Device.IsGpu)
        {
            return LoraMatmulOnDevice(x, weight, bias, lora, options, shape);
        }

        int r = lora.Rank;
        var y = GC.AllocateUninitializedArray<float>(checked(n * outF));
        var h = GC.AllocateUninitializedArray<float>(checked(n * r));
        var w = weight.AsWeight();
        Kernels.Cpu.LoraMatmul.Forward(x.Data, w, KernelBias(bias, lora), lora.A.Data, lora.B.Data, lora.Scale, y, h, n, inF, outF, r, options);
        var output = new Tensor(y, shape);
        if (Tape.IsRecording && (x.RequiresGrad || lora.RequiresGrad || weight.RequiresGrad || bias?.RequiresGrad == true))
        {
            var opts = options;
            Tape.Record(output, () => LoraBackward(output.Grad!, output.Grad!, x, weight, bias, lora, h, opts));
        }

        return output;
    }

    /// <summary>The host backward of the fused op: gl is the gradient the LoRA kernel sees (g, or g ⊙ c under DoRA), g the output's.</summary>
    private static void LoraBackward(float[] gl, float[] g, Tensor x, Tensor weight, Tensor? bias, LoraFactors lora, float[] h, in LoraOptions options)
    {
        int n = x.Rows, inF = weight.Shape[1], outF = weight.Shape[0], r = lora.Rank;
        var (a, b) = (lora.A, lora.B);
        if (x.RequiresGrad || a.RequiresGrad || b.RequiresGrad)
        {
            float[] dx = x.RequiresGrad ? GC.AllocateUninitializedArray<float>(n * inF) : [];
            float[] da = a.RequiresGrad ? GC.AllocateUninitializedArray<float>(r * inF) : [];
            var db = GC.AllocateUninitializedArray<float>(outF * r);
            Kernels.Cpu.LoraMatmul.Backward(gl, x.Data, h, weight.AsWeight(), a.Data, b.Data, lora.Scale, dx, da, db, n, inF, outF, r, options);
            Grad.AddOwned(x, dx);
            Grad.AddOwned(a, da);
            Grad.AddOwned(b, db);
        }

        BaseGrads(gl, g, x, weight, bias, lora.Bias == null ? null : (lora.Bias, lora.Scale), n, options.Kernel);
    }

    /// <summary>The kernel's bias argument: the base bias, plus s·bias_B when the adapter has a lora_B bias.</summary>
    private static float[] KernelBias(Tensor? bias, LoraFactors lora)
    {
        if (lora.Bias == null)
        {
            return bias?.Data ?? [];
        }

        var sum = new float[lora.Bias.Count];
        System.Numerics.Tensors.TensorPrimitives.Multiply(lora.Bias.Data, lora.Scale, sum);
        if (bias != null)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(sum, bias.Data, sum);
        }

        return sum;
    }

    private static Tensor LoraMatmulOnDevice(Tensor x, Tensor weight, Tensor? bias, LoraFactors lora, LoraOptions options, int[] shape)
    {
        var device = x.Device;
        var accelerator = device.Accelerator;
        bool record = Tape.IsRecording && (x.RequiresGrad || weight.RequiresGrad || bias?.RequiresGrad == true || lora.RequiresGrad);
        int n = x.Rows, inF = weight.Shape[1], outF = weight.Shape[0], r = lora.Rank;
        var w = weight.DeviceWeight(device);
        var output = OpChecks.DeviceTensor(device, shape);
        var h = accelerator.Rent<float>((long)n * r);
        using (var loraBias = lora.Bias == null ? null : accelerator.Upload(KernelBias(bias, lora)))
        {
            var kernelBias = loraBias?.View ?? bias?.View(device) ?? default;
            LoraMatmulKernels.Forward(accelerator, x.View(device), w, kernelBias, lora.A.View(device), lora.B.View(device), lora.Scale,
                output.View(device), h.View, n, inF, outF, r, options);
        }

        if (!record)
        {
            h.Dispose();
            return output;
        }

        var (a, b) = (lora.A, lora.B);
        Tape.Record(output, () =>
        {
            var g = output.DeviceGrad;
            var dx = DeviceGrad.Buffer(device, x);
            var da = DeviceGrad.Buffer(device, a);
            var db = accelerator.Rent<float>(b.Count);
            LoraMatmulKernels.Backward(accelerator, g, x.View(device), h.View, w, a.View(device), b.View(device), lora.Scale,
                dx?.View ?? default, da?.View ?? default, db.View, n, inF, outF, r, options);
            h.Dispose();
            DeviceGrad.Give((x, dx), (a, da), (b, db));
            BaseGradsOnDevice(g, x, weight, bias, lora.Bias == null ? null : (lora.Bias, lora.Scale));
        });
        return output;
    }

    /// <summary>db = scale·Σ_rows g on the device.</summary>
    private static void ColumnSumsOnDevice(Accelerator accelerator, ArrayView1D<float, Stride1D.Dense> g, ArrayView1D<float, Stride1D.Dense> db, int n, int cols, float scale)
    {
        db.MemSetToZero();
        ColumnSumsKernels.Add(accelerator, g, db, n, cols, scale);
    }
}
