// DoRA on a Linear (peft-math.md; PEFT v0.20's DoraLinearLayer): the fused LoRA adapter
// carries a magnitude m [out]. With c = m / norm:
//   norm = ‖W + s·B·A‖₂ per output row   (DoraNorm.RowNorms over the fp32, bf16, fp16 or 4-bit W),
//                                         DETACHED: a constant in backward, as PEFT does
//   z    = x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ         (LoraMatmul over the weight operand, bias passed empty)
//   y    = c ⊙ z + b                      (Ia3.ScaleColumns; the bias is not scaled)
// Backward, g = dL/dy (Ia3.ScaleColumnsBackward, then the LoRA kernel backward):
//   ĝ  = g ⊙ c;  dm = Σ_rows g ⊙ z / norm;  dx, dA, dB from the LoRA backward with ĝ;
//   dW = ĝᵀ·x only when W trains;  db = Σ_rows g.
// Dropout: PEFT computes, in training with p > 0, x·Wᵀ + b + (c − 1)⊙(drop(x)·Wᵀ) +
// c⊙s·drop(x)·Aᵀ·Bᵀ (its DoRA base term sees the dropped x); this layer computes the formula
// above, dropout on the LoRA branch only as for plain LoRA. The two agree exactly with p = 0
// and in evaluation mode (the saved adapter and inference are the same); with p > 0 training
// differs by (c − 1)⊙((x − drop(x))·Wᵀ), zero in expectation.
// Several active adapters: the DoRA one is fused (one at a time); plain LoRA branches are added
// to y unscaled. That is PEFT's result when the DoRA adapter comes first in its active list.
using System.Numerics.Tensors;
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Nn;

public sealed partial class Linear
{
    /// <summary>DoRA's row norms ‖W + s·B·A‖₂ of this layer's weight (any storage) for one of its LoRA adapters: [out].</summary>
    /// <exception cref="ArgumentException">The adapter's shapes do not fit this layer.</exception>
    public float[] WeightNorms(LoraAdapter adapter, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (adapter.A.Shape[1] != InFeatures || adapter.B.Shape[0] != OutFeatures)
        {
            throw new ArgumentException($"adapter '{adapter.Name}' has A [{string.Join(", ", adapter.A.Shape)}] and B [{string.Join(", ", adapter.B.Shape)}]; "
                + $"Linear [{OutFeatures}, {InFeatures}] needs A [r, {InFeatures}] and B [{OutFeatures}, r].", nameof(adapter));
        }

        var norms = new float[OutFeatures];
        int r = adapter.Rank;
        DoraNorm.RowNorms(Weight.AsWeight(), adapter.A.Data, adapter.B.Data, adapter.Scale, norms, InFeatures, OutFeatures, r, options);

        return norms;
    }

    /// <summary>y = (m / norm) ⊙ (x·Wᵀ + s·drop(x)·Aᵀ·Bᵀ) + b and h; returns what backward needs.</summary>
    private DoraScaling DoraForward(Tensor x, LoraAdapter lora, float[] y, float[] h, int n, in LoraOptions options)
    {
        var magnitude = lora.Magnitude!;
        var norms = WeightNorms(lora, options.Kernel);
        var scale = new float[OutFeatures];
        TensorPrimitives.Divide(magnitude.Data, norms, scale);

        // z (the unscaled output) is kept only when dm is wanted; otherwise y is scaled in place.
        var z = magnitude.RequiresGrad && Tape.IsRecording ? GC.AllocateUninitializedArray<float>(y.Length) : y;
        FusedForward(x, lora, [], z, h, n, options);
        Ia3.ScaleColumns(z, scale, y, n, OutFeatures, options.Kernel);
        AddBias(y, n);
        return new DoraScaling(norms, scale, ReferenceEquals(z, y) ? null : z);
    }

    private sealed class DoraScaling(float[] norms, float[] scale, float[]? z)
    {
        /// <summary>Accumulates dm = Σ_rows g ⊙ z / norm into the magnitude and returns ĝ = g ⊙ (m / norm).</summary>
        public float[] Backward(float[] g, Parameter magnitude, int n, int outF, KernelOptions k)
        {
            var scaled = GC.AllocateUninitializedArray<float>(g.Length);
            float[] dm = magnitude.RequiresGrad && z != null ? GC.AllocateUninitializedArray<float>(outF) : [];
            Ia3.ScaleColumnsBackward(g, dm.Length != 0 ? z : [], scale, scaled, dm, n, outF, k);
            if (dm.Length != 0)
            {
                TensorPrimitives.Divide(dm, norms, dm);
                Grad.AddOwned(magnitude, dm);
            }

            return scaled;
        }
    }
}
