// The hook of prompt learning (docs/formats/prompt-learning.md#forward): an attached prompt-tuning, P-tuning or
// prefix-tuning adapter takes over the decoder pass of Hidden (it adds N virtual positions before the real tokens, whose
// positions start at N), is a child of the model (so Trainer, Freeze and To see its parameters) and widens the cache
// that Generate creates by its N positions. LlamaForCausalLM.Save leaves its parameters out of the base checkpoint.
using PeftKernels.Nn;
using PeftKernels.Peft;

namespace PeftKernels.Models;

public sealed partial class LlamaForCausalLM
{
    /// <summary>The module name of an attached prompt-learning adapter among the model's children.</summary>
    internal const string PromptEncoderName = "prompt_encoder";

    /// <summary>The attached prompt-learning adapter, or null.</summary>
    internal PromptLearningAdapter? PromptLearning { get; set; }

    /// <summary>The virtual positions an attached prompt-learning adapter puts before every sequence (0 when none).</summary>
    public int VirtualTokens => PromptLearning?.NumVirtualTokens ?? 0;

    /// <summary>True for the names of parameters that belong to a whole-model adapter, not to the base checkpoint.</summary>
    internal static bool IsPromptLearningParameter(string name) => name.StartsWith(PromptEncoderName + ".", StringComparison.Ordinal);

    /// <summary>The prompt-learning adapter as a child module, when one is attached.</summary>
    private IEnumerable<(string Name, Module Module)> PromptLearningChildren() =>
        PromptLearning is { } adapter ? [(PromptEncoderName, adapter)] : [];
}
