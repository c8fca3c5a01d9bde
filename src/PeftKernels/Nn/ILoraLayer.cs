// The adapter-carrying layer as PEFT wrappers (PeftModel) see it: Linear (LoRA, DoRA, IA³) and
// Embedding (LoRA). The bookkeeping behind it is AdapterSlots.cs.
namespace PeftKernels.Nn;

/// <summary>A layer that carries named LoRA adapters: what PEFT wrappers (PeftModel) work against.</summary>
public interface ILoraLayer
{
    /// <summary>The adapter input width: in_features (Linear) or num_embeddings (Embedding).</summary>
    int InFeatures { get; }

    /// <summary>The adapter output width: out_features (Linear) or embedding_dim (Embedding).</summary>
    int OutFeatures { get; }

    /// <summary>The base weight: [out, in] for Linear, [num_embeddings, embedding_dim] for Embedding.</summary>
    Parameter Weight { get; }

    /// <summary>The LoRA (and DoRA) adapters, in the order they were added.</summary>
    IReadOnlyList<LoraAdapter> Adapters { get; }

    /// <summary>Every adapter of the layer (LoRA, DoRA, IA³), in the order added.</summary>
    IReadOnlyList<LayerAdapter> AllAdapters { get; }

    /// <summary>Names of the adapters forward uses (those present on this layer).</summary>
    IReadOnlyList<string> ActiveAdapters { get; }

    /// <summary>Names of the adapters whose update is merged into <see cref="Weight"/>, in merge order.</summary>
    IReadOnlyList<string> MergedAdapters { get; }

    /// <summary>When true, forward ignores every adapter (PEFT's disable_adapter).</summary>
    bool AdaptersDisabled { get; set; }

    /// <summary>Adds an adapter; names must be unique on the layer and the shapes must fit.</summary>
    void AddAdapter(LoraAdapter adapter);

    /// <summary>Removes the adapter of that name; false when absent.</summary>
    /// <exception cref="InvalidOperationException">The adapter is merged.</exception>
    bool RemoveAdapter(string name);

    /// <summary>Chooses the adapters used in forward (names absent from this layer are skipped).</summary>
    void SetActiveAdapters(params string[] names);

    /// <summary>Replaces the weight (same shape).</summary>
    void ReplaceWeight(Parameter weight);

    /// <summary>Records that an adapter's update is (or no longer is) part of <see cref="Weight"/>; forward skips merged adapters.</summary>
    void MarkMerged(string name, bool merged);
}
