// Text prompts → token ids the way `peft generate` encodes them: BOS (when the tokenizer has one) then
// the text's ids. A rendered chat prompt may already hold the BOS token (templates write {{ bos_token }}
// and a tokenizer that knows its special tokens encodes it to the BOS id): it is not doubled.
using PeftKernels.Text;

namespace PeftKernels.Serving;

/// <summary>Encodes prompts for generation.</summary>
public static class PromptTokens
{
    /// <summary>BOS (if the tokenizer has one and the text does not already start with it) followed by the ids of <paramref name="text"/>.</summary>
    public static int[] Encode(ITokenizer tokenizer, string text)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(text);
        int[] ids = tokenizer.Encode(text);
        return tokenizer.BosId is int bos && (ids.Length == 0 || ids[0] != bos) ? [bos, .. ids] : ids;
    }
}
