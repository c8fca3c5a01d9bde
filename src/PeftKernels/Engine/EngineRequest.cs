// A generation request to the engine and its outcome: the prompt as token ids, the adapter by name
// (null: the base model), sampling settings (SamplingParams: temperature, top-p, top-k, seed, stop
// token ids, max tokens), and the result: the new tokens and why generation stopped.
namespace PeftKernels.Engine;

/// <summary>One sequence to generate.</summary>
/// <param name="PromptTokens">The prompt's token ids (at least one).</param>
/// <param name="Adapter">The adapter to run it with (a name the engine's registry knows), or null for the base model.</param>
/// <param name="Sampling">Sampling settings and limits (default: greedy, 16 tokens).</param>
public sealed record EngineRequest(int[] PromptTokens, string? Adapter = null, SamplingParams? Sampling = null);

/// <summary>Why a sequence stopped.</summary>
public enum FinishReason
{
    /// <summary>Still running or waiting.</summary>
    None,

    /// <summary>It emitted one of its stop token ids (the stop token is the last output token).</summary>
    Stop,

    /// <summary>It reached its max tokens or the engine's maximum sequence length.</summary>
    Length,

    /// <summary>It was cancelled.</summary>
    Cancelled,

    /// <summary>It failed (see <see cref="EngineResult.Error"/>), e.g. non-finite logits.</summary>
    Error,
}

/// <summary>The outcome of a request.</summary>
/// <param name="Id">The sequence id (submission order, from 0).</param>
/// <param name="PromptTokens">Prompt length.</param>
/// <param name="Tokens">The generated tokens.</param>
/// <param name="Finish">Why it stopped.</param>
/// <param name="Error">The failure message when <paramref name="Finish"/> is <see cref="FinishReason.Error"/>.</param>
/// <param name="CachedPromptTokens">Prompt positions taken from another sequence's shared KV blocks instead of computed.</param>
public sealed record EngineResult(long Id, int PromptTokens, int[] Tokens, FinishReason Finish, string? Error = null, int CachedPromptTokens = 0);
