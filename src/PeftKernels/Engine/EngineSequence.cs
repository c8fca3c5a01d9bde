// A request's life in the engine: waiting (queued, no KV blocks) → running (blocks held; prompt
// computed chunk by chunk, then one token per step) → finished (blocks and adapter released, the
// result set). A running sequence may be preempted when the KV pool runs out of blocks: its blocks
// are freed and it goes back to the front of the queue with its tokens so far, to be recomputed
// (vLLM's recompute preemption); its sampler keeps its state, so the output does not change.
// The handle is shared with other threads (the server streams from it): Tokens and the result are
// published under a lock; Cancel may be called from anywhere and takes effect at the next step.
namespace PeftKernels.Engine;

/// <summary>A submitted request: its tokens so far, its state, its result when finished, and cancellation.</summary>
public sealed class EngineSequence
{
    private readonly Lock gate = new();
    private readonly List<int> output;
    private readonly TaskCompletionSource<EngineResult> completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool cancelRequested;

    internal EngineSequence(long id, EngineRequest request, SamplingParams sampling)
    {
        Id = id;
        Request = request;
        Sampling = sampling;
        Sampler = new TokenSampler(sampling);
        output = new List<int>(Math.Min(Math.Max(sampling.MaxTokens, 1), 4096)); // no regrowth while decoding (up to 4096 tokens)
    }

    /// <summary>Submission order, from 0.</summary>
    public long Id { get; }

    /// <summary>The request.</summary>
    public EngineRequest Request { get; }

    /// <summary>The sampling settings in force (the request's, or the defaults).</summary>
    public SamplingParams Sampling { get; }

    /// <summary>Called on the engine's thread after each new token (token id, then whether it was the last).</summary>
    public Action<EngineSequence, int>? TokenGenerated { get; set; }

    /// <summary>The generated tokens so far (a copy).</summary>
    public int[] Tokens
    {
        get
        {
            lock (gate)
            {
                return [.. output];
            }
        }
    }

    /// <summary>Why it stopped, or <see cref="FinishReason.None"/> while it runs.</summary>
    public FinishReason Finish { get; private set; }

    /// <summary>The result once finished, else null.</summary>
    public EngineResult? Result => completion.Task.IsCompleted ? completion.Task.Result : null;

    /// <summary>Completes with the result when the sequence finishes (any reason).</summary>
    public Task<EngineResult> Completion => completion.Task;

    /// <summary>True once cancellation was asked for.</summary>
    public bool CancelRequested => cancelRequested;

    internal TokenSampler Sampler { get; }

    internal PagedSequence? Cache { get; set; }

    /// <summary>An X-LoRA sequence's scaling-pass cache (same positions as <see cref="Cache"/>; InferenceEngine.XLora.cs), else null.</summary>
    internal PagedSequence? Shadow { get; set; }

    /// <summary>The X-LoRA of the sequence's adapter, or null.</summary>
    internal EngineXLora? XLora { get; set; }

    internal IDisposable? AdapterLease { get; set; }

    internal int Slot { get; set; } = -1;

    /// <summary>Positions whose K/V are in the cache (computed or shared).</summary>
    internal int Computed { get; set; }

    internal int CachedPromptTokens { get; set; }

    internal int OutputCount => output.Count;

    internal int LastOutput => output[^1];

    /// <summary>Asks the engine to stop this sequence at its next step (finish reason Cancelled).</summary>
    public void Cancel() => cancelRequested = true;

    /// <summary>Virtual positions before the prompt (a prompt-learning adapter's N; 0 otherwise).</summary>
    internal VirtualPrefix? Virtual { get; set; }

    /// <summary>The token at <paramref name="position"/> of virtual positions + prompt + output (a virtual position's id is its adapter's synthetic id).</summary>
    internal int TokenAt(int position)
    {
        int v = Virtual?.Count ?? 0;
        return position < v ? Virtual!.TokenId(position) : (position -= v) < Request.PromptTokens.Length ? Request.PromptTokens[position] : output[position - Request.PromptTokens.Length];
    }

    /// <summary>Virtual positions plus prompt plus output length.</summary>
    internal int Length => (Virtual?.Count ?? 0) + Request.PromptTokens.Length + output.Count;

    internal void AddToken(int token)
    {
        lock (gate)
        {
            output.Add(token);
        }
    }

    internal void Complete(FinishReason reason, string? error = null)
    {
        Finish = reason;
        completion.TrySetResult(new EngineResult(Id, Request.PromptTokens.Length, Tokens, reason, error, CachedPromptTokens));
    }
}
