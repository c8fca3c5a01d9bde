// Wrapping a model's Linear layers with LoRA adapters, and the adapter folder in the exact
// PEFT layout (peft-format.md): adapter_config.json + adapter_model.safetensors at the folder
// root for "default", else in <folder>/<name>/; tensor keys "base_model.model." + module path
// + ".lora_A.weight" / ".lora_B.weight" (the adapter name is stripped on disk); metadata
// {"format": "pt"}; fp32 tensors. Loading is strict: missing and unexpected keys are listed
// together, a shape mismatch names the module and both shapes, and F16/BF16 tensors are cast.
using PeftKernels.IO;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>LoRA wrapping and PEFT adapter files.</summary>
public static class Lora
{
    /// <summary>Prefix of every adapter tensor key.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>Adapter weights file name.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>Adapter config file name.</summary>
    public const string ConfigFile = "adapter_config.json";

    /// <summary>
    /// Adds an adapter named <paramref name="adapterName"/> to every matching Linear of <paramref name="model"/>
    /// and freezes every base parameter. Returns the wrapped module names.
    /// </summary>
    /// <exception cref="ArgumentException">No module matches the targets.</exception>
    public static IReadOnlyList<string> Apply(Module model, LoraConfig config, string adapterName = "default", int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentException.ThrowIfNullOrEmpty(adapterName);
        config.Validate();
        if (config.UseDora || config.LoraBias || config.Bias != "none" || config.ModulesToSave is { Count: > 0 })
        {
            throw new NotSupportedException("use_dora, lora_bias, bias other than \"none\" and modules_to_save are not supported by this LoRA wrapper yet.");
        }

        var wrapped = new List<string>();
        var linears = model.NamedModules().Where(m => m.Module is Linear).ToList();
        foreach (var (name, module) in linears)
        {
            var linear = (Linear)module;
            if (!config.IsTarget(name, IsOutputLayer(name)))
            {
                continue;
            }

            var (r, alpha) = config.RankAndAlpha(name);
            ulong moduleSeed = ForwardContext.Mix((ulong)seed, Fnv1a(name));
            linear.AddAdapter(new LoraAdapter(adapterName, linear.InFeatures, linear.OutFeatures, r, alpha, (float)config.LoraDropout,
                config.UseRsLora, moduleSeed, config.InitLoraWeights == "gaussian"));
            linear.SetActiveAdapters(adapterName);
            wrapped.Add(name);
        }

        if (wrapped.Count == 0)
        {
            throw new ArgumentException($"no module matches target_modules {Describe(config.EffectiveTargets)}; Linear modules are e.g. {string.Join(", ", linears.Take(4).Select(l => l.Name))}.", nameof(config));
        }

        foreach (var (name, p) in model.NamedParameters())
        {
            p.Trainable = name.Contains($".lora_A.{adapterName}.", StringComparison.Ordinal) || name.Contains($".lora_B.{adapterName}.", StringComparison.Ordinal);
        }

        return wrapped;
    }

    /// <summary>Where an adapter of that name lives inside <paramref name="folder"/>.</summary>
    public static string AdapterFolder(string folder, string adapterName) =>
        adapterName == "default" ? folder : Path.Combine(folder, adapterName);

    /// <summary>Writes the adapter in PEFT layout (config last, so a complete config implies complete weights).</summary>
    public static void Save(Module model, string folder, LoraConfig config, string adapterName = "default")
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        var tensors = new List<SafeTensor>();
        foreach (var (name, linear) in Adapters(model, adapterName))
        {
            foreach (var (suffix, p) in new[] { ("lora_A.weight", linear.A), ("lora_B.weight", linear.B) })
            {
                if (p.Count == 0)
                {
                    throw new InvalidOperationException($"refusing to save the zero-element tensor {name}.{suffix} [{string.Join(", ", p.Shape)}].");
                }

                tensors.Add(SafeTensor.FromFloat32($"{KeyPrefix}{name}.{suffix}", p.Data, [.. p.Shape.Select(d => (long)d)]));
            }
        }

        if (tensors.Count == 0)
        {
            throw new InvalidOperationException($"the model has no adapter named '{adapterName}'.");
        }

