// adapter_config.json for IA³ (docs/formats/peft-adapters.md#ia3-config, PEFT v0.20's IA3Config): target_modules,
// feedforward_modules (the targets whose INPUT is scaled; the others scale their output),
// exclude_modules, fan_in_fan_out, init_ia3_weights, modules_to_save. Null targets mean the
// architecture default; for Llama: targets [k_proj, v_proj, down_proj], feedforward
// [down_proj]. As in PEFT, a list of feedforward modules must be a subset of a list of
// targets; a module is feed-forward when it matches feedforward_modules the way targets match
// (list entry = full name or a "." suffix; a string is a regex over the full name).
using System.Text.Json;

namespace PeftKernels.Peft;

/// <summary>IA³ targeting, as in PEFT's IA3Config.</summary>
public sealed record Ia3Config : PeftConfig
{
    /// <inheritdoc/>
    public override string PeftType => "IA3";

    /// <summary>target_modules; null means the architecture default (Llama: k_proj, v_proj, down_proj).</summary>
    public TargetModules? TargetModules { get; init; }

    /// <summary>feedforward_modules (input scaling); null means the architecture default (Llama: down_proj).</summary>
    public TargetModules? FeedforwardModules { get; init; }

    /// <summary>exclude_modules, or null.</summary>
    public TargetModules? ExcludeModules { get; init; }

    /// <summary>fan_in_fan_out: true only for Conv1D weights stored [in, out] (GPT-2), which this library does not have; must be false.</summary>
    public bool FanInFanOut { get; init; }

    /// <summary>init_ia3_weights: true initialises every vector to ones (the model starts as the base); false draws N(0, 1), seeded.</summary>
    public bool InitIa3Weights { get; init; } = true;

    /// <summary>The architecture default targets of Llama-family models.</summary>
    public static TargetModules LlamaDefaultTargets { get; } = TargetModules.FromList("k_proj", "v_proj", "down_proj");

    /// <summary>The architecture default feed-forward modules of Llama-family models.</summary>
    public static TargetModules LlamaDefaultFeedforward { get; } = TargetModules.FromList("down_proj");

    /// <summary>The effective targets (the Llama default when none were given).</summary>
    public TargetModules EffectiveTargets => TargetModules ?? LlamaDefaultTargets;

    /// <summary>The effective feed-forward modules (the Llama default when none were given).</summary>
    public TargetModules EffectiveFeedforward => FeedforwardModules ?? LlamaDefaultFeedforward;

    /// <summary>True when a Linear named <paramref name="fullName"/> gets an IA³ vector.</summary>
    public bool IsTarget(string fullName, bool isOutputLayer) =>
        EffectiveTargets.Matches(fullName, isOutputLayer) && ExcludeModules?.Matches(fullName, isOutputLayer) != true;

    /// <summary>True when the target <paramref name="fullName"/> scales its input (feed-forward) rather than its output.</summary>
    public bool IsFeedforward(string fullName) => EffectiveFeedforward.Matches(fullName);

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">feedforward_modules is not a subset of target_modules.</exception>
    /// <exception cref="NotSupportedException">fan_in_fan_out is true.</exception>
    public override void Validate()
    {
        if (FanInFanOut)
        {
            throw new NotSupportedException("Ia3Config.fan_in_fan_out true (Conv1D weights stored [in, out]) is not supported; Linear weights are [out, in].");
        }

        if (EffectiveFeedforward.Names is { } feedforward && EffectiveTargets.Names is { } targets)
        {
            var extra = feedforward.Where(f => !targets.Contains(f)).ToList();
            if (extra.Count > 0)
            {
                throw new ArgumentException($"Ia3Config.feedforward_modules must be a subset of target_modules [{string.Join(", ", targets)}]; "
                    + $"[{string.Join(", ", extra)}] {(extra.Count == 1 ? "is" : "are")} not a target.");
            }
        }
    }

    /// <summary>Reads an IA³ adapter_config.json.</summary>
    /// <exception cref="InvalidDataException">The JSON is invalid, peft_type is not IA3, or a field is bad (feedforward_modules not a subset of target_modules, say).</exception>
    public static new Ia3Config Load(string path) => ConfigJson.Read(path, ["IA3"], (_, root) => FromJson(root));

    internal static Ia3Config FromJson(JsonElement root) => WithCommon(new Ia3Config
    {
        TargetModules = ConfigJson.Targets(root, "target_modules"),
        FeedforwardModules = ConfigJson.Targets(root, "feedforward_modules"),
        ExcludeModules = ConfigJson.Targets(root, "exclude_modules"),
        FanInFanOut = ConfigJson.Bool(root, "fan_in_fan_out") ?? false,
        InitIa3Weights = ConfigJson.Bool(root, "init_ia3_weights") ?? true,
    }, root);

    private protected override void AddFields(SortedDictionary<string, Action<Utf8JsonWriter>> fields)
    {
        fields["exclude_modules"] = json => ConfigJson.WriteTargets(json, ExcludeModules);
        fields["fan_in_fan_out"] = json => json.WriteBooleanValue(FanInFanOut);
        fields["feedforward_modules"] = json => EffectiveFeedforward.WriteTo(json);
        fields["init_ia3_weights"] = json => json.WriteBooleanValue(InitIa3Weights);
        fields["target_modules"] = json => EffectiveTargets.WriteTo(json);
    }
}
