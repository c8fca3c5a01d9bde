// Counters of an InferenceEngine since it was created (read them from any thread; they are updated
// by the stepping thread only).
namespace PeftKernels.Engine;

/// <summary>What an engine has done so far.</summary>
public sealed class EngineStats
{
    /// <summary>Steps run (batched forward passes).</summary>
    public long Steps { get; internal set; }

    /// <summary>Rows computed (prompt and decode tokens fed through the model).</summary>
    public long RowsComputed { get; internal set; }

    /// <summary>Tokens generated.</summary>
    public long TokensGenerated { get; internal set; }

    /// <summary>Prompt positions taken from shared KV blocks instead of computed.</summary>
    public long CachedPromptTokens { get; internal set; }

    /// <summary>Sequences preempted for lack of KV blocks (and recomputed later).</summary>
    public long Preemptions { get; internal set; }

    /// <summary>Sequences finished (any reason).</summary>
    public long Finished { get; internal set; }

    /// <summary>Virtual positions of prompt-learning adapters copied into sequences' blocks (those not shared from earlier sequences).</summary>
    public long VirtualPositionsCopied { get; internal set; }

    /// <summary>Rows run through X-LoRA sequences' scaling pass (their first, classifier-feeding pass; not counted in <see cref="RowsComputed"/>).</summary>
    public long ScalingPassRows { get; internal set; }

    /// <summary>Times the adapter table was rebuilt (the set of resident adapters changed).</summary>
    public long AdapterTableBuilds { get; internal set; }
}
