// The arithmetic of merging one adapter into fp32 weight values (formulas in
// PeftModelMerge.cs): LoRA adds s·ΔW (and subtracts it on unmerge), DoRA rescales W + s·B·A
// row-wise by m / norm (never undone here: its unmerge restores the kept original), IA³
// multiplies rows (output scaling) or columns (input scaling) by l and divides by l + 1e-8 on
// unmerge, as PEFT does.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Nn;
using Embedding = PeftKernels.Nn.Embedding;

namespace PeftKernels.Peft;

public sealed partial class PeftModel
{
    /// <summary>The layer's bias after merging the adapter (b + s·bias_B, or b ⊙ l for output-scaling IA³), or null when unchanged.</summary>
    private static float[]? MergedBias(Linear? linear, LayerAdapter adapter)
    {
        if (linear?.Bias is not { } bias)
        {
            return null;
        }

        var merged = (float[])bias.Data.Clone();
        switch (adapter)
        {
            case LoraAdapter { Bias: { } loraBias } lora:
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(loraBias.Data, lora.Scale, merged, merged);
                return merged;
            case Ia3Adapter { IsFeedforward: false } ia3:
                System.Numerics.Tensors.TensorPrimitives.Multiply(merged, ia3.L.Data, merged);
                return merged;
            default:
                return null;
        }
    }

    /// <summary>Merges the adapter into the fp32 weight values w in place, or (<paramref name="undo"/>) takes a LoRA or IA³ merge out again.</summary>
    private static void Apply(ILoraLayer layer, LayerAdapter adapter, float[] w, bool undo)
    {
        int inF = layer.InFeatures, outF = layer.OutFeatures;
        switch (adapter)
        {
            case Ia3Adapter { IsFeedforward: false } ia3:
                // W ← diag(l)·W; unmerge divides by l + 1e-8, as PEFT does.
                for (int o = 0; o < outF; o++)
                {
                    var row = w.AsSpan(o * inF, inF);
                    float l = ia3.L.Data[o];
                    if (undo)
                    {
                        System.Numerics.Tensors.TensorPrimitives.Divide(row, l + 1e-8f, row);
                    }
                    else
                    {
                        System.Numerics.Tensors.TensorPrimitives.Multiply(row, l, row);
                    }
                }

                break;
            case Ia3Adapter ia3:
                // W ← W·diag(l): every row times l.
                var divisor = undo ? ia3.L.Data.Select(l => l + 1e-8f).ToArray() : null;
                for (int o = 0; o < outF; o++)
                {
                    var row = w.AsSpan(o * inF, inF);
                    if (undo)
                    {
                        System.Numerics.Tensors.TensorPrimitives.Divide(row, divisor, row);
                    }
                    else
                    {
                        System.Numerics.Tensors.TensorPrimitives.Multiply(row, ia3.L.Data, row);
                    }
                }

                break;
            case LoraAdapter { UseDora: true } dora:
                // The norm of W + s·B·A of the weight as it stands, as the forward computes it.
                var norms = new float[outF];
                DoraNorm.RowNorms(WeightOperand.F32(w, outF, inF), dora.A.Data, dora.B.Data, dora.Scale, norms, inF, outF, dora.Rank);
                AddDelta(layer, dora, w, 1f);
                for (int o = 0; o < outF; o++)
                {
                    var row = w.AsSpan(o * inF, inF);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(row, dora.Magnitude!.Data[o] / norms[o], row);
                }

                break;
            case LoraAdapter lora:
                AddDelta(layer, lora, w, undo ? -1f : 1f);
                break;
        }
    }

    /// <summary>w += sign·s·ΔW in fp32 (Linear: B·A; Embedding: Aᵀ·Bᵀ).</summary>
    private static void AddDelta(ILoraLayer layer, LoraAdapter adapter, float[] w, float sign)
    {
        int r = adapter.Rank, inF = layer.InFeatures, outF = layer.OutFeatures;
        float alpha = sign * adapter.Scale;
        if (layer is Embedding)
        {
            Gemm.Multiply(true, true, inF, outF, r, alpha, adapter.A.Data, adapter.B.Data, 1f, w);
        }
        else
        {
            Gemm.Multiply(false, false, outF, inF, r, alpha, adapter.B.Data, adapter.A.Data, 1f, w);
        }
    }
}
