// One adapter on one projection of one decoder layer, in the form the engine's batched forward
// applies per row. For a row i of that adapter, with x_i the projection's input and W, b the base:
//   LoRA   y_i = x_i·Wᵀ + b + s·B·(A·x_i) + s·bias_B
//   DoRA   y_i = g ⊙ (x_i·Wᵀ) + b + s·B'·(A·x_i) + s·g ⊙ bias_B,   g = m / ‖W + s·B·A‖_row,  B' = diag(g)·B
//          (PEFT's DoRA at inference: the magnitude over the detached row norm scales the base
//          output without its bias and the LoRA output; folding g into B at load leaves one
//          column scale of the base output per row; docs/formats/methods.md#dora)
//   IA³    feed-forward: y_i = (x_i ⊙ l)·Wᵀ + b;  otherwise y_i = (x_i·Wᵀ + b) ⊙ l
// The factors are copies in fp32 host arrays taken at load time, so the layer's own adapter slots
// can change (or the adapter be deleted from the model) while the engine serves this version.
using PeftKernels.Nn;

namespace PeftKernels.Engine;

/// <summary>An adapter's contribution to one projection (LoRA or DoRA factors, or an IA³ vector), as the engine applies it.</summary>
internal sealed class ProjectionAdapter
{
    /// <summary>LoRA A [r, in] (null for IA³).</summary>
    public float[]? A { get; init; }

    /// <summary>LoRA B [out, r], DoRA's column factor g folded in (null for IA³).</summary>
    public float[]? B { get; init; }

    /// <summary>The LoRA scale s (alpha / r, or alpha / √r with rsLoRA).</summary>
    public float Scale { get; init; }

    /// <summary>s · bias_B (times g for DoRA) [out], or null.</summary>
    public float[]? LoraBias { get; init; }

    /// <summary>DoRA's g = m / ‖W + s·B·A‖_row [out], scaling the base output without its bias; null for LoRA.</summary>
    public float[]? DoraScale { get; init; }

    /// <summary>IA³'s l: [in] when <see cref="Ia3Feedforward"/>, else [out]; null for LoRA.</summary>
    public float[]? Ia3 { get; init; }

    /// <summary>IA³ scales the input (feed-forward module) rather than the output.</summary>
    public bool Ia3Feedforward { get; init; }

    /// <summary>Bytes of the arrays held.</summary>
    public long Bytes => 4L * ((A?.Length ?? 0) + (B?.Length ?? 0) + (LoraBias?.Length ?? 0) + (DoraScale?.Length ?? 0) + (Ia3?.Length ?? 0));

    /// <summary>The adapter named <paramref name="name"/> on <paramref name="linear"/> in engine form, or null when the layer has none of that name.</summary>
    /// <exception cref="NotSupportedException">The adapter's factors are not fp32 host tensors.</exception>
    public static ProjectionAdapter? FromLinear(Linear linear, string name, string where)
    {
        var lora = linear.Adapters.FirstOrDefault(a => a.Name == name);
        if (lora != null)
        {
            if (lora.A.DType != TensorDType.F32 || lora.B.DType != TensorDType.F32 || lora.A.Device.IsGpu)
            {
                throw new NotSupportedException($"{where}: adapter '{name}' factors are {lora.A.DType} on {lora.A.Device}; the engine serves fp32 host factors.");
            }

            int r = lora.Rank, outF = linear.OutFeatures;
            var b = (float[])lora.B.Data.Clone();
            float[]? g = null;
            if (lora.Magnitude != null)
            {
                var norms = linear.WeightNorms(lora);
                g = new float[outF];
                for (int j = 0; j < outF; j++)
                {
                    g[j] = lora.Magnitude.Data[j] / norms[j];
                    for (int c = 0; c < r; c++)
                    {
                        b[(j * r) + c] *= g[j];
                    }
                }
            }

            float[]? bias = null;
            if (lora.Bias != null)
            {
                bias = new float[outF];
                for (int j = 0; j < outF; j++)
                {
                    bias[j] = lora.Scale * lora.Bias.Data[j] * (g?[j] ?? 1f);
                }
            }

            return new ProjectionAdapter { A = (float[])lora.A.Data.Clone(), B = b, Scale = lora.Scale, LoraBias = bias, DoraScale = g };
        }

        var ia3 = linear.Ia3Adapters.FirstOrDefault(a => a.Name == name);
        return ia3 == null ? null : new ProjectionAdapter { Ia3 = (float[])ia3.L.Data.Clone(), Ia3Feedforward = ia3.IsFeedforward };
    }
}
