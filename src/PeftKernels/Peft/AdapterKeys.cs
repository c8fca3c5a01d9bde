// Which modules a LoRA config touches and the on-disk key of every tensor it owns, in PEFT's
// layout (docs/formats/peft-adapters.md#tensor-keys; get_peft_model_state_dict of PEFT v0.20, adapter name removed):
//   Linear target     <P><m>.lora_A.weight [r, in], <P><m>.lora_B.weight [out, r],
//                     <P><m>.lora_B.bias [out] (lora_bias)
//   DoRA (use_dora)   <P><m>.lora_magnitude_vector [out] (PEFT drops the ".weight" of its
//                     in-memory lora_magnitude_vector.<name>.weight)
//   Embedding target  <P><m>.lora_embedding_A [r, vocab], <P><m>.lora_embedding_B [dim, r]
//   IA³ target        <P><m>.ia3_l: [out, 1] (output scaling), [1, in] (feedforward_modules)
//   bias "all"        every Linear bias: <P><m>.base_layer.bias when the Linear carries LoRA
//                     (PEFT wraps it, the bias moves under base_layer), else <P><m>.bias
//   bias "lora_only"  the biases of the LoRA-wrapped Linears (<P><m>.base_layer.bias); PEFT
//                     itself finds none of them when saving, so they are optional on load
//   modules_to_save   the module's full weight (and bias): <P><m>.weight, <P><m>.bias
// with P = "base_model.model.". A list of modules_to_save matches like target_modules (the
// full name, or a suffix after a dot).
using PeftKernels.Nn;

namespace PeftKernels.Peft;

internal sealed record LoraTarget(string Name, ILoraLayer Layer, int R, double Alpha);

internal sealed record Ia3Target(string Name, Linear Layer, bool Feedforward);

internal sealed record ExpectedKey(string[] Keys, int[] Shape, bool Required, string Module, string Role);

internal static class AdapterKeys
{
    public const string Prefix = "base_model.model.";

    public static string LoraA(string module, bool embedding) => embedding ? $"{Prefix}{module}.lora_embedding_A" : $"{Prefix}{module}.lora_A.weight";

    public static string LoraB(string module, bool embedding) => embedding ? $"{Prefix}{module}.lora_embedding_B" : $"{Prefix}{module}.lora_B.weight";

    public static string LoraBias(string module) => $"{Prefix}{module}.lora_B.bias";

    public static string Magnitude(string module) => $"{Prefix}{module}.lora_magnitude_vector";

    public static string Ia3(string module) => $"{Prefix}{module}.ia3_l";

    public static string WrappedBias(string module) => $"{Prefix}{module}.base_layer.bias";

    public static string PlainBias(string module) => $"{Prefix}{module}.bias";

    public static string SavedWeight(string module) => $"{Prefix}{module}.weight";

    public static bool IsOutputLayer(string name) => name == "lm_head" || name.EndsWith(".lm_head", StringComparison.Ordinal);

    /// <summary>The Linear and Embedding layers the config wraps, with their r and alpha (empty when none match).</summary>
    public static List<LoraTarget> Targets(Module model, LoraConfig config)
    {
        var targets = new List<LoraTarget>();
        foreach (var (name, module) in model.NamedModules())
        {
            bool take = module switch
            {
                Linear => config.IsTarget(name, IsOutputLayer(name)),
                Embedding => !config.EffectiveTargets.IsAllLinear && config.IsTarget(name, false),
                _ => false,
            };
            if (take)
            {
                var (r, alpha) = config.RankAndAlpha(name);
                targets.Add(new LoraTarget(name, (ILoraLayer)module, r, alpha));
            }
        }

        return targets;
    }

    /// <summary>The Linear layers an IA³ config scales, and whether each scales its input (feed-forward).</summary>
    public static List<Ia3Target> Targets(Module model, Ia3Config config) =>
        [.. model.NamedModules().Where(m => m.Module is Linear && config.IsTarget(m.Name, IsOutputLayer(m.Name)))
            .Select(m => new Ia3Target(m.Name, (Linear)m.Module, config.IsFeedforward(m.Name)))];

