// adapter_config.json of a MixLoRA adapter (docs/formats/mixlora.md#config): the LoRA fields
// (r, lora_alpha, lora_dropout, target_modules, use_rslora), peft_type "MIXLORA", routing_strategy
// "mixlora", num_experts, top_k, and the training fields the reference reads with defaults
// (router_aux_loss_coef 0.001, router_init_range 0.02, jitter_noise 0.0). Written with sorted keys,
// two-space indent, floats always with a decimal point (the reference asserts they are floats).
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Peft;

/// <summary>The configuration of a MixLoRA adapter (router over per-expert LoRA on the MLP, plain LoRA on attention).</summary>
public sealed record MixLoraConfig
{
    /// <summary>The file name of the config in an adapter folder.</summary>
    public const string ConfigFile = "adapter_config.json";

    /// <summary>The modules that may be targeted: attention projections get plain LoRA, MLP projections get per-expert LoRA.</summary>
    public static readonly IReadOnlyList<string> KnownModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>num_experts E (≥ 1).</summary>
    public int NumExperts { get; init; } = 8;

    /// <summary>top_k: experts per token (1 ≤ k ≤ E).</summary>
    public int TopK { get; init; } = 2;

    /// <summary>r: the rank of every LoRA (attention and experts).</summary>
    public int R { get; init; } = 8;

    /// <summary>lora_alpha (scale alpha / r, or alpha / √r with rsLoRA).</summary>
    public double LoraAlpha { get; init; } = 16;

    /// <summary>lora_dropout on every LoRA input, in [0, 1).</summary>
    public double LoraDropout { get; init; } = 0.05;

    /// <summary>use_rslora.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>router_aux_loss_coef: the load-balancing loss weight (the reference's default 0.001).</summary>
    public double RouterAuxLossCoef { get; init; } = 0.001;

    /// <summary>router_init_range: the router starts as N(0, range²).</summary>
    public double RouterInitRange { get; init; } = 0.02;

    /// <summary>jitter_noise: in training, the MLP input is multiplied by U(1 − j, 1 + j) per element (0: off).</summary>
    public double JitterNoise { get; init; }

    /// <summary>target_modules, a subset of <see cref="KnownModules"/>.</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = KnownModules;

    /// <summary>base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>task_type.</summary>
    public string? TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>The LoRA scale s: alpha / r, or alpha / √r with rsLoRA.</summary>
    public float Scale => (float)(UseRsLora ? LoraAlpha / Math.Sqrt(R) : LoraAlpha / R);

    /// <summary>Whether <paramref name="module"/> (e.g. "gate_proj") is targeted.</summary>
    public bool Targets(string module) => TargetModules.Contains(module, StringComparer.Ordinal);

    /// <summary>Checks every field, naming the bad one.</summary>
    /// <exception cref="ArgumentException">A field is out of range.</exception>
    public void Validate()
    {
        Require(NumExperts >= 1, $"num_experts must be ≥ 1; got {NumExperts}.");
        Require(TopK >= 1 && TopK <= NumExperts, $"top_k must be in [1, num_experts = {NumExperts}]; got {TopK}.");
        Require(R >= 1, $"r must be ≥ 1; got {R}.");
        Require(double.IsFinite(LoraAlpha) && LoraAlpha > 0, $"lora_alpha must be > 0; got {LoraAlpha.ToString(CultureInfo.InvariantCulture)}.");
        Require(LoraDropout >= 0 && LoraDropout < 1, $"lora_dropout must be in [0, 1); got {LoraDropout.ToString(CultureInfo.InvariantCulture)}.");
        Require(RouterAuxLossCoef >= 0 && double.IsFinite(RouterAuxLossCoef), $"router_aux_loss_coef must be ≥ 0; got {RouterAuxLossCoef.ToString(CultureInfo.InvariantCulture)}.");
        Require(RouterInitRange >= 0 && double.IsFinite(RouterInitRange), $"router_init_range must be ≥ 0; got {RouterInitRange.ToString(CultureInfo.InvariantCulture)}.");
        Require(JitterNoise >= 0 && JitterNoise < 1, $"jitter_noise must be in [0, 1); got {JitterNoise.ToString(CultureInfo.InvariantCulture)}.");
        Require(TargetModules is { Count: > 0 }, "target_modules must name at least one module.");
        var unknown = TargetModules.Where(m => !KnownModules.Contains(m, StringComparer.Ordinal)).ToList();
        Require(unknown.Count == 0, $"target_modules has {string.Join(", ", unknown.Select(m => $"'{m}'"))}; MixLoRA on Llama knows {string.Join(", ", KnownModules)}.");
        Require(TargetModules.Any(m => m is "gate_proj" or "up_proj" or "down_proj"), "target_modules must name at least one of gate_proj, up_proj, down_proj (the experts' LoRA).");
        Require(TargetModules.Distinct(StringComparer.Ordinal).Count() == TargetModules.Count, "target_modules names a module twice.");
    }

