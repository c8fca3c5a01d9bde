// Bytes as tokens: id b (0 ≤ b < 256) is the UTF-8 byte b, so every text encodes with no
// vocabulary at all. Optional BOS/EOS ids lie above 255; VocabSize is one more than the largest id.
using System.Runtime.InteropServices;
using System.Text;

namespace PeftKernels.Text;

/// <summary>A tokenizer whose ids 0..255 are the UTF-8 bytes of the text, with optional BOS/EOS ids above 255.</summary>
public sealed class ByteTokenizer : ITokenizer
{
    // UTF-8 of U+FFFD, written for ids that are neither a byte nor BOS/EOS.
    private static readonly byte[] Replacement = [0xEF, 0xBF, 0xBD];

    /// <summary>Creates the tokenizer; <paramref name="bos"/> and <paramref name="eos"/>, when given, must be distinct ids ≥ 256.</summary>
    /// <exception cref="ArgumentException">A special id is below 256, or both are equal.</exception>
    public ByteTokenizer(int? bos = null, int? eos = null)
    {
        if (bos is < 256)
        {
            throw new ArgumentException($"bos = {bos}: ids 0..255 are the bytes; a special id must be 256 or more.", nameof(bos));
        }

        if (eos is < 256)
        {
            throw new ArgumentException($"eos = {eos}: ids 0..255 are the bytes; a special id must be 256 or more.", nameof(eos));
        }

        if (bos is not null && bos == eos)
        {
            throw new ArgumentException($"bos and eos are both {bos}; they must differ.", nameof(eos));
        }

        BosId = bos;
        EosId = eos;
        VocabSize = Math.Max(255, Math.Max(bos ?? 0, eos ?? 0)) + 1;
    }

    /// <inheritdoc/>
    public int VocabSize { get; }

    /// <inheritdoc/>
    public int? BosId { get; }

    /// <inheritdoc/>
    public int? EosId { get; }

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        int[] ids = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            ids[i] = bytes[i];
        }

        return ids;
    }

    /// <summary>
    /// Decodes the bytes as UTF-8 (invalid sequences become U+FFFD) and skips BOS/EOS; any other
    /// id outside 0..255 (a model with a larger vocabulary may sample one) becomes U+FFFD.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>(ids.Length);
        foreach (int id in ids)
        {
            if (id is >= 0 and < 256)
            {
                bytes.Add((byte)id);
            }
            else if (id != BosId && id != EosId)
            {
                bytes.AddRange(Replacement);
            }
        }

        return Encoding.UTF8.GetString(CollectionsMarshal.AsSpan(bytes));
    }
}
