// Size limits of the files the readers load whole into memory, checked before anything is
// allocated (docs/reliability.md lists every limit). Each is far above the real files (a Llama
// config.json is ~1 KB, a Llama 3 tokenizer.json ~9 MB, a tokenizer.model ~0.5-4 MB) and far
// below what would exhaust memory.
namespace PeftKernels.IO;

internal static class InputLimits
{
    /// <summary>config.json, adapter_config.json, tokenizer_config.json: 16 MiB.</summary>
    public const long MaxConfigJsonBytes = 16L << 20;

    /// <summary>tokenizer.json and tokenizer.model: 512 MiB.</summary>
    public const long MaxTokenizerBytes = 512L << 20;

    /// <summary>The largest token id a tokenizer may use (2^24 - 1); real vocabularies have up to ~260 000 ids.</summary>
    public const int MaxTokenId = (1 << 24) - 1;

    /// <summary>The bytes of <paramref name="path"/>, after checking its length against <paramref name="limit"/>.</summary>
    /// <exception cref="InvalidDataException">The file is longer than <paramref name="limit"/>.</exception>
    public static byte[] ReadAllBytes(string path, long limit)
    {
        long length = new FileInfo(path).Length;
        return length <= limit
            ? File.ReadAllBytes(path)
            : throw new InvalidDataException($"{path}: the file is {length} bytes; the limit for this file is {limit} bytes.");
    }

    /// <summary>
    /// Checks that a JSON file is valid UTF-8 before it is parsed: System.Text.Json checks the bytes
    /// of a string only when the string is read, and then throws InvalidOperationException.
    /// </summary>
    /// <exception cref="InvalidDataException">The bytes are not valid UTF-8; the message gives the offset of the first bad byte.</exception>
    public static void CheckUtf8(ReadOnlySpan<byte> utf8, string path)
    {
        if (!System.Text.Unicode.Utf8.IsValid(utf8))
        {
            int offset = 0;
            while (System.Text.Rune.DecodeFromUtf8(utf8[offset..], out _, out int consumed) == System.Buffers.OperationStatus.Done)
            {
                offset += consumed;
            }

            throw new InvalidDataException($"{path}: not valid UTF-8 (byte 0x{utf8[offset]:X2} at offset {offset}).");
        }
    }
}
