// LlamaConfig ⇄ Hugging Face config.json (snake_case keys, unknown keys ignored); writing is in LlamaConfigJson.Write.cs.
// Defaults for absent (or null) keys follow transformers' LlamaConfig:
//   num_key_value_heads → num_attention_heads, head_dim → hidden_size / num_attention_heads,
//   rope_theta 10000, rms_norm_eps 1e-6, max_position_embeddings 2048, tie_word_embeddings false,
//   hidden_act "silu", attention_bias false (true for model_type "qwen2", whose q/k/v always
//   have biases), mlp_bias false, model_type "llama", architectures [<Type>ForCausalLM].
// eos_token_id may be one id or a list; rope_scaling names its type in "rope_type" (or the older
// "type"); type "default" means no scaling and loads as null. Newer transformers write "dtype"
// instead of "torch_dtype"; both are read, "torch_dtype" is written.
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Models;

internal static partial class LlamaConfigJson
{
    public static LlamaConfig Read(string path) => Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes), path);

    /// <summary>Parses the bytes of a config.json read from <paramref name="path"/> (named in every error).</summary>
    public static LlamaConfig Parse(byte[] utf8, string path)
    {
        InputLimits.CheckUtf8(utf8, path);
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(utf8);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"{path}: expected a JSON object; found {root.ValueKind}.");
            }

            return Read(root, path) with { SourceJson = root.Clone() };
        }
    }

    /// <summary>The modelled keys of one config.json object (<paramref name="path"/> names it in messages).</summary>
    private static LlamaConfig Read(JsonElement root, string path)
    {
        var json = new Reader(root, path);
        string modelType = json.String("model_type") ?? "llama";
        int hidden = json.Int("hidden_size") ?? throw json.Missing("hidden_size");
        int heads = json.Int("num_attention_heads") ?? throw json.Missing("num_attention_heads");
        int? headDim = json.Int("head_dim");
        if (headDim is null && heads > 0 && hidden % heads != 0)
        {
            throw new InvalidDataException($"{path}: head_dim is missing and hidden_size = {hidden} is not a multiple of num_attention_heads = {heads}.");
        }

        return new LlamaConfig
        {
            VocabSize = json.Int("vocab_size") ?? throw json.Missing("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = json.Int("intermediate_size") ?? throw json.Missing("intermediate_size"),
            NumHiddenLayers = json.Int("num_hidden_layers") ?? throw json.Missing("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = json.Int("num_key_value_heads") ?? heads,
            HeadDim = headDim ?? (heads > 0 ? hidden / heads : 0),
            RmsNormEps = json.Double("rms_norm_eps") ?? 1e-6,
            RopeTheta = json.Double("rope_theta") ?? 10000,
            MaxPositionEmbeddings = json.Int("max_position_embeddings") ?? 2048,
            TieWordEmbeddings = json.Bool("tie_word_embeddings") ?? false,
            HiddenAct = json.String("hidden_act") ?? "silu",
            AttentionBias = json.Bool("attention_bias") ?? modelType == "qwen2",
            MlpBias = json.Bool("mlp_bias") ?? false,
            TorchDtype = json.String("torch_dtype") ?? json.String("dtype"),
            BosTokenId = json.Int("bos_token_id"),
            EosTokenId = json.IntOrInts("eos_token_id"),
            RopeScaling = json.RopeScaling("rope_scaling"),
            ModelType = modelType,
            Architectures = json.Strings("architectures") ?? [DefaultArchitecture(modelType)],
        };
    }

    /// <summary>Typed access to the keys of one JSON object; null for an absent or null key.</summary>
    private readonly struct Reader(JsonElement obj, string file, string prefix = "")
    {
        public InvalidDataException Missing(string key) => new($"{file}: \"{prefix}{key}\" is missing.");

        public int? Int(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw WrongType(key, v, "an integer");
        }

        public double? Double(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw WrongType(key, v, "a number");
        }

        public bool? Bool(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw WrongType(key, v, "true or false");
        }

        public string? String(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw WrongType(key, v, "a string");
        }

        public string[]? Strings(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            {
                throw WrongType(key, v, "a list of strings");
            }

            return [.. v.EnumerateArray().Select(e => e.GetString()!)];
        }

        public int[]? IntOrInts(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int single))
            {
                return [single];
            }

            if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out _)))
            {
                throw WrongType(key, v, "an integer or a list of integers");
            }

            return [.. v.EnumerateArray().Select(e => e.GetInt32())];
        }

        public RopeScaling? RopeScaling(string key)
        {
            if (!Get(key, out var v))
            {
                return null;
            }

            if (v.ValueKind != JsonValueKind.Object)
            {
                throw WrongType(key, v, "an object or null");
            }

            var inner = new Reader(v, file, "rope_scaling.");
            string type = inner.String("rope_type") ?? inner.String("type")
                ?? throw new InvalidDataException($"{file}: rope_scaling has neither \"rope_type\" nor \"type\".");
            if (type == "default")
            {
                return null;
            }

            if (type is not ("linear" or "llama3"))
            {
                throw LlamaConfig.UnsupportedRopeType(file, type);
            }

            double factor = inner.Double("factor") ?? throw inner.Missing("factor");
            return type == "llama3"
                ? new RopeScaling
                {
                    RopeType = type,
                    Factor = factor,
                    LowFreqFactor = inner.Double("low_freq_factor"),
                    HighFreqFactor = inner.Double("high_freq_factor"),
                    OriginalMaxPositionEmbeddings = inner.Int("original_max_position_embeddings"),
                }
                : new RopeScaling { RopeType = type, Factor = factor };
        }

        private bool Get(string key, out JsonElement value) =>
            obj.TryGetProperty(key, out value) && value.ValueKind != JsonValueKind.Null;

        private InvalidDataException WrongType(string key, JsonElement value, string expected)
        {
            string shown = value.GetRawText();
            return new($"{file}: \"{prefix}{key}\" must be {expected}; it is {(shown.Length > 80 ? shown[..80] + "…" : shown)}.");
        }
    }
}
