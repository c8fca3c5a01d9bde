// A tokenized corpus for causal-LM training: documents → one token stream
//   [BOS] doc₀ [EOS] [BOS] doc₁ [EOS] ...   (BOS/EOS only when the tokenizer has them)
// and windows of seq + 1 tokens cut from it: inputs = window[0..seq), labels = window[1..seq]
// (label t is the token after input t). Documents come from a .jsonl file (one JSON object per
// line with a "text" string; also any file whose first non-blank line starts with '{') or from
// plain text, where blank lines separate documents and the lines of one document keep their '\n'.
// Text is UTF-8 (a BOM is skipped; a UTF-16/32 BOM selects that encoding): an invalid byte sequence is
// refused naming the line and byte offset, as Python's UnicodeDecodeError in PyTorch/HF datasets
// loaders, instead of being replaced by U+FFFD and trained on.
using System.Buffers;
using System.Globalization;
using System.Text.Json;
using System.Text.Unicode;

namespace PeftKernels.Text;

/// <summary>A corpus tokenized into one token stream, and training/evaluation windows over it.</summary>
public sealed class TextDataset
{
    /// <summary>Wraps an existing token stream.</summary>
    public TextDataset(int[] tokens, int documentCount = 1)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (documentCount < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(documentCount), string.Create(CultureInfo.InvariantCulture, $"documentCount must be >= 0; got {documentCount}."));
        }
        Tokens = tokens;
        DocumentCount = documentCount;
    }

    /// <summary>All documents' tokens, concatenated (with BOS/EOS around each when the tokenizer has them).</summary>
    public int[] Tokens { get; }

    /// <summary>Number of documents in the stream.</summary>
    public int DocumentCount { get; }

    /// <summary>Reads and tokenizes a .jsonl or plain-text corpus.</summary>
    /// <exception cref="InvalidDataException">
    /// The file is not valid UTF-8 (the message names the line and byte offset), a JSON line is invalid or lacks a "text" string
    /// (the message names the line), or the file holds no document.
    /// </exception>
    public static TextDataset Load(string path, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tokenizer);
        string[] lines = ReadLines(path);
        string? first = lines.FirstOrDefault(l => !string.IsNullOrWhiteSpace(l));
        bool jsonl = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) || (first?.TrimStart().StartsWith('{') ?? false);
        var documents = jsonl ? JsonLines(lines, path) : Paragraphs(lines);
        if (documents.Count == 0)
        {
            throw new InvalidDataException($"{path}: no documents; the file is empty or blank.");
        }

        var tokens = new List<int>();
        foreach (string document in documents)
        {
            if (tokenizer.BosId is { } bos)
            {
                tokens.Add(bos);
            }

            tokens.AddRange(tokenizer.Encode(document));
            if (tokenizer.EosId is { } eos)
            {
                tokens.Add(eos);
            }
        }

        return new TextDataset([.. tokens], documents.Count);
    }

    /// <summary>
    /// <paramref name="batch"/> windows at random starts (drawn from <paramref name="rng"/>, so the
    /// same seed gives the same batch): inputs and labels of length batch·seq, row-major [batch, seq].
    /// </summary>
    /// <exception cref="ArgumentException">The stream is shorter than seq + 1 tokens.</exception>
    public (int[] Inputs, int[] Labels) Batch(int batch, int seq, Random rng)
    {
        ArgumentNullException.ThrowIfNull(rng);
        CheckWindow(batch, seq);
        int[] inputs = new int[batch * seq], labels = new int[batch * seq];
        for (int b = 0; b < batch; b++)
        {
            int start = rng.Next(Tokens.Length - seq);
            Tokens.AsSpan(start, seq).CopyTo(inputs.AsSpan(b * seq));
            Tokens.AsSpan(start + 1, seq).CopyTo(labels.AsSpan(b * seq));
        }

        return (inputs, labels);
    }

    /// <summary>
    /// Evaluation windows in order: window w has inputs Tokens[w·seq, w·seq + seq) and the labels
    /// one further, so every token but the first is predicted exactly once, except a tail shorter
    /// than seq. Windows are grouped <paramref name="batch"/> at a time; the last group may be smaller.
    /// </summary>
    /// <exception cref="ArgumentException">The stream is shorter than seq + 1 tokens.</exception>
    public IEnumerable<(int[] Inputs, int[] Labels)> Sequential(int batch, int seq)
    {
        CheckWindow(batch, seq);
        return Windows(batch, seq);
    }

    private IEnumerable<(int[] Inputs, int[] Labels)> Windows(int batch, int seq)
    {
        int windows = (Tokens.Length - 1) / seq;
        for (int first = 0; first < windows; first += batch)
        {
            int rows = Math.Min(batch, windows - first);
            yield return (Tokens[(first * seq)..((first + rows) * seq)], Tokens[((first * seq) + 1)..(((first + rows) * seq) + 1)]);
        }
    }

    private void CheckWindow(int batch, int seq)
    {
        if (batch <= 0 || seq <= 0)
        {
            throw new ArgumentOutOfRangeException(batch <= 0 ? nameof(batch) : nameof(seq),
                string.Create(CultureInfo.InvariantCulture, $"batch and seq must be positive; got batch {batch}, seq {seq}."));
        }
        if ((long)batch * seq > Array.MaxLength)
        {
            throw new ArgumentException($"batch × seq = {(long)batch * seq} is too large for one array.", nameof(batch));
        }

        if (Tokens.Length < (long)seq + 1)
        {
            throw new ArgumentException(
                $"the token stream has {Tokens.Length} tokens, fewer than the seq + 1 = {(long)seq + 1} of one window.", nameof(seq));
        }
    }

    /// <summary>The file's lines (split as File.ReadAllLines does), refusing invalid UTF-8.</summary>
    private static string[] ReadLines(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        bool utf16or32 = bytes.Length >= 2 && ((bytes[0] == 0xFF && bytes[1] == 0xFE) || (bytes[0] == 0xFE && bytes[1] == 0xFF))
            || (bytes.Length >= 4 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0xFE && bytes[3] == 0xFF);
        string text;
        if (utf16or32)
        {
            text = File.ReadAllText(path);
        }
        else
        {
            int start = bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? 3 : 0;
            var chars = new char[bytes.Length - start];
            var status = Utf8.ToUtf16(bytes.AsSpan(start), chars, out int read, out int written, replaceInvalidSequences: false);
            if (status != OperationStatus.Done)
            {
                int offset = start + read;
                int line = bytes.AsSpan(0, offset).Count((byte)'\n') + 1;
                int lineStart = bytes.AsSpan(0, offset).LastIndexOf((byte)'\n') + 1;
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"{path}: line {line}: invalid UTF-8 at byte offset {offset} (byte {offset - lineStart + 1} of the line, 0x{bytes[offset]:X2}); training data must be UTF-8 text."));
            }

            text = new string(chars, 0, written);
        }

        var lines = new List<string>();
        using var reader = new StringReader(text);
        while (reader.ReadLine() is { } line)
        {
            lines.Add(line);
        }

        return [.. lines];
    }

    private static List<string> JsonLines(string[] lines, string path)
    {
        var documents = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i]))
            {
                continue;
            }

            string where = $"{path}:{i + 1}";
            JsonDocument line;
            try
            {
                line = JsonDocument.Parse(lines[i]);
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{where}: not valid JSON: {e.Message}", e);
            }

            using (line)
            {
                var root = line.RootElement;
                if (root.ValueKind != JsonValueKind.Object)
                {
                    throw new InvalidDataException($"{where}: expected a JSON object with a \"text\" string; found {root.ValueKind}.");
                }

                if (!root.TryGetProperty("text", out var text))
                {
                    throw new InvalidDataException($"{where}: the object has no \"text\" field.");
                }

                documents.Add(text.ValueKind == JsonValueKind.String ? text.GetString()!
                    : throw new InvalidDataException($"{where}: \"text\" must be a string; it is {text.ValueKind}."));
            }
        }

        return documents;
    }

    private static List<string> Paragraphs(string[] lines)
    {
        var documents = new List<string>();
        var current = new List<string>();
        foreach (string line in lines.Append(""))
        {
            if (!string.IsNullOrWhiteSpace(line))
            {
                current.Add(line);
            }
            else if (current.Count > 0)
            {
                documents.Add(string.Join('\n', current));
                current.Clear();
            }
        }

        return documents;
    }
}
