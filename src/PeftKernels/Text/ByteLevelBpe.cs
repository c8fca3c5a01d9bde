// A byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2, SmolLM) read from a Hugging Face
// tokenizer.json, on top of Microsoft.ML.Tokenizers' BpeTokenizer. Encoding follows the
// tokenizers library: normalize (NFC/NFKC/NFD/NFKD or none), split off added tokens, split the
// rest with the pre-tokenizer regex (Split "Isolated", or ByteLevel's GPT-2 regex when
// use_regex), map each piece's UTF-8 bytes to GPT-2's printable characters (space → 'Ġ'), then
// apply the merges by rank. With ignore_merges (Llama 3) a piece that is a whole vocabulary
// entry is taken as it is. Decoding drops tokens marked "special" in added_tokens.
// Not supported (NotSupportedException): non-byte-level BPE (SentencePiece-style tokenizer.json
// with byte_fallback; use tokenizer.model), other model types, add_prefix_space, other
// pre-tokenizers and normalizers.
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using PeftKernels.IO;

namespace PeftKernels.Text;

internal sealed class ByteLevelBpe
{
    // The regex of GPT-2's ByteLevel pre-tokenizer (use_regex: true).
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly char[] ByteToChar = BuildByteToChar();

    private readonly string path;
    private readonly BpeTokenizer bpe;
    private readonly Dictionary<string, int> vocab;
    private readonly Dictionary<string, int> added;
    private readonly HashSet<int> specialIds;
    private readonly RegexPreTokenizer preTokenizer;
    private readonly NormalizationForm[] normalization;
    private readonly bool ignoreMerges;

    private ByteLevelBpe(string path, BpeTokenizer bpe, Dictionary<string, int> vocab, Dictionary<string, int> added, HashSet<int> specialIds,
        RegexPreTokenizer preTokenizer, NormalizationForm[] normalization, bool ignoreMerges)
    {
        this.path = path;
        this.bpe = bpe;
        this.vocab = vocab;
        this.added = added;
        this.specialIds = specialIds;
        this.preTokenizer = preTokenizer;
        this.normalization = normalization;
        this.ignoreMerges = ignoreMerges;
        VocabSize = vocab.Values.Concat(added.Values).DefaultIfEmpty(-1).Max() + 1;
    }

    public int VocabSize { get; }

    /// <summary>The id of a token string (added tokens first, then the model vocabulary), or null.</summary>
    public int? IdOf(string token) => added.TryGetValue(token, out int id) || vocab.TryGetValue(token, out id) ? id : null;

