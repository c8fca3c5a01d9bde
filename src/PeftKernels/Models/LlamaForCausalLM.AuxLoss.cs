// Auxiliary losses of attached whole-model adapters, added to the causal-LM loss in training:
// MixLoRA's load-balancing loss coef·E·Σ_e F[e]·P[e] over every routed layer's tokens pooled
// (docs/formats/mixlora.md#load-balancing-loss). The blocks keep the routing of their last training
// forward; this hook consumes it, so a loss is added once per forward.
using PeftKernels.Ops;

namespace PeftKernels.Models;

public sealed partial class LlamaForCausalLM
{
    /// <summary>The last load-balancing loss added to a training loss (0 when none was added).</summary>
    public double LastAuxiliaryLoss { get; private set; }

    private Tensor WithAuxiliaryLosses(Tensor loss)
    {
        var blocks = Model.Layers.Select(l => l.Mlp.MixLora).Where(b => b?.PendingRoute != null).ToList();
        LastAuxiliaryLoss = 0;
        if (blocks.Count == 0)
        {
            return loss;
        }

        var config = blocks[0]!.Config;
        var routes = blocks.Select(b => b!.PendingRoute!.Value).ToList();
        foreach (var b in blocks)
        {
            b!.PendingRoute = null;
        }

        if (config.RouterAuxLossCoef == 0)
        {
            return loss;
        }

        var aux = Functional.LoadBalancingLoss([.. routes.Select(r => r.Probs)], [.. routes.Select(r => r.Selected)], config.TopK, (float)config.RouterAuxLossCoef);
        LastAuxiliaryLoss = aux.Item();
        return Functional.Add(loss, aux);
    }
}
