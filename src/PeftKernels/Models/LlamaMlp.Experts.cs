// The MixLoRA hook of the MLP (docs/formats/mixlora.md#forward): when a MixLoraBlock is attached, the
// block replaces the plain SwiGLU forward (it reuses this MLP's frozen gate/up/down Linear layers,
// computing the shared base products once) and is a child module named "mixlora", so its router and
// expert LoRA factors are part of NamedParameters (the Trainer, Module.To and Freeze see them).
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Models;

public sealed partial class LlamaMlp
{
    /// <summary>The attached MixLoRA mixture (router + per-expert LoRA), or null for the plain MLP.</summary>
    public MixLoraBlock? MixLora { get; internal set; }

    private Tensor? MixLoraForward(Tensor x, ForwardContext context) => MixLora?.Forward(this, x, context);

    private IEnumerable<(string Name, Module Module)> MixLoraChildren() =>
        MixLora == null ? [] : [("mixlora", MixLora)];
}
