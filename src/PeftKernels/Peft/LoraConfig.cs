// adapter_config.json for LoRA (peft-format.md, PEFT v0.20 field names and defaults). Written
// as PEFT writes it (json.dumps(indent=2, sort_keys=True)); read tolerantly: unknown fields
// are ignored and the smallest config {"peft_type": "LORA", "target_modules": [...]} loads.
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Peft;

/// <summary>LoRA hyper-parameters and targeting, as in PEFT's LoraConfig.</summary>
public sealed record LoraConfig
{
    /// <summary>Rank r (default 8).</summary>
    public int R { get; init; } = 8;

    /// <summary>lora_alpha (default 8).</summary>
    public double LoraAlpha { get; init; } = 8;

    /// <summary>lora_dropout (default 0).</summary>
    public double LoraDropout { get; init; }

    /// <summary>target_modules; null means the architecture default (Llama: q_proj, v_proj).</summary>
    public TargetModules? TargetModules { get; init; }

    /// <summary>exclude_modules, or null.</summary>
    public TargetModules? ExcludeModules { get; init; }

    /// <summary>bias: "none", "all" or "lora_only".</summary>
    public string Bias { get; init; } = "none";

    /// <summary>use_rslora: scale alpha / sqrt(r).</summary>
    public bool UseRsLora { get; init; }

    /// <summary>use_dora.</summary>
    public bool UseDora { get; init; }

    /// <summary>init_lora_weights: "default" (true) or "gaussian".</summary>
    public string InitLoraWeights { get; init; } = "default";

    /// <summary>modules_to_save, or null.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>layers_to_transform, or null for all layers.</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>layers_pattern, or null.</summary>
    public string? LayersPattern { get; init; }

    /// <summary>rank_pattern: per-module r overrides.</summary>
    public IReadOnlyDictionary<string, int> RankPattern { get; init; } = new Dictionary<string, int>();

    /// <summary>alpha_pattern: per-module alpha overrides.</summary>
    public IReadOnlyDictionary<string, double> AlphaPattern { get; init; } = new Dictionary<string, double>();

    /// <summary>lora_bias: a trainable bias on lora_B.</summary>
    public bool LoraBias { get; init; }

    /// <summary>task_type, e.g. "CAUSAL_LM".</summary>
    public string? TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>revision.</summary>
    public string? Revision { get; init; }

    /// <summary>The architecture default targets of Llama-family models.</summary>
    public static TargetModules LlamaDefaultTargets { get; } = TargetModules.FromList("q_proj", "v_proj");

    /// <summary>The effective targets (the Llama default when none were given).</summary>
    public TargetModules EffectiveTargets => TargetModules ?? LlamaDefaultTargets;

    /// <summary>True when a Linear named <paramref name="fullName"/> gets an adapter.</summary>
    public bool IsTarget(string fullName, bool isOutputLayer)
    {
        if (!EffectiveTargets.Matches(fullName, isOutputLayer) || ExcludeModules?.Matches(fullName, isOutputLayer) == true)
        {
            return false;
        }

        if (LayersToTransform is { Count: > 0 })
        {
            int? layer = TargetModules.LayerIndex(fullName, LayersPattern);
            return layer.HasValue && LayersToTransform.Contains(layer.Value);
        }

        return true;
    }

    /// <summary>r and alpha for one module after rank_pattern / alpha_pattern.</summary>
    public (int R, double Alpha) RankAndAlpha(string fullName)
    {
        string? rk = TargetModules.PatternKey(RankPattern.Keys, fullName);
        string? ak = TargetModules.PatternKey(AlphaPattern.Keys, fullName);
        return (rk != null ? RankPattern[rk] : R, ak != null ? AlphaPattern[ak] : LoraAlpha);
    }

