// The tokenizer of a Hugging Face model folder, through Microsoft.ML.Tokenizers:
//   tokenizer.model (SentencePiece, Llama 2 / TinyLlama / Mistral) → LlamaTokenizer, with the
//     added tokens of tokenizer.json (or tokenizer_config.json's added_tokens_decoder) as
//     special tokens;
//   else tokenizer.json with a byte-level BPE model (Llama 3, Qwen2, SmolLM) → ByteLevelBpe.
// BOS/EOS are tokenizer_config.json's bos_token/eos_token when it states them (a string or
// {"content": ...}; null means none), else the SentencePiece model's own, else none.
// Encode never adds BOS/EOS; callers (TextDataset) do.
using System.Text.Json;
using Google.Protobuf;
using Microsoft.ML.Tokenizers;
using PeftKernels.IO;

namespace PeftKernels.Text;

/// <summary>A Hugging Face tokenizer (tokenizer.model or tokenizer.json) behind <see cref="ITokenizer"/>.</summary>
public sealed class HfTokenizer : ITokenizer
{
    private const string SentencePieceFile = "tokenizer.model";
    private const string JsonFile = "tokenizer.json";
    private const string ConfigFile = "tokenizer_config.json";

    private readonly Func<string, int[]> encode;
    private readonly Func<List<int>, string> decode;

    private HfTokenizer(int vocabSize, int? bos, int? eos, Func<string, int[]> encode, Func<List<int>, string> decode)
    {
        VocabSize = vocabSize;
        BosId = bos;
        EosId = eos;
        this.encode = encode;
        this.decode = decode;
    }

    /// <inheritdoc/>
    public int VocabSize { get; }

    /// <inheritdoc/>
    public int? BosId { get; }

    /// <inheritdoc/>
    public int? EosId { get; }

    /// <summary>Loads the tokenizer of <paramref name="modelFolder"/>.</summary>
    /// <exception cref="FileNotFoundException">The folder has neither tokenizer.model nor tokenizer.json.</exception>
    /// <exception cref="NotSupportedException">tokenizer.json describes a tokenizer this library cannot run.</exception>
    public static ITokenizer Load(string modelFolder) =>
        TryLoad(modelFolder) ?? throw new FileNotFoundException($"{modelFolder}: no {SentencePieceFile} or {JsonFile} in the folder.");

    /// <summary>Loads the tokenizer of <paramref name="modelFolder"/>, or returns null when the folder has no tokenizer files.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public static ITokenizer? TryLoad(string modelFolder)
    {
        ArgumentNullException.ThrowIfNull(modelFolder);
        if (!Directory.Exists(modelFolder))
        {
            throw new DirectoryNotFoundException($"{modelFolder}: no such folder.");
        }

        string sentencePiece = Path.Combine(modelFolder, SentencePieceFile), json = Path.Combine(modelFolder, JsonFile);
        if (File.Exists(sentencePiece))
        {
            return LoadSentencePiece(modelFolder, sentencePiece, json);
        }

        return File.Exists(json) ? LoadByteLevelBpe(modelFolder, json) : null;
    }

