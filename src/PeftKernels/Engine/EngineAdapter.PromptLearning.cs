// A prompt-learning adapter as an engine adapter (docs/formats/prompt-learning.md#engine): no module on any projection
// (its sequences use the base weights), only the virtual keys and values of its N positions, computed once per version
// from the strictly read folder (PromptLearningFiles.Read) and shared by every sequence that names it.
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Engine;

public sealed partial class EngineAdapter
{
    /// <summary>The virtual positions of a prompt-learning adapter (null for LoRA, DoRA, IA³).</summary>
    internal VirtualPrefix? Virtual { get; private init; }

    /// <summary>Reads the prompt-learning folder and precomputes its virtual keys and values for <paramref name="model"/>.</summary>
    internal static EngineAdapter FromPromptLearning(LlamaForCausalLM model, string name, int version, string folder)
    {
        var (config, rows) = PromptLearningFiles.Read(model, folder);
        if (rows.Any(v => !float.IsFinite(v)))
        {
            throw new InvalidDataException($"adapter '{name}' ({folder}): {PromptLearningAdapter.TensorName} holds NaN or infinite values.");
        }

        var (keys, values) = PromptLearningAdapter.VirtualKeyValues(model, config, rows);
        long virtualBytes = 4L * (keys.Sum(k => (long)k.Length) + values.Sum(v => (long)v.Length));
        return new EngineAdapter(name, version, folder, AdapterKind.PromptLearning, model.Config.NumHiddenLayers, [], virtualBytes)
        {
            Virtual = new VirtualPrefix(keys, values, config.NumVirtualTokens),
        };
    }
}