    public static ByteLevelBpe Load(string path) => Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxTokenizerBytes), path);

    /// <summary>Parses the bytes of a tokenizer.json; <paramref name="path"/> names it in errors.</summary>
    public static ByteLevelBpe Parse(byte[] utf8, string path)
    {
        using var document = HfTokenizer.ParseJson(utf8, path);
        var root = document.RootElement;
        var model = Element(root, "model") is { ValueKind: JsonValueKind.Object } m
            ? m : throw new InvalidDataException($"{path}: \"model\" is missing or not an object.");
        string type = TypeOf(model);
        if (type != "BPE")
        {
            throw new NotSupportedException($"{path}: model type \"{type}\" is not supported; only byte-level \"BPE\" is (or a tokenizer.model file).");
        }

        var preTokenizer = Element(root, "pre_tokenizer");
        bool byteLevel = UsesByteLevel(preTokenizer) || (Element(root, "decoder") is { } decoder && TypeOf(decoder) == "ByteLevel");
        if (!byteLevel || (Element(model, "byte_fallback") is { } fallback && fallback.ValueKind == JsonValueKind.True))
        {
            throw new NotSupportedException(
                $"{path}: a BPE model that is not byte-level (SentencePiece-style, byte_fallback) is not supported; put its tokenizer.model beside it.");
        }

        foreach (string key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
        {
            if (String(model, key, $"model.{key}", path) is { Length: > 0 } text)
            {
                throw new NotSupportedException($"{path}: model.{key} = \"{text}\" is not supported.");
            }
        }

        var vocab = ReadVocab(model, path);
        var merges = ReadMerges(model, path);
        var (added, specialIds) = ReadAddedTokens(root, path);
        string pattern = Pattern(preTokenizer, path) ?? @"[\s\S]+";
        var normalization = Normalization(Element(root, "normalizer"), path);
        bool ignoreMerges = Element(model, "ignore_merges") is { ValueKind: JsonValueKind.True };

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, ByteLevel = true, SpecialTokens = added });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new InvalidDataException($"{path}: the BPE model (vocab, merges, added_tokens) is inconsistent: {e.Message}", e);
        }

        Regex regex;
        try
        {
            regex = new Regex(pattern, RegexOptions.Compiled);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: the pre_tokenizer pattern is not a valid regular expression: {e.Message}", e);
        }

        if (regex.IsMatch(string.Empty))
        {
            // Microsoft.ML.Tokenizers' RegexPreTokenizer never moves past an empty match.
            throw new NotSupportedException($"{path}: the pre_tokenizer pattern \"{(pattern.Length > 60 ? pattern[..60] + "…" : pattern)}\" matches the empty string; only patterns that match at least one character are supported.");
        }

        var splitter = new RegexPreTokenizer(regex, added);
        return new ByteLevelBpe(path, bpe, vocab, added, specialIds, splitter, normalization, ignoreMerges);
    }

    public int[] Encode(string text)
    {
        foreach (var form in normalization)
        {
            text = text.Normalize(form);
        }

        var ids = new List<int>();
        foreach (var (offset, length) in preTokenizer.PreTokenize(text))
        {
            if (length == 0)
            {
                // A lookaround-only match: RegexPreTokenizer would return it forever.
                throw new NotSupportedException($"{path}: the pre_tokenizer pattern matched the empty string at offset {offset} of the text; only patterns that match at least one character are supported.");
            }

            string piece = text.Substring(offset, length);
            if (added.TryGetValue(piece, out int id) || (ignoreMerges && vocab.TryGetValue(ToByteLevel(piece), out id)))
            {
                ids.Add(id);
            }
            else
            {
                ids.AddRange(bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
            }
        }

        return [.. ids];
    }

    public string Decode(IEnumerable<int> ids) => bpe.Decode(ids.Where(id => !specialIds.Contains(id)), considerSpecialTokens: true);

    /// <summary>GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for U+0100 onwards.</summary>
    internal static string ToByteLevel(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            chars[i] = ByteToChar[bytes[i]];
        }

        return new string(chars);
    }

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= '¡' and <= '¬' or >= '®' and <= 'ÿ';
            map[b] = printable ? (char)b : (char)next++;
        }

        return map;
    }

    private static JsonElement? Element(JsonElement obj, string key) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

    /// <summary>A string value, or null when absent or null.</summary>
    private static string? String(JsonElement obj, string key, string field, string path) => Element(obj, key) is { } value
        ? (value.ValueKind == JsonValueKind.String ? value.GetString() : throw WrongType(field, "a string", value, path))
        : null;

    /// <summary>The items of a list, none when absent or null.</summary>
    private static IEnumerable<JsonElement> Items(JsonElement obj, string key, string field, string path) => Element(obj, key) is { } value
        ? (value.ValueKind == JsonValueKind.Array ? value.EnumerateArray() : throw WrongType(field, "a list", value, path))
        : [];

    private static InvalidDataException WrongType(string field, string expected, JsonElement value, string path)
    {
        string raw = value.GetRawText();
        return new($"{path}: \"{field}\" must be {expected}; it is {(raw.Length > 60 ? raw[..60] + "…" : raw)} ({value.ValueKind.ToString().ToLowerInvariant()}).");
    }

    private static string TypeOf(JsonElement obj) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";

    private static bool UsesByteLevel(JsonElement? preTokenizer) => preTokenizer is { } p && TypeOf(p) switch
    {
        "ByteLevel" => true,
        "Sequence" => Element(p, "pretokenizers") is { ValueKind: JsonValueKind.Array } list && list.EnumerateArray().Any(e => UsesByteLevel(e)),
        _ => false,
    };

    /// <summary>The splitting regex of the pre-tokenizer, or null when it keeps the text whole.</summary>
    private static string? Pattern(JsonElement? preTokenizer, string path)
    {
        if (preTokenizer is not { } p)
        {
            return null;
        }

        switch (TypeOf(p))
        {
            case "ByteLevel":
                if (Element(p, "add_prefix_space") is not { ValueKind: JsonValueKind.False })
                {
                    throw new NotSupportedException($"{path}: pre_tokenizer ByteLevel with add_prefix_space (true or absent) is not supported.");
                }

                return Element(p, "use_regex") is { ValueKind: JsonValueKind.False } ? null : Gpt2Pattern;
            case "Split":
                bool isolated = String(p, "behavior", "pre_tokenizer.behavior", path) == "Isolated";
                if (!isolated || Element(p, "invert") is { ValueKind: JsonValueKind.True })
                {
                    throw new NotSupportedException($"{path}: pre_tokenizer Split is supported with behavior \"Isolated\" and invert false only.");
                }

                var pattern = Element(p, "pattern") ?? throw new InvalidDataException($"{path}: pre_tokenizer Split has no \"pattern\".");
                return String(pattern, "Regex", "pre_tokenizer.pattern.Regex", path) ?? Regex.Escape(String(pattern, "String", "pre_tokenizer.pattern.String", path)
                    ?? throw new InvalidDataException($"{path}: pre_tokenizer Split pattern has neither \"Regex\" nor \"String\"."));
            case "Sequence":
                _ = Element(p, "pretokenizers") ?? throw new InvalidDataException($"{path}: pre_tokenizer Sequence has no \"pretokenizers\".");
                var patterns = Items(p, "pretokenizers", "pre_tokenizer.pretokenizers", path).Select(e => Pattern(e, path)).OfType<string>().ToList();
                return patterns.Count <= 1 ? patterns.FirstOrDefault()
                    : throw new NotSupportedException($"{path}: a pre_tokenizer Sequence with {patterns.Count} splitting steps is not supported (one at most).");
            default:
                throw new NotSupportedException($"{path}: pre_tokenizer type \"{TypeOf(p)}\" is not supported (ByteLevel, Split, Sequence are).");
        }
    }

    private static NormalizationForm[] Normalization(JsonElement? normalizer, string path)
    {
        if (normalizer is not { } n)
        {
            return [];
        }

        return TypeOf(n) switch
        {
            "NFC" => [NormalizationForm.FormC],
            "NFD" => [NormalizationForm.FormD],
            "NFKC" => [NormalizationForm.FormKC],
            "NFKD" => [NormalizationForm.FormKD],
            "Sequence" => [.. Items(n, "normalizers", "normalizer.normalizers", path).SelectMany(e => Normalization(e, path))],
            string other => throw new NotSupportedException($"{path}: normalizer type \"{other}\" is not supported (NFC, NFD, NFKC, NFKD, Sequence are)."),
        };
    }

    private static Dictionary<string, int> ReadVocab(JsonElement model, string path)
    {
        if (Element(model, "vocab") is not { ValueKind: JsonValueKind.Object } vocab)
        {
            throw new InvalidDataException($"{path}: model.vocab is missing or not an object.");
        }

        var result = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocab.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id is < 0 or > InputLimits.MaxTokenId)
            {
                throw new InvalidDataException($"{path}: model.vocab[\"{entry.Name}\"] = {entry.Value.GetRawText()}; expected an integer id in 0..{InputLimits.MaxTokenId}.");
            }

            result[entry.Name] = id;
        }

        return result;
    }

    // Merges are "a b" strings (older files) or ["a", "b"] pairs (tokenizers ≥ 0.20); the library takes "a b".
    private static List<string> ReadMerges(JsonElement model, string path)
    {
        var merges = new List<string>();
        int index = 0;
        foreach (var merge in Items(model, "merges", "model.merges", path))
        {
            string? text = merge.ValueKind switch
            {
                JsonValueKind.String => merge.GetString(),
                JsonValueKind.Array when merge.GetArrayLength() == 2 && merge.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String && !e.GetString()!.Contains(' ')) =>
                    $"{merge[0].GetString()} {merge[1].GetString()}",
                _ => null,
            };
            merges.Add(text ?? throw new InvalidDataException($"{path}: model.merges[{index}] = {merge.GetRawText()}; expected \"a b\" or [\"a\", \"b\"]."));
            index++;
        }

        return merges;
    }

    private static (Dictionary<string, int> Added, HashSet<int> SpecialIds) ReadAddedTokens(JsonElement root, string path)
    {
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        var special = new HashSet<int>();
        int index = 0;
        foreach (var token in Items(root, "added_tokens", "added_tokens", path))
        {
            if (Element(token, "content") is not { ValueKind: JsonValueKind.String } content
                || Element(token, "id") is not { ValueKind: JsonValueKind.Number } id || !id.TryGetInt32(out int value) || value is < 0 or > InputLimits.MaxTokenId)
            {
                throw new InvalidDataException($"{path}: added_tokens[{index}] needs a string \"content\" and an integer \"id\" in 0..{InputLimits.MaxTokenId}.");
            }

            added[content.GetString()!] = value;
            if (Element(token, "special") is { ValueKind: JsonValueKind.True })
            {
                special.Add(value);
            }

            index++;
        }

        return (added, special);
    }
}