    /// <summary>
    /// The folder's tokenizer, or a <see cref="ByteTokenizer"/> when it has none; checks that the
    /// ids fit the model's <paramref name="vocabSize"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">The folder's tokenizer has more ids than the model's vocabulary.</exception>
    /// <exception cref="ArgumentException">No tokenizer files and <paramref name="vocabSize"/> &lt; 256.</exception>
    public static ITokenizer ForModel(string modelFolder, int vocabSize)
    {
        var tokenizer = TryLoad(modelFolder);
        if (tokenizer is null)
        {
            return vocabSize >= 256 ? new ByteTokenizer()
                : throw new ArgumentException(
                    $"{modelFolder} has no tokenizer, and the byte tokenizer used instead needs 256 ids; the model's vocab_size is {vocabSize}.", nameof(vocabSize));
        }

        return tokenizer.VocabSize <= vocabSize ? tokenizer
            : throw new InvalidDataException($"{modelFolder}: the tokenizer has {tokenizer.VocabSize} ids, more than the model's vocab_size {vocabSize}.");
    }

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return encode(text);
    }

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids) => decode([.. ids]);

    /// <summary>Parses a tokenizer.json as <see cref="Load"/> does, without tokenizer_config.json; <paramref name="path"/> names it in errors.</summary>
    internal static HfTokenizer ParseTokenizerJson(byte[] utf8, string path) =>
        FromByteLevelBpe(ByteLevelBpe.Parse(utf8, path), TokenizerConfig.None);

    /// <summary>Parses a tokenizer.model as <see cref="Load"/> does, without tokenizer.json or tokenizer_config.json.</summary>
    internal static HfTokenizer ParseSentencePiece(byte[] model, string path)
    {
        using var stream = new MemoryStream(model, writable: false);
        return FromSentencePiece(stream, path, TokenizerConfig.None, []);
    }

    internal static JsonDocument ParseJson(string path, long limit) => ParseJson(InputLimits.ReadAllBytes(path, limit), path);

    internal static JsonDocument ParseJson(byte[] utf8, string path)
    {
        InputLimits.CheckUtf8(utf8, path);
        try
        {
            return JsonDocument.Parse(utf8);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    private static HfTokenizer LoadByteLevelBpe(string folder, string json) => FromByteLevelBpe(ByteLevelBpe.Load(json), ReadConfig(folder));

    private static HfTokenizer FromByteLevelBpe(ByteLevelBpe bpe, TokenizerConfig config) =>
        new(bpe.VocabSize, config.Bos.Resolve(bpe.IdOf, null), config.Eos.Resolve(bpe.IdOf, null), bpe.Encode, bpe.Decode);

    private static HfTokenizer LoadSentencePiece(string folder, string model, string json)
    {
        var config = ReadConfig(folder);
        var added = File.Exists(json) ? AddedTokensOfJson(json) : config.AddedTokens;
        long length = new FileInfo(model).Length;
        if (length > InputLimits.MaxTokenizerBytes)
        {
            throw new InvalidDataException($"{model}: the file is {length} bytes; the limit for a tokenizer.model is {InputLimits.MaxTokenizerBytes} bytes.");
        }

        using var stream = File.OpenRead(model);
        return FromSentencePiece(stream, model, config, added);
    }

    private static HfTokenizer FromSentencePiece(Stream stream, string model, TokenizerConfig config, Dictionary<string, int> added)
    {
        if (stream.Length == 0)
        {
            throw new InvalidDataException($"{model}: the file is empty; expected a SentencePiece model (protobuf ModelProto).");
        }

        LlamaTokenizer tokenizer;
        try
        {
            tokenizer = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false, specialTokens: added.Count > 0 ? added : null);
        }
        catch (Exception e) when (e is InvalidProtocolBufferException || e is not (IOException or OutOfMemoryException))
        {
            // Google.Protobuf's InvalidProtocolBufferException is an IOException: it is a bad file, not a failed read.
            throw new InvalidDataException($"{model}: not a SentencePiece model this library can read: {e.Message}", e);
        }

        int? IdOf(string token) => added.TryGetValue(token, out int id) || tokenizer.Vocabulary.TryGetValue(token, out id) ? id : null;
        if (tokenizer.Vocabulary.Count == 0)
        {
            throw new InvalidDataException($"{model}: the SentencePiece model has no pieces; expected a vocabulary of at least one.");
        }

        int vocabSize = CheckIds(tokenizer.Vocabulary.Values.Concat(added.Values).Max(), model);
        int? bos = config.Bos.Resolve(IdOf, tokenizer.BeginningOfSentenceId >= 0 ? tokenizer.BeginningOfSentenceId : null);
        int? eos = config.Eos.Resolve(IdOf, tokenizer.EndOfSentenceId >= 0 ? tokenizer.EndOfSentenceId : null);
        return new HfTokenizer(vocabSize, bos, eos,
            text => CheckEncoded([.. tokenizer.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false)], vocabSize, model),
            ids => tokenizer.Decode(ids, considerSpecialTokens: false));
    }

    /// <summary>
    /// The ids SentencePiece encoded, checked against the vocabulary: with byte fallback it emits
    /// "&lt;0x00&gt;"'s id + byte without checking that the model has all 256 byte pieces.
    /// </summary>
    private static int[] CheckEncoded(int[] ids, int vocabSize, string model)
    {
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)vocabSize)
            {
                throw new InvalidDataException(
                    $"{model}: encoding gave id {id}, outside the model's {vocabSize} pieces (are its byte-fallback pieces <0x00>..<0xFF> incomplete?).");
            }
        }

        return ids;
    }

    /// <summary>The vocabulary size (largest id + 1) after checking the largest id against <see cref="InputLimits.MaxTokenId"/>.</summary>
    internal static int CheckIds(int maxId, string file) =>
        maxId is >= 0 and <= InputLimits.MaxTokenId ? maxId + 1
            : throw new InvalidDataException($"{file}: token id {maxId} is outside 0..{InputLimits.MaxTokenId} (the largest vocabulary this library loads).");

    private static Dictionary<string, int> AddedTokensOfJson(string json)
    {
        using var document = ParseJson(json, InputLimits.MaxTokenizerBytes);
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (document.RootElement.ValueKind == JsonValueKind.Object && document.RootElement.TryGetProperty("added_tokens", out var list) && list.ValueKind == JsonValueKind.Array)
        {
            foreach (var token in list.EnumerateArray())
            {
                if (token.ValueKind == JsonValueKind.Object && token.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String
                    && token.TryGetProperty("id", out var id) && id.TryGetInt32(out int value))
                {
                    added[content.GetString()!] = value;
                }
            }
        }

        return added;
    }

    private static TokenizerConfig ReadConfig(string folder)
    {
        string path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path))
        {
            return TokenizerConfig.None;
        }

        using var document = ParseJson(path, InputLimits.MaxConfigJsonBytes);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{path}: expected a JSON object; found {root.ValueKind}.");
        }

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
        {
            foreach (var entry in decoder.EnumerateObject())
            {
                if (int.TryParse(entry.Name, out int id) && entry.Value.ValueKind == JsonValueKind.Object && entry.Value.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
                {
                    added[content.GetString()!] = id;
                }
            }
        }

        return new TokenizerConfig(SpecialToken.Read(root, "bos_token", path), SpecialToken.Read(root, "eos_token", path), added);
    }

    private sealed record TokenizerConfig(SpecialToken Bos, SpecialToken Eos, Dictionary<string, int> AddedTokens)
    {
        public static TokenizerConfig None => new(SpecialToken.Unstated, SpecialToken.Unstated, []);
    }

    /// <summary>A bos_token/eos_token entry: unstated (key absent), stated as none (null), or a token string.</summary>
    private sealed record SpecialToken(bool Stated, string? Content, string Key, string File)
    {
        public static readonly SpecialToken Unstated = new(false, null, "", "");

        public static SpecialToken Read(JsonElement root, string key, string file)
        {
            if (!root.TryGetProperty(key, out var value))
            {
                return Unstated;
            }

            string? content = value.ValueKind switch
            {
                JsonValueKind.Null => null,
                JsonValueKind.String => value.GetString(),
                JsonValueKind.Object when value.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                _ => throw new InvalidDataException($"{file}: \"{key}\" must be a string, {{\"content\": string}} or null; it is {value.GetRawText()}."),
            };
            return new SpecialToken(true, content, key, file);
        }

        public int? Resolve(Func<string, int?> idOf, int? fallback)
        {
            if (!Stated)
            {
                return fallback;
            }

            return Content is null ? null
                : idOf(Content) ?? throw new InvalidDataException($"{File}: {Key} \"{Content}\" is not a token of the tokenizer.");
        }
    }
}