    /// <summary>The modules named by modules_to_save (Linear or Embedding), each entry matching at least one.</summary>
    /// <exception cref="ArgumentException">An entry matches nothing, or matches a module that is not a Linear or Embedding.</exception>
    public static List<(string Name, ILoraLayer Layer)> ModulesToSave(Module model, IReadOnlyList<string>? modulesToSave)
    {
        var result = new List<(string, ILoraLayer)>();
        if (modulesToSave is not { Count: > 0 } entries)
        {
            return result;
        }

        var modules = model.NamedModules().Where(m => m.Name.Length > 0).ToList();
        foreach (string entry in entries)
        {
            var matches = modules.Where(m => m.Name == entry || m.Name.EndsWith("." + entry, StringComparison.Ordinal)).ToList();
            if (matches.Count == 0)
            {
                throw new ArgumentException($"modules_to_save entry '{entry}' matches no module of the model.");
            }

            foreach (var (name, module) in matches)
            {
                if (module is not ILoraLayer layer)
                {
                    throw new ArgumentException($"modules_to_save entry '{entry}' matches '{name}', a {module.GetType().Name}; only Linear and Embedding modules can be saved.");
                }

                result.Add((name, layer));
            }
        }

        return result;
    }

    /// <summary>Every tensor key an adapter folder for this config and model must (or may) hold, with its shape.</summary>
    public static List<ExpectedKey> Expected(Module model, LoraConfig config, IReadOnlyList<LoraTarget> targets, IReadOnlyList<(string Name, ILoraLayer Layer)> saved)
    {
        var keys = new List<ExpectedKey>();
        foreach (var t in targets)
        {
            bool embedding = t.Layer is Embedding;
            keys.Add(new ExpectedKey([LoraA(t.Name, embedding)], [t.R, t.Layer.InFeatures], true, t.Name, embedding ? "lora_embedding_A" : "lora_A"));
            keys.Add(new ExpectedKey([LoraB(t.Name, embedding)], [t.Layer.OutFeatures, t.R], true, t.Name, embedding ? "lora_embedding_B" : "lora_B"));
            if (config.LoraBias && !embedding)
            {
                keys.Add(new ExpectedKey([LoraBias(t.Name)], [t.Layer.OutFeatures], true, t.Name, "lora_B.bias"));
            }

            if (config.UseDora)
            {
                keys.Add(new ExpectedKey([Magnitude(t.Name)], [t.Layer.OutFeatures], true, t.Name, "lora_magnitude_vector"));
            }
        }

        var wrapped = targets.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, linear) in BiasLinears(model, config, wrapped, saved.Select(s => s.Name).ToHashSet(StringComparer.Ordinal)))
        {
            string[] names = wrapped.Contains(name) || linear.Adapters.Count > 0 ? [WrappedBias(name), PlainBias(name)] : [PlainBias(name), WrappedBias(name)];
            keys.Add(new ExpectedKey(names, [linear.OutFeatures], config.Bias == "all", name, "bias"));
        }

        keys.AddRange(SavedKeys(saved));
        return keys;
    }

    /// <summary>Every tensor key of an IA³ adapter folder for these targets, with its shape.</summary>
    public static List<ExpectedKey> Expected(IReadOnlyList<Ia3Target> targets, IReadOnlyList<(string Name, ILoraLayer Layer)> saved) =>
    [
        .. targets.Select(t => new ExpectedKey([Ia3(t.Name)], t.Feedforward ? [1, t.Layer.InFeatures] : [t.Layer.OutFeatures, 1], true, t.Name,
            t.Feedforward ? "ia3_l (feed-forward, input scaling)" : "ia3_l (output scaling)")),
        .. SavedKeys(saved),
    ];

    private static IEnumerable<ExpectedKey> SavedKeys(IReadOnlyList<(string Name, ILoraLayer Layer)> saved)
    {
        foreach (var (name, layer) in saved)
        {
            yield return new ExpectedKey([SavedWeight(name)], [.. layer.Weight.Shape], true, name, "modules_to_save weight");
            if (layer is Linear { Bias: { } bias })
            {
                yield return new ExpectedKey([PlainBias(name)], [.. bias.Shape], true, name, "modules_to_save bias");
            }
        }
    }

    /// <summary>The Linears whose bias the config trains and saves (bias "all" or "lora_only"), modules_to_save excluded.</summary>
    public static IEnumerable<(string Name, Linear Linear)> BiasLinears(Module model, LoraConfig config, IReadOnlySet<string> wrapped, IReadOnlySet<string> saved)
    {
        if (config.Bias == "none")
        {
            yield break;
        }

        foreach (var (name, module) in model.NamedModules())
        {
            if (module is Linear { Bias: not null } linear && !saved.Contains(name) && (config.Bias == "all" || wrapped.Contains(name)))
            {
                yield return (name, linear);
            }
        }
    }
}
