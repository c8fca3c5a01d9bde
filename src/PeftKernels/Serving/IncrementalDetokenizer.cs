// Token ids → text, one token at a time, for streaming. Decoding each token alone is wrong twice over:
// a byte-level token may hold only part of a UTF-8 character (ByteTokenizer, byte-level BPE, SentencePiece
// byte fallback), and SentencePiece drops the leading space of the first token it decodes. So, as vLLM and
// Hugging Face's TextStreamer do, a window of ids is decoded whole: prefix = ids[p..r) (already emitted),
// full = ids[p..); the new text is full minus prefix, emitted only when full is longer and does not end in
// U+FFFD (an unfinished character: wait for the next token). Then p = r, r = the count of ids. The window
// starts with the last few prompt ids as context, so the first generated token's leading space survives.
using PeftKernels.Text;

namespace PeftKernels.Serving;

/// <summary>Turns generated token ids into text pieces without splitting a UTF-8 character or a multi-token character.</summary>
public sealed class IncrementalDetokenizer
{
    /// <summary>Prompt ids kept as decoding context (enough for SentencePiece's leading-space rule and a 4-byte character).</summary>
    public const int ContextTokens = 6;

    private readonly ITokenizer tokenizer;
    private readonly List<int> ids = [];
    private int prefixOffset;
    private int readOffset;

    /// <summary>A detokenizer for <paramref name="tokenizer"/>; the last <see cref="ContextTokens"/> ids of <paramref name="prompt"/> are context only (never emitted).</summary>
    public IncrementalDetokenizer(ITokenizer tokenizer, ReadOnlySpan<int> prompt = default)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        this.tokenizer = tokenizer;
        var context = prompt.Length > ContextTokens ? prompt[^ContextTokens..] : prompt;
        foreach (int id in context)
        {
            ids.Add(id);
        }

        readOffset = ids.Count;
    }

    /// <summary>Adds one generated token; returns the text it completes (empty while a character is unfinished).</summary>
    public string Push(int token)
    {
        ids.Add(token);
        return Emit(final: false);
    }

    /// <summary>The text still held back (an unfinished character at the end, decoded as U+FFFD), when generation ends.</summary>
    public string Flush() => Emit(final: true);

    private string Emit(bool final)
    {
        if (readOffset == ids.Count)
        {
            return "";
        }

        var window = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(ids);
        string prefix = tokenizer.Decode(window[prefixOffset..readOffset]);
        string full = tokenizer.Decode(window[prefixOffset..]);
        if (!final && (full.Length <= prefix.Length || full.EndsWith('\uFFFD')))
        {
            return "";
        }

        string piece = full.Length > prefix.Length ? full[prefix.Length..] : "";
        prefixOffset = readOffset;
        readOffset = ids.Count;
        return piece;
    }
}
