// Reads the folder of any whole-model adapter (IModelAdapter) back onto a model: each method adds
// one entry to Formats (how to recognise its folder, how to load it). A folder that none of them
// recognises is a PEFT LoRA / DoRA / IA³ folder for PeftModel.LoadAdapter.
using PeftKernels.Models;

namespace PeftKernels.Peft;

/// <summary>Loads the folders of the adapters that attach to a whole model (prompt learning, bottleneck, X-LoRA, MixLoRA).</summary>
public static class ModelAdapterFolders
{
    /// <summary>One method's folder format.</summary>
    /// <param name="Method">The method (as <see cref="IModelAdapter.Method"/>).</param>
    /// <param name="Recognizes">True when a folder holds an adapter of this method.</param>
    /// <param name="Load">Attaches the folder's adapter to the model (trainable or frozen); strict: bad files throw naming the field or tensor.</param>
    private sealed record Format(string Method, Func<string, bool> Recognizes, Func<LlamaForCausalLM, string, bool, IModelAdapter> Load);

    private static readonly Format[] Formats =
    [
        new("prompt-learning", PromptLearningFiles.Recognizes, (model, folder, trainable) => PromptLearningAdapter.Load(model, folder, trainable)),
        new("bottleneck", Bottleneck.BottleneckAdapters.IsBottleneckFolder, (model, folder, trainable) => Bottleneck.BottleneckAdapters.Load(model, folder, trainable)),
        new("xlora", XLora.XLoraModel.Recognizes, (model, folder, trainable) => XLora.XLoraModel.Load(model, folder, trainable)),
        new("mixlora", MixLoraAdapter.Recognizes, (model, folder, trainable) => MixLoraAdapter.Load(model, folder, trainable)),
    ];

    /// <summary>True when <paramref name="folder"/> holds a whole-model adapter (not a PEFT LoRA / DoRA / IA³ folder).</summary>
    public static bool Recognizes(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        return Formats.Any(f => f.Recognizes(folder));
    }

    /// <summary>Attaches the adapter in <paramref name="folder"/> to <paramref name="model"/>.</summary>
    /// <exception cref="InvalidDataException">The folder holds no whole-model adapter, or its files are bad.</exception>
    public static IModelAdapter Load(LlamaForCausalLM model, string folder, bool trainable = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        var format = Formats.FirstOrDefault(f => f.Recognizes(folder))
            ?? throw new InvalidDataException($"{folder} holds no prompt-learning, bottleneck, X-LoRA or MixLoRA adapter.");
        return format.Load(model, folder, trainable);
    }
}
