// Writing LlamaConfig as a Hugging Face config.json (reading: LlamaConfigJson.cs).
// Writing a config read from a file keeps that file's object: every key in its order, its
// values as written (numbers as their source text: 1e-05, 0.0, nested objects, unknown keys),
// except a key whose modelled value changed (e.g. torch_dtype after a dtype conversion), which
// is rewritten in place, and a new modelled key, appended (inserted in order when the source's
// keys are sorted). A config built in code is written with every key transformers writes for a
// LlamaConfig (sorted, as save_pretrained does), but transformers_version.
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Models;

internal static partial class LlamaConfigJson
{
    /// <summary>
    /// Writes <paramref name="config"/> to <paramref name="path"/> atomically; keys of the source file are kept (see the
    /// file header), <paramref name="dropKeys"/> are removed from them.
    /// </summary>
    public static void Write(LlamaConfig config, string path, IReadOnlyCollection<string>? dropKeys = null)
    {
        var modelled = Modelled(config);
        var properties = config.SourceJson is { } source ? Merge(source, modelled, dropKeys ?? []) : Fresh(modelled);
        AtomicFile.Write(path, stream =>
        {
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                foreach (var (key, value) in properties)
                {
                    w.WritePropertyName(key);
                    value(w);
                }

                w.WriteEndObject();
            }

            stream.Write("\n"u8);
        });
    }

    /// <summary>The keys transformers' LlamaConfig writes that this library does not model, with their defaults.</summary>
    private static readonly (string Key, string Json)[] UnmodelledDefaults =
        [("attention_dropout", "0.0"), ("initializer_range", "0.02"), ("pretraining_tp", "1"), ("use_cache", "true")];

    private static List<(string Key, Action<Utf8JsonWriter> Value)> Fresh(List<(string Key, string Json)> modelled) =>
        [.. modelled.Concat(UnmodelledDefaults).OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => (p.Key, Raw(p.Json)))];

    /// <summary>The source's keys in order, changed modelled keys rewritten in place, new ones added.</summary>
    private static List<(string Key, Action<Utf8JsonWriter> Value)> Merge(JsonElement source, List<(string Key, string Json)> modelled, IReadOnlyCollection<string> drop)
    {
        var before = Modelled(Read(source, "config.json")).ToDictionary(p => p.Key, p => p.Json, StringComparer.Ordinal);
        var changed = modelled.Where(p => before[p.Key] != p.Json).ToDictionary(p => p.Key, p => p.Json, StringComparer.Ordinal);
        if (changed.TryGetValue("torch_dtype", out string? dtype) && source.TryGetProperty("dtype", out _))
        {
            // Newer transformers name it "dtype": rewrite that key, and torch_dtype only where the source has it too.
            changed["dtype"] = dtype;
            if (!source.TryGetProperty("torch_dtype", out _))
            {
                changed.Remove("torch_dtype");
            }
        }

        var result = new List<(string Key, Action<Utf8JsonWriter> Value)>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var property in source.EnumerateObject())
        {
            if (drop.Contains(property.Name) || !names.Add(property.Name))
            {
                continue;
            }

            var value = property.Value;
            result.Add((property.Name, changed.TryGetValue(property.Name, out string? json) ? Raw(json) : value.WriteTo));
        }

        bool sorted = result.Select(p => p.Key).Order(StringComparer.Ordinal).SequenceEqual(result.Select(p => p.Key));
        foreach (var (key, json) in changed.Where(c => !names.Contains(c.Key)))
        {
            int at = sorted ? result.FindIndex(p => string.CompareOrdinal(p.Key, key) > 0) : -1;
            result.Insert(at < 0 ? result.Count : at, (key, Raw(json)));
        }

        return result;
    }

    private static Action<Utf8JsonWriter> Raw(string json) => w => w.WriteRawValue(json, skipInputValidation: true);

    /// <summary>Every modelled key and its JSON text, in the order (sorted) a config built in code is written.</summary>
    private static List<(string Key, string Json)> Modelled(LlamaConfig config)
    {
        var keys = new List<(string Key, string Json)>();
        void Add(string key, Action<Utf8JsonWriter> write)
        {
            var buffer = new System.Buffers.ArrayBufferWriter<byte>();
            using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                write(w);
            }

            keys.Add((key, Encoding.UTF8.GetString(buffer.WrittenSpan)));
        }

        Add("architectures", w =>
        {
            w.WriteStartArray();
            foreach (string architecture in config.Architectures)
            {
                w.WriteStringValue(architecture);
            }

            w.WriteEndArray();
        });
        Add("attention_bias", w => w.WriteBooleanValue(config.AttentionBias));
        Add("bos_token_id", w => WriteOptional(w, config.BosTokenId));
        Add("eos_token_id", w => WriteEos(w, config.EosTokenId));
        Add("head_dim", w => w.WriteNumberValue(config.HeadDim));
        Add("hidden_act", w => w.WriteStringValue(config.HiddenAct));
        Add("hidden_size", w => w.WriteNumberValue(config.HiddenSize));
        Add("intermediate_size", w => w.WriteNumberValue(config.IntermediateSize));
        Add("max_position_embeddings", w => w.WriteNumberValue(config.MaxPositionEmbeddings));
        Add("mlp_bias", w => w.WriteBooleanValue(config.MlpBias));
        Add("model_type", w => w.WriteStringValue(config.ModelType));
        Add("num_attention_heads", w => w.WriteNumberValue(config.NumAttentionHeads));
        Add("num_hidden_layers", w => w.WriteNumberValue(config.NumHiddenLayers));
        Add("num_key_value_heads", w => w.WriteNumberValue(config.NumKeyValueHeads));
        Add("rms_norm_eps", w => WriteFloat(w, config.RmsNormEps));
        Add("rope_scaling", w => WriteRopeScaling(w, config.RopeScaling));
        Add("rope_theta", w => WriteFloat(w, config.RopeTheta));
        Add("tie_word_embeddings", w => w.WriteBooleanValue(config.TieWordEmbeddings));
        Add("torch_dtype", w => w.WriteStringValue(config.TorchDtype));
        Add("vocab_size", w => w.WriteNumberValue(config.VocabSize));
        return keys;
    }

    private static string DefaultArchitecture(string modelType) => modelType switch
    {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };

    private static void WriteOptional(Utf8JsonWriter w, int? value)
    {
        if (value is { } v)
        {
            w.WriteNumberValue(v);
        }
        else
        {
            w.WriteNullValue();
        }
    }

    private static void WriteEos(Utf8JsonWriter w, int[]? ids)
    {
        if (ids is [int single])
        {
            w.WriteNumberValue(single);
            return;
        }

        if (ids is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartArray();
        foreach (int id in ids)
        {
            w.WriteNumberValue(id);
        }

        w.WriteEndArray();
    }

    private static void WriteRopeScaling(Utf8JsonWriter w, RopeScaling? scaling)
    {
        if (scaling is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartObject();
        w.WritePropertyName("factor");
        WriteFloat(w, scaling.Factor);
        if (scaling.HighFreqFactor is { } high)
        {
            w.WritePropertyName("high_freq_factor");
            WriteFloat(w, high);
        }

        if (scaling.LowFreqFactor is { } low)
        {
            w.WritePropertyName("low_freq_factor");
            WriteFloat(w, low);
        }

        if (scaling.OriginalMaxPositionEmbeddings is { } original)
        {
            w.WriteNumber("original_max_position_embeddings", original);
        }

        w.WriteString("rope_type", scaling.RopeType);
        w.WriteEndObject();
    }

    // Python writes floats with a decimal point (10000.0, 1e-05); keep that so the file reads as
    // a float in transformers too. "R" round-trips every double exactly.
    private static void WriteFloat(Utf8JsonWriter w, double value)
    {
        string text = value.ToString("R", CultureInfo.InvariantCulture);
        if (!text.Contains('.') && !text.Contains('E'))
        {
            text += ".0";
        }

        w.WriteRawValue(Encoding.UTF8.GetBytes(text));
    }
}
