// adapter_config.json for LoRA (docs/formats/peft-adapters.md#lora-config, PEFT v0.20 names and defaults). Written
// as PEFT writes it (json.dumps(indent=2, sort_keys=True)); read tolerantly: unknown fields
// are ignored and the smallest config {"peft_type": "LORA", "target_modules": [...]} loads.
// use_dora adds DoRA's magnitude vector (Linear targets only; PEFT refuses lora_bias with it).
using System.Text.Json;

namespace PeftKernels.Peft;

/// <summary>LoRA hyper-parameters and targeting, as in PEFT's LoraConfig.</summary>
public sealed record LoraConfig : PeftConfig
{
    /// <inheritdoc/>
    public override string PeftType => "LORA";

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

    /// <inheritdoc/>
    public override void Validate()
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

        if (UseDora && LoraBias)
        {
            throw new ArgumentException("LoraConfig.lora_bias is not supported together with use_dora (PEFT refuses it too).");
        }

        foreach (var (key, r) in RankPattern)
        {
            if (r <= 0)
            {
                throw new ArgumentException($"LoraConfig.rank_pattern[\"{key}\"] must be positive; got {r}.");
            }
        }
    }

    /// <summary>Reads a LoRA adapter_config.json.</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is not LORA, or a field has the wrong type.</exception>
    public static new LoraConfig Load(string path) => ConfigJson.Read(path, ["LORA"], (_, root) => FromJson(root));

    internal static LoraConfig FromJson(JsonElement root)
    {
        if (ConfigJson.Bool(root, "fan_in_fan_out") == true)
        {
            throw new NotSupportedException("fan_in_fan_out true (Conv1D weights stored [in, out]) is not supported; Linear weights are [out, in].");
        }

        return WithCommon(new LoraConfig
        {
            R = ConfigJson.Int(root, "r") ?? 8,
            LoraAlpha = ConfigJson.Num(root, "lora_alpha") ?? 8,
            LoraDropout = ConfigJson.Num(root, "lora_dropout") ?? 0,
            TargetModules = ConfigJson.Targets(root, "target_modules"),
            ExcludeModules = ConfigJson.Targets(root, "exclude_modules"),
            Bias = ConfigJson.Str(root, "bias") ?? "none",
            UseRsLora = ConfigJson.Bool(root, "use_rslora") ?? false,
            UseDora = ConfigJson.Bool(root, "use_dora") ?? false,
            InitLoraWeights = ConfigJson.Get(root, "init_lora_weights") is { } iw ? iw.ValueKind switch
            {
                JsonValueKind.True => "default",
                JsonValueKind.String => iw.GetString()!,
                _ => throw ConfigJson.WrongType("init_lora_weights", "true or a string", iw),
            } : "default",
            LayersToTransform = ConfigJson.IntOrInts(root, "layers_to_transform"),
            LayersPattern = ConfigJson.Get(root, "layers_pattern") is { } lp
                ? TargetModules.CheckRegex(lp.ValueKind == JsonValueKind.String ? lp.GetString()! : string.Join("|", ConfigJson.Strings(root, "layers_pattern")!), "layers_pattern")
                : null,
            RankPattern = CheckKeys(ConfigJson.Map<int>(root, "rank_pattern", "an integer", e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int r) ? r : null), "rank_pattern"),
            AlphaPattern = CheckKeys(ConfigJson.Map<double>(root, "alpha_pattern", "a number", e => e.ValueKind == JsonValueKind.Number ? e.GetDouble() : null), "alpha_pattern"),
            LoraBias = ConfigJson.Bool(root, "lora_bias") ?? false,
        }, root);
    }

    /// <summary>Checks that every key of a rank/alpha pattern is a valid regular expression (PEFT matches "(^|.*\\.)key$").</summary>
    private static Dictionary<string, T> CheckKeys<T>(Dictionary<string, T> pattern, string field)
    {
        foreach (string key in pattern.Keys)
        {
            TargetModules.CheckRegex($@"(^|.*\.){key}$", $"{field} key \"{key}\"");
        }

        return pattern;
    }

    private protected override void AddFields(SortedDictionary<string, Action<Utf8JsonWriter>> fields)
    {
        fields["alpha_pattern"] = json => { json.WriteStartObject(); foreach (var (k, v) in AlphaPattern) { json.WriteNumber(k, v); } json.WriteEndObject(); };
        fields["bias"] = json => json.WriteStringValue(Bias);
        fields["exclude_modules"] = json => ConfigJson.WriteTargets(json, ExcludeModules);
        fields["fan_in_fan_out"] = json => json.WriteBooleanValue(false);
        fields["init_lora_weights"] = json => { if (InitLoraWeights == "default") { json.WriteBooleanValue(true); } else { json.WriteStringValue(InitLoraWeights); } };
        fields["layers_pattern"] = json => ConfigJson.WriteString(json, LayersPattern);
        fields["layers_to_transform"] = json => { if (LayersToTransform == null) { json.WriteNullValue(); } else { json.WriteStartArray(); foreach (int l in LayersToTransform) { json.WriteNumberValue(l); } json.WriteEndArray(); } };
        fields["lora_alpha"] = json => ConfigJson.WriteNumber(json, LoraAlpha);
        fields["lora_bias"] = json => json.WriteBooleanValue(LoraBias);
        fields["lora_dropout"] = json => json.WriteRawValue(ConfigJson.PythonFloat(LoraDropout));
        fields["r"] = json => json.WriteNumberValue(R);
        fields["rank_pattern"] = json => { json.WriteStartObject(); foreach (var (k, v) in RankPattern) { json.WriteNumber(k, v); } json.WriteEndObject(); };
        fields["target_modules"] = json => EffectiveTargets.WriteTo(json);
        fields["use_dora"] = json => json.WriteBooleanValue(UseDora);
        fields["use_rslora"] = json => json.WriteBooleanValue(UseRsLora);
    }
}
