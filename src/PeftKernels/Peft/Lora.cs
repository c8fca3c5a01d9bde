// One-call LoRA helpers over a bare model, for code that needs no PeftModel bookkeeping: wrap,
// save and load a single adapter in PEFT layout. Each is a thin front for PeftModel (which
// holds the file layout, strict loading and the module matching); names and constants of
// the adapter folder live here.
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>LoRA wrapping and PEFT adapter files without a <see cref="PeftModel"/> handle.</summary>
public static class Lora
{
    /// <summary>Prefix of every adapter tensor key.</summary>
    public const string KeyPrefix = AdapterKeys.Prefix;

    /// <summary>Adapter weights file name.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>Adapter config file name.</summary>
    public const string ConfigFile = "adapter_config.json";

    /// <summary>
    /// Adds an adapter named <paramref name="adapterName"/> to every matching layer of <paramref name="model"/>, activates it
    /// and freezes every base parameter. Returns the wrapped module names.
    /// </summary>
    /// <exception cref="ArgumentException">No module matches the targets.</exception>
    public static IReadOnlyList<string> Apply(Module model, LoraConfig config, string adapterName = "default", int seed = 0) =>
        new PeftModel(model).AddAdapter(adapterName, config, seed);

    /// <summary>Where an adapter of that name lives inside <paramref name="folder"/>.</summary>
    public static string AdapterFolder(string folder, string adapterName) =>
        adapterName == "default" ? folder : Path.Combine(folder, adapterName);

    /// <summary>Writes the adapter that sits on <paramref name="model"/> in PEFT layout (config last).</summary>
    /// <exception cref="NotSupportedException">The config has modules_to_save (save through the PeftModel that holds the copies).</exception>
    public static void Save(Module model, string folder, LoraConfig config, string adapterName = "default")
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        var peft = new PeftModel(model);
        peft.Adopt(adapterName, config);
        peft.SaveAdapter(folder, adapterName);
    }

    /// <summary>Loads a PEFT LoRA (or DoRA) adapter folder into <paramref name="model"/> as <paramref name="adapterName"/> and activates it.</summary>
    /// <exception cref="InvalidDataException">Not a LoRA adapter; missing or unexpected keys, shape or rank mismatches (all listed).</exception>
    public static LoraConfig Load(Module model, string folder, string adapterName = "default", bool trainable = false)
    {
        string configPath = Path.Combine(folder, ConfigFile);
        if (File.Exists(configPath))
        {
            LoraConfig.Load(configPath);
        }

        return (LoraConfig)new PeftModel(model).LoadAdapter(folder, adapterName, trainable);
    }

    /// <summary>The adapters of that name on Linear and Embedding layers, by module path.</summary>
    public static IEnumerable<(string Module, LoraAdapter Adapter)> Adapters(Module model, string adapterName = "default")
    {
        ArgumentNullException.ThrowIfNull(model);
        foreach (var (name, module) in model.NamedModules())
        {
            if (module is ILoraLayer layer && layer.Adapters.FirstOrDefault(a => a.Name == adapterName) is { } adapter)
            {
                yield return (name, adapter);
            }
        }
    }
}
