// The engine and X-LoRA (docs/formats/xlora.md#serving): not served this round. X-LoRA mixes its experts per token with
// scalings from a second (base) pass, which needs two KV caches per sequence; the engine's batched forward has one paged
// cache and no classifier pass. So a model with X-LoRA attached, or a request naming an X-LoRA folder, is refused with a
// NotSupportedException; `peft generate --adapter` runs the library's two-cache generation (LlamaForCausalLM.Generate).
using PeftKernels.Models;
using PeftKernels.Peft.XLora;

namespace PeftKernels.Engine;

public sealed partial class InferenceEngine
{
    /// <summary>Refuses a model that has an X-LoRA attached.</summary>
    /// <exception cref="NotSupportedException">The model has an X-LoRA attached.</exception>
    internal static void RefuseXLora(LlamaForCausalLM model)
    {
        if (model.XLora != null)
        {
            throw new NotSupportedException("the inference engine does not serve X-LoRA yet (per-token expert mixing needs a second, base pass and two KV caches "
                + "per sequence); detach it, or generate with LlamaForCausalLM.Generate, which runs X-LoRA with two caches.");
        }
    }

    /// <summary>Refuses an X-LoRA adapter folder named by a request.</summary>
    /// <exception cref="NotSupportedException">The folder holds an X-LoRA adapter.</exception>
    internal static void RefuseXLoraFolder(string name, string folder)
    {
        if (XLoraModel.Recognizes(folder))
        {
            throw new NotSupportedException($"adapter '{name}' ({folder}) is an X-LoRA adapter; the inference engine does not serve X-LoRA yet (per-token expert "
                + "mixing needs a second, base pass and two KV caches per sequence): use `peft generate --adapter` with that folder alone, which runs the library's two-cache generation.");
        }
    }
}
