// Extra terms an attached adapter adds to the training loss (Loss = cross-entropy + Σ terms), e.g.
// AdapterFusion's regularization 0.01·Σ‖I − V‖²_F (docs/formats/bottleneck-adapters.md#fuse).
// Each term is a one-element tensor computed through the autograd, or null when it does not apply.
using PeftKernels.Autograd;
using PeftKernels.Ops;

namespace PeftKernels.Models;

/// <summary>Auxiliary loss terms of attached adapters.</summary>
public sealed partial class LlamaForCausalLM
{
    private readonly List<Func<Tensor?>> auxiliaryLosses = [];

    /// <summary>Adds a term to <see cref="Loss"/> while recording gradients (training); returns an action that removes it.</summary>
    public Action AddAuxiliaryLoss(Func<Tensor?> term)
    {
        ArgumentNullException.ThrowIfNull(term);
        auxiliaryLosses.Add(term);
        return () => auxiliaryLosses.Remove(term);
    }

    private Tensor WithAuxiliaryLosses(Tensor loss)
    {
        if (!Tape.IsRecording)
        {
            return loss;
        }

        foreach (var term in auxiliaryLosses)
        {
            var extra = term();
            if (extra != null)
            {
                loss = Functional.Add(loss, extra);
            }
        }

        return loss;
    }
}
