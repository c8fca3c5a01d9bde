// What one text-generation call asks of the engine (GenerationStream): the prompt ids, the adapter, the
// sampling settings (SamplingParams: max tokens, temperature, top-p/k, seed, stop token ids such as EOS)
// and OpenAI's stop strings; and what it yields: text pieces, then a last update with why it ended and
// the token counts.
using PeftKernels.Engine;

namespace PeftKernels.Serving;

/// <summary>One generation call.</summary>
/// <param name="PromptTokens">The prompt's token ids.</param>
/// <param name="Adapter">The adapter (a name the engine's registry knows), or null for the base model.</param>
/// <param name="Sampling">Sampling settings, max tokens and stop token ids.</param>
/// <param name="StopStrings">OpenAI <c>stop</c> strings (at most four): the text ends before the first one, which is not returned.</param>
public sealed record GenerationRequest(int[] PromptTokens, string? Adapter, SamplingParams Sampling, IReadOnlyList<string>? StopStrings = null);

/// <summary>Token counts of a finished generation (OpenAI's <c>usage</c>).</summary>
/// <param name="PromptTokens">Tokens of the prompt.</param>
/// <param name="CompletionTokens">Tokens generated (up to and including the one that completed a stop string or the stop token).</param>
public sealed record GenerationUsage(int PromptTokens, int CompletionTokens)
{
    /// <summary>Prompt plus completion tokens.</summary>
    public int TotalTokens => PromptTokens + CompletionTokens;
}

/// <summary>Why a generation ended, in OpenAI's words.</summary>
public enum GenerationFinish
{
    /// <summary><c>stop</c>: a stop token (EOS) or a stop string.</summary>
    Stop,

    /// <summary><c>length</c>: max tokens or the context length.</summary>
    Length,
}

/// <summary>One update of a streamed generation: new text, and on the last update why it ended and the token counts.</summary>
/// <param name="Text">New text (may be empty).</param>
/// <param name="Tokens">Tokens generated so far.</param>
/// <param name="Finish">Why it ended, on the last update only.</param>
/// <param name="Usage">Token counts, on the last update only.</param>
public sealed record GenerationUpdate(string Text, int Tokens, GenerationFinish? Finish = null, GenerationUsage? Usage = null)
{
    /// <summary>The finish reason as OpenAI spells it (<c>stop</c>, <c>length</c>), or null before the end.</summary>
    public string? FinishReason => Finish switch
    {
        GenerationFinish.Stop => "stop",
        GenerationFinish.Length => "length",
        _ => null,
    };
}

/// <summary>The engine stopped a sequence with an error (for example non-finite logits).</summary>
public sealed class GenerationFailedException(string message) : Exception(message)
{
}
