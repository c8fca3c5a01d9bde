// Per-sequence sampling settings of the engine, named as in vLLM's SamplingParams and OpenAI's
// completions API (temperature, top_p, top_k, seed, stop_token_ids, max_tokens). A TokenSampler is
// built from them per sequence; the order of the logits processing is vLLM's and Hugging Face's:
// temperature, then top-k, then top-p (see TokenSampler).
using System.Globalization;

namespace PeftKernels.Engine;

/// <summary>How one sequence picks its next tokens (vLLM's <c>SamplingParams</c> subset).</summary>
/// <param name="Temperature"><c>temperature</c>: 0 = greedy (argmax); otherwise logits are divided by it before softmax. Finite, ≥ 0.</param>
/// <param name="TopP"><c>top_p</c>: nucleus mass in (0, 1]; keeps the smallest set of most likely tokens whose probability reaches it. 1 = off.</param>
/// <param name="TopK"><c>top_k</c>: keeps the k most likely tokens (and any tied with the k-th); 0 = off, 1 = greedy.</param>
/// <param name="Seed"><c>seed</c> of the sequence's own generator; null = a seed drawn from a shared generator.</param>
/// <param name="StopTokenIds"><c>stop_token_ids</c>: generation ends after emitting one of these (e.g. EOS).</param>
/// <param name="MaxTokens"><c>max_tokens</c>: the most tokens to generate, ≥ 0.</param>
public sealed record SamplingParams(float Temperature = 0, float TopP = 1, int TopK = 0, int? Seed = null, IReadOnlyList<int>? StopTokenIds = null, int MaxTokens = 16)
{
    /// <summary>Whether these settings pick the argmax (temperature 0 or top_k 1) and draw no random number.</summary>
    public bool IsGreedy => Temperature == 0 || TopK == 1;

    /// <summary>Throws when a field is out of range.</summary>
    /// <exception cref="ArgumentException">A field is out of range; the message names it (in vLLM's spelling) and its value.</exception>
    public void Validate()
    {
        if (!(Temperature >= 0 && float.IsFinite(Temperature)))
        {
            throw Bad("temperature must be finite and >= 0", Temperature, nameof(Temperature));
        }

        if (!(TopP > 0 && TopP <= 1))
        {
            throw Bad("top_p must be in (0, 1]", TopP, nameof(TopP));
        }

        if (TopK < 0)
        {
            throw Bad("top_k must be >= 0 (0 = off)", TopK, nameof(TopK));
        }

        if (MaxTokens < 0)
        {
            throw Bad("max_tokens must be >= 0", MaxTokens, nameof(MaxTokens));
        }

        if (StopTokenIds is not null)
        {
            for (int i = 0; i < StopTokenIds.Count; i++)
            {
                if (StopTokenIds[i] < 0)
                {
                    throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                        $"stop_token_ids must hold token ids >= 0; got {StopTokenIds[i]} at position {i}."), nameof(StopTokenIds));
                }
            }
        }
    }

    private static ArgumentException Bad(string rule, IFormattable value, string field) =>
        new($"{rule}; got {value.ToString(null, CultureInfo.InvariantCulture)}.", field);
}
