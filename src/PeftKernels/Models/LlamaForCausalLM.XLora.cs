// X-LoRA's hook on the model (docs/formats/xlora.md#forward-two-passes): while an XLoraModel is attached, Forward (and so
// Loss, Score and Generate) runs its two passes, and its classifier is a child named internal_xlora_classifier (PEFT's
// state-dict name), so the Trainer, Module.To and Freeze see it; LlamaForCausalLM.Save leaves it out of the base checkpoint.
using PeftKernels.Nn;
using PeftKernels.Peft.XLora;

namespace PeftKernels.Models;

public sealed partial class LlamaForCausalLM
{
    /// <summary>The name of the X-LoRA classifier among the model's children (PEFT's internal_xlora_classifier).</summary>
    public const string XLoraClassifierName = "internal_xlora_classifier";

    /// <summary>The attached X-LoRA adapter, or null.</summary>
    public XLoraModel? XLora { get; internal set; }

    /// <summary>The two-pass X-LoRA forward when one is attached, else null.</summary>
    private Tensor? XLoraForward(int[] tokens, int batch, KvCache? cache, ForwardContext? context) =>
        XLora?.Forward(tokens, batch, cache, context);

    private IEnumerable<(string Name, Module Module)> XLoraChildren() =>
        XLora == null ? [] : [(XLoraClassifierName, XLora.Classifier)];
}
