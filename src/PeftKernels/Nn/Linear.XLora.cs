// X-LoRA's hook on a Linear (docs/formats/xlora.md#forward-two-passes). When the layer is one of an X-LoRA model's LoRA
// modules, forward ignores its ordinary adapter slots and computes
//   y = x·Wᵀ + b + Σⱼ g·(αⱼ/rⱼ)·(Bⱼ Aⱼ drop(x ⊙ sⱼ) + bias_Bⱼ)
// over the experts j that this layer carries, sⱼ the token's scaling of expert j at this module (column l·E + j of the
// scalings when layerwise, else column j). In the scaling pass (no scalings set) every sⱼ is scaling_pass_value (0:
// the plain base layer). The row scaling is Functional.ScaleRows, whose backward reaches the classifier.
using PeftKernels.Ops;

namespace PeftKernels.Nn;

/// <summary>What an X-LoRA model shares with its layers: the scalings of the pass being run.</summary>
public sealed class XLoraScalingState
{
    /// <summary>The scalings [n, E] or [n, E·L] of the adapted pass, or null during the scaling pass.</summary>
    public Tensor? Scalings { get; internal set; }

    /// <summary>scaling_pass_value: every expert's scaling during the scaling pass.</summary>
    public float ScalingPassValue { get; init; }

    /// <summary>global_scaling_weight.</summary>
    public float GlobalScalingWeight { get; init; } = 1f;

    /// <summary>E.</summary>
    public int Experts { get; init; }

    /// <summary>True when the scalings hold one group of E per LoRA module.</summary>
    public bool Layerwise { get; init; }
}

/// <summary>One Linear's part in an X-LoRA model: its experts (null where an expert does not target it) and its module index.</summary>
/// <param name="State">The scalings shared by the model's layers.</param>
/// <param name="Experts">The layer's expert adapters by expert index j (null: the expert has no branch here).</param>
/// <param name="Module">The module index l (position among the LoRA modules, in model order).</param>
public sealed record XLoraLayerHook(XLoraScalingState State, IReadOnlyList<LoraAdapter?> Experts, int Module);

public sealed partial class Linear
{
    /// <summary>The X-LoRA hook of this layer, or null (set by XLoraModel while attached).</summary>
    public XLoraLayerHook? XLora { get; internal set; }

    private Tensor XLoraForward(Tensor x, XLoraLayerHook hook, ForwardContext context)
    {
        var state = hook.State;
        var y = Functional.Gemm(x, Weight, Bias, context.Kernel);
        if (state.Scalings == null && state.ScalingPassValue == 0f)
        {
            return y;
        }

        return XLoraBranches(y, x, hook, state.Scalings, context);
    }

    /// <summary>
    /// y + Σⱼ g·(αⱼ/rⱼ)·(Bⱼ Aⱼ drop(x ⊙ sⱼ) + bias_Bⱼ) over the layer's experts, sⱼ from <paramref name="scalings"/> [n, E or E·L]
    /// (null: the scaling pass, every sⱼ = scaling_pass_value); <paramref name="y"/> [n, out] is consumed. The engine calls it on
    /// a sequence's rows with y = 0 to get the experts' contribution alone (EngineXLora.cs).
    /// </summary>
    internal Tensor XLoraBranches(Tensor y, Tensor x, XLoraLayerHook hook, Tensor? scalings, ForwardContext context)
    {
        var state = hook.State;
        Tensor? constant = null;
        if (scalings == null)
        {
            // The scaling pass with a nonzero scaling_pass_value: every branch sees x·c (no gradient in this pass), on x's device.
            constant = Functional.Scale(x, new Tensor([state.ScalingPassValue], 1));
        }

        for (int j = 0; j < hook.Experts.Count; j++)
        {
            if (hook.Experts[j] is not { } expert)
            {
                continue;
            }

            int column = state.Layerwise ? (hook.Module * state.Experts) + j : j;
            var input = constant ?? Functional.ScaleRows(x, scalings!, column);
            var factors = expert.Factors with { Scale = expert.Scale * state.GlobalScalingWeight };
            y = Functional.LoraBranch(y, input, factors, null, Options(expert, context));
        }

        return y;
    }
}
