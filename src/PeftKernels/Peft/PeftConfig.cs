// adapter_config.json (docs/formats/peft-adapters.md#adapter_configjson, PEFT v0.20 field names): the fields every PEFT method
// shares, and the dispatch on peft_type ("LORA" → LoraConfig, "IA3" → Ia3Config). Written as
// PEFT writes it (json.dumps(indent=2, sort_keys=True)); read tolerantly (unknown fields are
// ignored). The JSON helpers here are shared by the method configs.
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Peft;

/// <summary>The config of one adapter: <see cref="LoraConfig"/> or <see cref="Ia3Config"/> (PEFT's PeftConfig).</summary>
public abstract record PeftConfig
{
    /// <summary>peft_type as written to adapter_config.json, e.g. "LORA" or "IA3".</summary>
    public abstract string PeftType { get; }

    /// <summary>modules_to_save, or null.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>task_type, e.g. "CAUSAL_LM".</summary>
    public string? TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>revision.</summary>
    public string? Revision { get; init; }

    /// <summary>Checks the values, naming the offending field.</summary>
    public abstract void Validate();

    /// <summary>Writes adapter_config.json atomically, as PEFT writes it (sorted keys, two-space indent).</summary>
    public void Save(string path)
    {
        Validate();
        var fields = new SortedDictionary<string, Action<Utf8JsonWriter>>(StringComparer.Ordinal)
        {
            ["auto_mapping"] = json => json.WriteNullValue(),
            ["base_model_name_or_path"] = json => ConfigJson.WriteString(json, BaseModelNameOrPath),
            ["inference_mode"] = json => json.WriteBooleanValue(true),
            ["modules_to_save"] = json => ConfigJson.WriteStrings(json, ModulesToSave),
            ["peft_type"] = json => json.WriteStringValue(PeftType),
            ["peft_version"] = json => json.WriteStringValue("0.20.0"),
            ["revision"] = json => ConfigJson.WriteString(json, Revision),
            ["task_type"] = json => ConfigJson.WriteString(json, TaskType),
        };
        AddFields(fields);
        AtomicFile.Write(path, stream =>
        {
            // Python's json.dumps(indent=2, sort_keys=True): "\n" line ends, '+' and '<' written as they are.
            using var json = new Utf8JsonWriter(stream, new JsonWriterOptions
            {
                Indented = true,
                IndentSize = 2,
                NewLine = "\n",
                Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
            });
            json.WriteStartObject();
            foreach (var (name, write) in fields)
            {
                json.WritePropertyName(name);
                write(json);
            }

            json.WriteEndObject();
        });
    }

    /// <summary>Reads adapter_config.json of any supported method (peft_type "LORA" or "IA3").</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is missing or unsupported, or a field is bad.</exception>
    public static PeftConfig Load(string path) => Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes), path);

    /// <summary>Parses the bytes of an adapter_config.json; <paramref name="path"/> names it in errors.</summary>
    internal static PeftConfig Parse(byte[] utf8, string path) => ConfigJson.Read<PeftConfig>(utf8, path, ["LORA", "IA3"], (type, root) => type == "IA3"
        ? Ia3Config.FromJson(root)
        : LoraConfig.FromJson(root));

    /// <summary>Adds the method's own fields (and overrides shared ones) to the sorted field table of <see cref="Save"/>.</summary>
    private protected abstract void AddFields(SortedDictionary<string, Action<Utf8JsonWriter>> fields);

    /// <summary>Reads the shared fields from <paramref name="root"/> into <paramref name="config"/>.</summary>
    private protected static T WithCommon<T>(T config, JsonElement root)
        where T : PeftConfig => (T)(((PeftConfig)config) with
        {
            ModulesToSave = ConfigJson.Strings(root, "modules_to_save"),
            TaskType = ConfigJson.Str(root, "task_type"),
            BaseModelNameOrPath = ConfigJson.Str(root, "base_model_name_or_path"),
            Revision = ConfigJson.Str(root, "revision"),
        });
}

