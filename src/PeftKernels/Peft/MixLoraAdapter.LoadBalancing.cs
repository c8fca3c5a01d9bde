// MixLoRA's load-balancing loss coef·E·Σ_e F[e]·P[e] over every routed layer's tokens pooled
// (docs/formats/mixlora.md#load-balancing-loss), added to the causal-LM loss in training through the
// model's auxiliary-loss registry (LlamaForCausalLM.AddAuxiliaryLoss). The blocks keep the routing
// of their last training forward; this term consumes it, so the loss is added once per forward.
using PeftKernels.Ops;

namespace PeftKernels.Peft;

public sealed partial class MixLoraAdapter
{
    private Action? removeAuxiliaryLoss;

    /// <summary>The last load-balancing loss added to a training loss (0 when none was added).</summary>
    public double LastLoadBalancingLoss { get; private set; }

    private void RegisterLoadBalancingLoss() => removeAuxiliaryLoss = Model.AddAuxiliaryLoss(LoadBalancingLoss);

    private Tensor? LoadBalancingLoss()
    {
        var routes = Blocks.Where(b => b.PendingRoute != null).Select(b => b.PendingRoute!.Value).ToList();
        foreach (var b in Blocks)
        {
            b.PendingRoute = null;
        }

        LastLoadBalancingLoss = 0;
        if (routes.Count == 0 || Config.RouterAuxLossCoef == 0)
        {
            return null;
        }

        var aux = Functional.LoadBalancingLoss([.. routes.Select(r => r.Probs)], [.. routes.Select(r => r.Selected)], Config.TopK, (float)Config.RouterAuxLossCoef);
        LastLoadBalancingLoss = aux.Item();
        return aux;
    }
}
