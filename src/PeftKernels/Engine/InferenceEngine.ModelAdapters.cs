// Which whole-model adapter folders (IModelAdapter: prompt learning, bottleneck, X-LoRA, MixLoRA) the
// engine serves per request, mixed with LoRA requests in one batch. Folders it does not serve are run
// by the library's generation (LlamaForCausalLM.Generate) in `peft generate`.
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Peft.XLora;

namespace PeftKernels.Engine;

/// <summary>The whole-model adapter kinds the engine serves.</summary>
public sealed partial class InferenceEngine
{
    /// <summary>
    /// True when the engine serves the whole-model adapter in <paramref name="folder"/> (prompt learning: virtual K/V in the cache;
    /// bottleneck adapters and compositions; MixLoRA: attention LoRA plus the routed MLP mixture on its rows; X-LoRA: a second,
    /// scaling-pass cache per sequence).
    /// </summary>
    public static bool Serves(string folder) =>
        PromptLearningFiles.Recognizes(folder) || BottleneckAdapters.IsBottleneckFolder(folder) || MixLoraAdapter.Recognizes(folder) || XLoraModel.Recognizes(folder);
}
