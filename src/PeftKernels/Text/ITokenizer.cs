namespace PeftKernels.Text;

/// <summary>Text ⇄ token ids.</summary>
public interface ITokenizer
{
    /// <summary>One more than the largest id the tokenizer produces or understands.</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, when the tokenizer has one.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, when the tokenizer has one.</summary>
    int? EosId { get; }

    /// <summary>Token ids of <paramref name="text"/>, without BOS or EOS (callers add them).</summary>
    int[] Encode(string text);

    /// <summary>The text of <paramref name="ids"/>; special tokens (BOS, EOS, ...) are left out.</summary>
    string Decode(ReadOnlySpan<int> ids);
}