    /// <summary>Writes adapter_config.json atomically (sorted keys, two-space indent, "\n" line ends).</summary>
    public void Save(string path)
    {
        Validate();
        AtomicFile.Write(path, stream =>
        {
            using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, IndentSize = 2, NewLine = "\n" });
            json.WriteStartObject();
            json.WritePropertyName("base_model_name_or_path");
            WriteOptional(json, BaseModelNameOrPath);
            json.WriteString("bias", "none");
            json.WritePropertyName("jitter_noise");
            WriteFloat(json, JitterNoise);
            json.WritePropertyName("lora_alpha");
            ConfigJson.WriteNumber(json, LoraAlpha);
            json.WritePropertyName("lora_dropout");
            WriteFloat(json, LoraDropout);
            json.WriteNumber("num_experts", NumExperts);
            json.WriteString("peft_type", "MIXLORA");
            json.WriteNumber("r", R);
            json.WritePropertyName("router_aux_loss_coef");
            WriteFloat(json, RouterAuxLossCoef);
            json.WritePropertyName("router_init_range");
            WriteFloat(json, RouterInitRange);
            json.WriteString("routing_strategy", "mixlora");
            json.WriteStartArray("target_modules");
            foreach (var m in KnownModules.Where(Targets))
            {
                json.WriteStringValue(m);
            }

            json.WriteEndArray();
            json.WritePropertyName("task_type");
            WriteOptional(json, TaskType);
            json.WriteNumber("top_k", TopK);
            json.WriteBoolean("use_rslora", UseRsLora);
            json.WriteEndObject();
        });
    }

    /// <summary>True when <paramref name="folder"/>'s adapter_config.json says peft_type "MIXLORA".</summary>
    public static bool IsMixLoraFolder(string folder)
    {
        string path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path))
        {
            return false;
        }

        try
        {
            using var doc = JsonDocument.Parse(InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes));
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("peft_type", out var t)
                && t.ValueKind == JsonValueKind.String && t.GetString() == "MIXLORA";
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>Reads adapter_config.json strictly.</summary>
    /// <exception cref="InvalidDataException">Invalid JSON, a missing or bad field, or a feature this library does not run (named).</exception>
    public static MixLoraConfig Load(string path)
    {
        var bytes = InputLimits.ReadAllBytes(path, InputLimits.MaxConfigJsonBytes);
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException("the adapter config must be a JSON object.");
            }

            string? peftType = OptString(root, "peft_type");
            Require(peftType == "MIXLORA", $"peft_type is {(peftType == null ? "missing" : $"\"{peftType}\"")}; expected \"MIXLORA\".");
            string? strategy = OptString(root, "routing_strategy");
            Require(strategy == "mixlora", strategy == "mixtral"
                ? "routing_strategy \"mixtral\" is MixLoRA's legacy layout (router key 'gate.weight'); convert it with MixLoRA's legacy weights converter first."
                : $"routing_strategy is {(strategy == null ? "missing" : $"\"{strategy}\"")}; only \"mixlora\" (top-k) is supported.");
            Require(!(OptBool(root, "use_dora") ?? false), "use_dora: DoRA experts are not supported by this library's MixLoRA.");
            Require(!root.TryGetProperty("expert_lora", out _), "expert_lora (experts with their own rank) is not supported: experts use r and lora_alpha.");
            string? act = OptString(root, "act_fn");
            Require(act is null or "silu", $"act_fn \"{act}\" is not supported: Llama's MLP (and so every expert) uses silu.");
            var config = new MixLoraConfig
            {
                NumExperts = Int(root, "num_experts"),
                TopK = OptInt(root, "top_k") ?? 2,
                R = Int(root, "r"),
                LoraAlpha = Number(root, "lora_alpha"),
                LoraDropout = Number(root, "lora_dropout"),
                UseRsLora = OptBool(root, "use_rslora") ?? false,
                RouterAuxLossCoef = OptNumber(root, "router_aux_loss_coef") ?? 0.001,
                RouterInitRange = OptNumber(root, "router_init_range") ?? 0.02,
                JitterNoise = OptNumber(root, "jitter_noise") ?? 0.0,
                TargetModules = Targets(root),
                BaseModelNameOrPath = OptString(root, "base_model_name_or_path"),
                TaskType = OptString(root, "task_type"),
            };
            config.Validate();
            return config;
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException or InvalidDataException)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    private static IReadOnlyList<string> Targets(JsonElement root)
    {
        Require(root.TryGetProperty("target_modules", out var t), "target_modules is missing.");
        if (t.ValueKind == JsonValueKind.Array)
        {
            return [.. t.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new InvalidDataException("target_modules must hold strings."))];
        }

        // The reference also accepts {"q_proj": true, ...}.
        Require(t.ValueKind == JsonValueKind.Object, "target_modules must be a list of module names or an object of booleans.");
        return [.. t.EnumerateObject().Where(p => p.Value.ValueKind == JsonValueKind.True).Select(p => p.Name)];
    }

    private static void Require(bool ok, string message)
    {
        if (!ok)
        {
            throw new ArgumentException(message);
        }
    }

    private static string? OptString(JsonElement root, string name) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidDataException($"\"{name}\" must be a string; it is {v.ValueKind}.");

    private static bool? OptBool(JsonElement root, string name) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new InvalidDataException($"\"{name}\" must be true or false; it is {v.ValueKind}.");

    private static double? OptNumber(JsonElement root, string name) =>
        !root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? null
        : v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw new InvalidDataException($"\"{name}\" must be a number; it is {v.ValueKind}.");

    private static double Number(JsonElement root, string name) => OptNumber(root, name) ?? throw new InvalidDataException($"\"{name}\" is missing.");

    private static int? OptInt(JsonElement root, string name) =>
        OptNumber(root, name) is not { } d ? null
        : d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue ? (int)d : throw new InvalidDataException($"\"{name}\" must be an integer; it is {d.ToString(CultureInfo.InvariantCulture)}.");

    private static int Int(JsonElement root, string name) => OptInt(root, name) ?? throw new InvalidDataException($"\"{name}\" is missing.");

    private static void WriteOptional(Utf8JsonWriter json, string? value)
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

    private static void WriteFloat(Utf8JsonWriter json, double value)
    {
        string text = value.ToString("R", CultureInfo.InvariantCulture);
        json.WriteRawValue(text.Contains('.', StringComparison.Ordinal) || text.Contains('E', StringComparison.Ordinal) ? text : text + ".0");
    }
}
