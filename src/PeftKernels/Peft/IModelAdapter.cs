// The methods that attach to a whole model rather than to single Linear layers (PeftModel's LoRA,
// DoRA and IA³): prompt tuning, P-tuning and prefix tuning (virtual tokens and per-layer key/value
// prefixes), bottleneck adapters and their compositions (sites between the blocks of a decoder
// layer), X-LoRA (a classifier that mixes frozen LoRA experts per token) and MixLoRA (a router over
// per-expert LoRA on the MLP). Each such adapter is a Module attached to the model through the
// model's hooks, so its parameters are part of model.NamedParameters() (the Trainer, Module.To and
// Freeze see them) while LlamaForCausalLM.Save leaves them out of the base checkpoint.
// ModelAdapterFolders reads any of their folders back (dispatch on the files present).
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>An adapter attached to a whole <see cref="LlamaForCausalLM"/> (prompt learning, bottleneck, X-LoRA, MixLoRA).</summary>
public interface IModelAdapter
{
    /// <summary>The method as <c>peft train --method</c> spells it: prompt, p-tuning, prefix, bottleneck, xlora or mixlora.</summary>
    string Method { get; }

    /// <summary>The model the adapter is attached to.</summary>
    LlamaForCausalLM Model { get; }

    /// <summary>The adapter's parameters (the trainable ones train).</summary>
    IEnumerable<Parameter> Parameters { get; }

    /// <summary>Whether the adapter can be merged into the base weights (prompt learning and bottleneck adapters cannot).</summary>
    bool CanMerge { get; }

    /// <summary>Saves the adapter into <paramref name="folder"/> in its reference layout, atomically (save → load → save is byte-identical).</summary>
    void Save(string folder);

    /// <summary>Removes the adapter's hooks: the model computes as the base again.</summary>
    void Detach();
}