    /// <summary>Checks the values, naming the offending field.</summary>
    public void Validate()
    {
        if (R <= 0)
        {
            throw new ArgumentException($"LoraConfig.r must be positive; got {R}.");
        }

        if (!(LoraDropout >= 0 && LoraDropout < 1))
        {
            throw new ArgumentException($"LoraConfig.lora_dropout must be in [0, 1); got {LoraDropout}.");
        }

        if (Bias is not ("none" or "all" or "lora_only"))
        {
            throw new ArgumentException($"LoraConfig.bias must be \"none\", \"all\" or \"lora_only\"; got \"{Bias}\".");
        }

        if (InitLoraWeights is not ("default" or "gaussian"))
        {
            throw new NotSupportedException($"LoraConfig.init_lora_weights \"{InitLoraWeights}\" is not supported (true/\"default\" or \"gaussian\").");
        }

        foreach (var (key, r) in RankPattern)
        {
            if (r <= 0)
            {
                throw new ArgumentException($"LoraConfig.rank_pattern[\"{key}\"] must be positive; got {r}.");
            }
        }
    }

    /// <summary>Reads adapter_config.json.</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is not LORA, or a field has the wrong type.</exception>
    public static LoraConfig Load(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
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

            string? peftType = root.TryGetProperty("peft_type", out var pt) && pt.ValueKind == JsonValueKind.String ? pt.GetString() : null;
            if (peftType != "LORA")
            {
                throw new InvalidDataException($"{path}: peft_type is {(peftType == null ? "missing" : $"\"{peftType}\"")}; expected \"LORA\".");
            }

            try
            {
                var c = new LoraConfig
                {
                    R = Int(root, "r") ?? 8,
                    LoraAlpha = Num(root, "lora_alpha") ?? 8,
                    LoraDropout = Num(root, "lora_dropout") ?? 0,
                    TargetModules = root.TryGetProperty("target_modules", out var tm) ? TargetModules.Read(tm, "target_modules") : null,
                    ExcludeModules = root.TryGetProperty("exclude_modules", out var em) ? TargetModules.Read(em, "exclude_modules") : null,
                    Bias = Str(root, "bias") ?? "none",
                    UseRsLora = Bool(root, "use_rslora") ?? false,
                    UseDora = Bool(root, "use_dora") ?? false,
                    InitLoraWeights = root.TryGetProperty("init_lora_weights", out var iw) ? iw.ValueKind switch
                    {
                        JsonValueKind.True => "default",
                        JsonValueKind.String => iw.GetString()!,
                        _ => throw new InvalidDataException($"init_lora_weights must be true or a string; found {iw.ValueKind}."),
                    } : "default",
                    ModulesToSave = root.TryGetProperty("modules_to_save", out var ms) && ms.ValueKind == JsonValueKind.Array
                        ? [.. ms.EnumerateArray().Select(e => e.GetString()!)] : null,
                    LayersToTransform = root.TryGetProperty("layers_to_transform", out var lt) ? lt.ValueKind switch
                    {
                        JsonValueKind.Number => [lt.GetInt32()],
                        JsonValueKind.Array => [.. lt.EnumerateArray().Select(e => e.GetInt32())],
                        _ => null,
                    } : null,
                    LayersPattern = root.TryGetProperty("layers_pattern", out var lp) ? lp.ValueKind switch
                    {
                        JsonValueKind.String => lp.GetString(),
                        JsonValueKind.Array => string.Join("|", lp.EnumerateArray().Select(e => e.GetString())),
                        _ => null,
                    } : null,
                    RankPattern = root.TryGetProperty("rank_pattern", out var rp) && rp.ValueKind == JsonValueKind.Object
                        ? rp.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32()) : new Dictionary<string, int>(),
                    AlphaPattern = root.TryGetProperty("alpha_pattern", out var ap) && ap.ValueKind == JsonValueKind.Object
                        ? ap.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble()) : new Dictionary<string, double>(),
                    LoraBias = Bool(root, "lora_bias") ?? false,
                    TaskType = Str(root, "task_type"),
                    BaseModelNameOrPath = Str(root, "base_model_name_or_path"),
                    Revision = Str(root, "revision"),
                };
                c.Validate();
                return c;
            }
            catch (Exception ex) when (ex is InvalidOperationException or FormatException or ArgumentException or NotSupportedException or InvalidDataException)
            {
                throw new InvalidDataException($"{path}: {ex.Message}", ex);
            }
        }
    }

    /// <summary>Writes adapter_config.json atomically, as PEFT writes it (sorted keys, two-space indent).</summary>
    public void Save(string path)
    {
        Validate();
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
            var fields = new SortedDictionary<string, Action>(StringComparer.Ordinal)
            {
                ["alpha_pattern"] = () => { json.WriteStartObject(); foreach (var (k, v) in AlphaPattern) { json.WriteNumber(k, v); } json.WriteEndObject(); },
                ["auto_mapping"] = json.WriteNullValue,
                ["base_model_name_or_path"] = () => WriteString(json, BaseModelNameOrPath),
                ["bias"] = () => json.WriteStringValue(Bias),
                ["exclude_modules"] = () => { if (ExcludeModules == null) { json.WriteNullValue(); } else { ExcludeModules.WriteTo(json); } },
                ["fan_in_fan_out"] = () => json.WriteBooleanValue(false),
                ["inference_mode"] = () => json.WriteBooleanValue(true),
                ["init_lora_weights"] = () => { if (InitLoraWeights == "default") { json.WriteBooleanValue(true); } else { json.WriteStringValue(InitLoraWeights); } },
                ["layers_pattern"] = () => WriteString(json, LayersPattern),
                ["layers_to_transform"] = () => { if (LayersToTransform == null) { json.WriteNullValue(); } else { json.WriteStartArray(); foreach (int l in LayersToTransform) { json.WriteNumberValue(l); } json.WriteEndArray(); } },
                ["lora_alpha"] = () => WriteNumber(json, LoraAlpha),
                ["lora_bias"] = () => json.WriteBooleanValue(LoraBias),
                ["lora_dropout"] = () => json.WriteRawValue(PythonFloat(LoraDropout)),
                ["modules_to_save"] = () => { if (ModulesToSave == null) { json.WriteNullValue(); } else { json.WriteStartArray(); foreach (string m in ModulesToSave) { json.WriteStringValue(m); } json.WriteEndArray(); } },
                ["peft_type"] = () => json.WriteStringValue("LORA"),
                ["peft_version"] = () => json.WriteStringValue("0.20.0"),
                ["r"] = () => json.WriteNumberValue(R),
                ["rank_pattern"] = () => { json.WriteStartObject(); foreach (var (k, v) in RankPattern) { json.WriteNumber(k, v); } json.WriteEndObject(); },
                ["revision"] = () => WriteString(json, Revision),
                ["target_modules"] = () => EffectiveTargets.WriteTo(json),
                ["task_type"] = () => WriteString(json, TaskType),
                ["use_dora"] = () => json.WriteBooleanValue(UseDora),
                ["use_rslora"] = () => json.WriteBooleanValue(UseRsLora),
            };
            foreach (var (name, write) in fields)
            {
                json.WritePropertyName(name);
                write();
            }

            json.WriteEndObject();
        });
    }

    private static void WriteString(Utf8JsonWriter json, string? value)
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

    private static void WriteNumber(Utf8JsonWriter json, double value)
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
    private static string PythonFloat(double value)
    {
        string text = value.ToString("R", CultureInfo.InvariantCulture);
        return text.Contains('.', StringComparison.Ordinal) || text.Contains('E', StringComparison.Ordinal) ? text : text + ".0";
    }

    private static JsonElement? Get(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static int? Int(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.TryGetInt32(out int i) ? i : throw new InvalidDataException($"{name} must be an integer; found {v}.")) : null;

    private static double? Num(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw new InvalidDataException($"{name} must be a number; found {v}.")) : null;

    private static bool? Bool(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new InvalidDataException($"{name} must be true or false; found {v}.")) : null;

    private static string? Str(JsonElement root, string name) => Get(root, name) is { } v
        ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidDataException($"{name} must be a string; found {v}.")) : null;
}