        string target = AdapterFolder(folder, adapterName);
        Directory.CreateDirectory(target);
        SafeTensorsWriter.Write(Path.Combine(target, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(Path.Combine(target, ConfigFile));
    }

    /// <summary>
    /// Loads a PEFT LoRA adapter folder into <paramref name="model"/> as <paramref name="adapterName"/> and activates it.
    /// </summary>
    /// <exception cref="InvalidDataException">Missing or unexpected keys, shape or rank mismatches (all listed).</exception>
    public static LoraConfig Load(Module model, string folder, string adapterName = "default", bool trainable = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        string configPath = Path.Combine(folder, ConfigFile);
        string weightsPath = Path.Combine(folder, WeightsFile);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{folder} is not a PEFT adapter folder: it needs {ConfigFile} and {WeightsFile}.");
        }

        var config = LoraConfig.Load(configPath) with { LoraDropout = 0 };
        using var file = SafeTensorsFile.Open(weightsPath);
        var expected = new Dictionary<string, (Linear Linear, bool IsA, int[] Shape)>(StringComparer.Ordinal);
        foreach (var (name, module) in model.NamedModules())
        {
            if (module is Linear linear && config.IsTarget(name, IsOutputLayer(name)))
            {
                int r = config.RankAndAlpha(name).R;
                expected[$"{KeyPrefix}{name}.lora_A.weight"] = (linear, true, [r, linear.InFeatures]);
                expected[$"{KeyPrefix}{name}.lora_B.weight"] = (linear, false, [linear.OutFeatures, r]);
            }
        }

        var problems = new List<string>();
        problems.AddRange(expected.Keys.Where(k => !file.Contains(k)).Select(k => $"missing key '{k}'"));
        problems.AddRange(file.Names.Where(k => !expected.ContainsKey(k)).Select(k => $"unexpected key '{k}'"));
        foreach (var (key, (_, isA, shape)) in expected)
        {
            if (file.TryGetInfo(key, out var info) && !info.Shape.SequenceEqual(shape.Select(d => (long)d)))
            {
                string module = key[KeyPrefix.Length..key.LastIndexOf(".lora_", StringComparison.Ordinal)];
                bool rankOnly = isA ? info.Shape.Count == 2 && info.Shape[1] == shape[1] : info.Shape.Count == 2 && info.Shape[0] == shape[0];
                problems.Add($"module '{module}' {(isA ? "lora_A" : "lora_B")}: expected shape [{string.Join(", ", shape)}], found [{string.Join(", ", info.Shape)}]"
                    + (rankOnly ? $" (the config's r = {shape[isA ? 0 : 1]} disagrees with the tensor's rank {info.Shape[isA ? 0 : 1]})" : string.Empty));
            }
        }

        if (problems.Count > 0)
        {
            throw new InvalidDataException($"{weightsPath} does not fit the model with {configPath}: {string.Join("; ", problems)}.");
        }

        var wrapped = Apply(model, config, adapterName);
        foreach (var name in wrapped)
        {
            var linear = (Linear)model.NamedModules().First(m => m.Name == name).Module;
            var adapter = linear.Adapters.First(a => a.Name == adapterName);
            file.ReadFloat32($"{KeyPrefix}{name}.lora_A.weight").CopyTo(adapter.A.Data, 0);
            file.ReadFloat32($"{KeyPrefix}{name}.lora_B.weight").CopyTo(adapter.B.Data, 0);
            adapter.A.Trainable = trainable;
            adapter.B.Trainable = trainable;
        }

        return config;
    }

    /// <summary>The adapters of that name, by module path.</summary>
    public static IEnumerable<(string Module, LoraAdapter Adapter)> Adapters(Module model, string adapterName = "default")
    {
        ArgumentNullException.ThrowIfNull(model);
        foreach (var (name, module) in model.NamedModules())
        {
            if (module is Linear linear && linear.Adapters.FirstOrDefault(a => a.Name == adapterName) is { } adapter)
            {
                yield return (name, adapter);
            }
        }
    }

    private static bool IsOutputLayer(string name) => name == "lm_head" || name.EndsWith(".lm_head", StringComparison.Ordinal);

    private static string Describe(TargetModules t) => t.Regex ?? $"[{string.Join(", ", t.Names!)}]";

    private static ulong Fnv1a(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s)
        {
            h = (h ^ c) * 1099511628211UL;
        }

        return h;
    }
}