/// <summary>Reading and writing helpers of adapter_config.json.</summary>
internal static class ConfigJson
{
    /// <summary>Parses the file, checks peft_type is one of <paramref name="types"/> and builds the config, every failure an InvalidDataException naming the file.</summary>
    public static T Read<T>(string path, string[] types, Func<string, JsonElement, T> build)
        where T : PeftConfig => Read(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes), path, types, build);

    /// <summary>As <see cref="Read{T}(string, string[], Func{string, JsonElement, T})"/>, from the bytes of the file at <paramref name="path"/>.</summary>
    public static T Read<T>(byte[] utf8, string path, string[] types, Func<string, JsonElement, T> build)
        where T : PeftConfig
    {
        InputLimits.CheckUtf8(utf8, path);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(utf8);
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({ex.Message}).", ex);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"{path}: the adapter config must be a JSON object.");
            }

            string expected = string.Join(" or ", types.Select(t => $"\"{t}\""));
            if (root.TryGetProperty("peft_type", out var pt) && pt.ValueKind != JsonValueKind.String)
            {
                throw new InvalidDataException($"{path}: \"peft_type\" must be a string ({expected}); it is {Describe(pt)}.");
            }

            string? peftType = pt.ValueKind == JsonValueKind.String ? pt.GetString() : null;
            if (peftType == null || !types.Contains(peftType))
            {
                throw new InvalidDataException($"{path}: peft_type is {(peftType == null ? "missing" : $"\"{peftType}\"")}; expected {expected}.");
            }

            try
            {
                var config = build(peftType, root);
                config.Validate();
                return config;
            }
            catch (Exception ex) when (ex is InvalidOperationException or FormatException or ArgumentException or NotSupportedException or InvalidDataException)
            {
                throw new InvalidDataException($"{path}: {ex.Message}", ex);
            }
        }
    }

    public static void WriteString(Utf8JsonWriter json, string? value)
    {
        if (value == null)
        {
            json.WriteNullValue();
        }
        else
        {
            json.WriteStringValue(value);
        }
    }

    public static void WriteStrings(Utf8JsonWriter json, IReadOnlyList<string>? values)
    {
        if (values == null)
        {
            json.WriteNullValue();
            return;
        }

        json.WriteStartArray();
        foreach (string v in values)
        {
            json.WriteStringValue(v);
        }

        json.WriteEndArray();
    }

    public static void WriteTargets(Utf8JsonWriter json, TargetModules? targets)
    {
        if (targets == null)
        {
            json.WriteNullValue();
        }
        else
        {
            targets.WriteTo(json);
        }
    }

    public static void WriteNumber(Utf8JsonWriter json, double value)
    {
        // PEFT writes integral alphas as ints (lora_alpha: 16), others as floats.
        if (value == Math.Floor(value) && Math.Abs(value) < 1e15)
        {
            json.WriteNumberValue((long)value);
        }
        else
        {
            json.WriteRawValue(value.ToString("R", CultureInfo.InvariantCulture));
        }
    }

    /// <summary>A float as Python's repr writes it: "0.0", "0.05" (always with a fraction or exponent).</summary>
    public static string PythonFloat(double value)
    {
        string text = value.ToString("R", CultureInfo.InvariantCulture);
        return text.Contains('.', StringComparison.Ordinal) || text.Contains('E', StringComparison.Ordinal) ? text : text + ".0";
    }

    public static JsonElement? Get(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public static int? Int(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw WrongType(name, "an integer", v)) : null;

    public static double? Num(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw WrongType(name, "a number", v)) : null;

    public static bool? Bool(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw WrongType(name, "true or false", v)) : null;

    public static string? Str(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw WrongType(name, "a string", v)) : null;

    /// <summary>A list of strings, or null when absent or null.</summary>
    public static string[]? Strings(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String)
            ? [.. v.EnumerateArray().Select(e => e.GetString()!)]
            : throw WrongType(name, "a list of strings", v))
        : null;

    /// <summary>An integer or a list of integers, or null when absent or null.</summary>
    public static int[]? IntOrInts(JsonElement root, string name) => Get(root, name) is { } v
        ? v.ValueKind switch
        {
            JsonValueKind.Number when v.TryGetInt32(out int single) => [single],
            JsonValueKind.Array when v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _)) =>
                [.. v.EnumerateArray().Select(e => e.GetInt32())],
            _ => throw WrongType(name, "an integer or a list of integers", v),
        }
        : null;

    /// <summary>A JSON object whose values are read by <paramref name="value"/>; empty when absent or null.</summary>
    public static Dictionary<string, TValue> Map<TValue>(JsonElement root, string name, string expected, Func<JsonElement, TValue?> value)
        where TValue : struct
    {
        var map = new Dictionary<string, TValue>(StringComparer.Ordinal);
        if (Get(root, name) is not { } v)
        {
            return map;
        }

        if (v.ValueKind != JsonValueKind.Object)
        {
            throw WrongType(name, $"an object of module name → {expected}", v);
        }

        foreach (var entry in v.EnumerateObject())
        {
            map[entry.Name] = value(entry.Value) ?? throw WrongType($"{name}[\"{entry.Name}\"]", expected, entry.Value);
        }

        return map;
    }

    /// <summary>"\"r\" must be an integer; it is \"16\" (a string)." (the caller adds the file).</summary>
    public static InvalidDataException WrongType(string name, string expected, JsonElement actual) =>
        new($"\"{name}\" must be {expected}; it is {Describe(actual)}.");

    /// <summary>A JSON value as written (cut at 60 characters) and its JSON type.</summary>
    public static string Describe(JsonElement value)
    {
        string raw = value.GetRawText();
        string kind = value.ValueKind switch
        {
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => "a list",
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            _ => "null",
        };
        return $"{(raw.Length > 60 ? raw[..60] + "…" : raw)} ({kind})";
    }

    public static TargetModules? Targets(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) ? TargetModules.Read(v, name) : null;
}
