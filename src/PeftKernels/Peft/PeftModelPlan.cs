// Planning an adapter before anything changes: the name is free, the config valid, which
// layers it wraps (LoRA: Linear and Embedding; DoRA and IA³: Linear only) and which modules it
// saves whole (modules_to_save, never a target as well). Every check throws before Inject
// touches the model, so adding or loading an adapter is all or nothing.
using PeftKernels.Nn;

namespace PeftKernels.Peft;

public sealed partial class PeftModel
{
    private (List<LoraTarget> Targets, List<(string Name, ILoraLayer Layer)> Saved) Plan(string name, LoraConfig config)
    {
        CheckNewName(name);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var targets = AdapterKeys.Targets(Model, config);
        if (targets.Count == 0)
        {
            throw NoTargets(config.EffectiveTargets);
        }

        var toSave = ModulesToSave(config, targets.Select(t => t.Name));
        if (config.LoraBias && targets.Any(t => t.Layer is Embedding))
        {
            throw new ArgumentException("lora_bias is not defined for embedding layers (PEFT's embedding LoRA has no lora_B bias).", nameof(config));
        }

        if (config.UseDora && targets.FirstOrDefault(t => t.Layer is Embedding) is { } embedding)
        {
            throw new ArgumentException($"use_dora is supported on Linear layers only; '{embedding.Name}' is an Embedding.", nameof(config));
        }

        return (targets, toSave);
    }

    private (List<Ia3Target> Targets, List<(string Name, ILoraLayer Layer)> Saved) Plan(string name, Ia3Config config)
    {
        CheckNewName(name);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var targets = AdapterKeys.Targets(Model, config);
        if (targets.Count == 0)
        {
            throw NoTargets(config.EffectiveTargets);
        }

        return (targets, ModulesToSave(config, targets.Select(t => t.Name)));
    }

    private void CheckNewName(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name == ForwardContext.BaseAdapterName || name.Contains('.', StringComparison.Ordinal))
        {
            throw new ArgumentException($"'{name}' cannot name an adapter (reserved, or contains a dot).", nameof(name));
        }

        if (configs.Any(c => c.Name == name) || Layers().Any(l => l.Layer.AllAdapters.Any(a => a.Name == name)))
        {
            throw new ArgumentException($"the model already has an adapter named '{name}'.", nameof(name));
        }
    }

    private ArgumentException NoTargets(TargetModules targets)
    {
        var linears = Model.NamedModules().Where(m => m.Module is Linear).Take(4).Select(m => m.Name);
        return new ArgumentException($"no module matches target_modules {Describe(targets)}; Linear modules are e.g. {string.Join(", ", linears)}.", "config");
    }

    private List<(string Name, ILoraLayer Layer)> ModulesToSave(PeftConfig config, IEnumerable<string> targets)
    {
        var toSave = AdapterKeys.ModulesToSave(Model, config.ModulesToSave);
        var wrapped = targets.ToHashSet(StringComparer.Ordinal);
        if (toSave.FirstOrDefault(s => wrapped.Contains(s.Name)) is { Name: not null } both)
        {
            throw new ArgumentException($"'{both.Name}' is both a {config.PeftType} target and in modules_to_save; choose one.", "config");
        }

        return toSave;
    }
}
