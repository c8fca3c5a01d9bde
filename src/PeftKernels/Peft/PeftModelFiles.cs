// The PEFT adapter folder (docs/formats/peft-adapters.md#adapter-folder) of LoRA, DoRA and IA³ adapters: adapter_config.json +
// adapter_model.safetensors (metadata {"format": "pt"}, fp32, keys sorted as the safetensors
// library orders one-dtype files) at the folder root for "default", else in <folder>/<name>/.
// Saving refuses zero-element tensors before writing anything; each file is written atomically,
// weights first, so a complete config implies complete weights. Loading is strict and changes
// nothing until every check passed: missing and unexpected keys, shape mismatches (naming
// the key, the module, both shapes and a disagreeing rank) and non-float dtypes are reported in one
// error (the first few and a count of the rest); F16/BF16 tensors are cast to fp32 exactly. Tensors
// holding NaN or ±Inf load as they are (as in PyTorch) and are listed by NonFiniteTensors.
using PeftKernels.IO;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

public sealed partial class PeftModel
{
    private readonly Dictionary<string, IReadOnlyList<NonFiniteTensor>> loadedNonFinite = new(StringComparer.Ordinal);

    /// <summary>
    /// Loads a PEFT adapter folder (peft_type LORA, with or without DoRA, or IA3) as <paramref name="name"/> (trainable or frozen);
    /// the first adapter becomes active. Returns its config (<see cref="LoraConfig"/> or <see cref="Ia3Config"/>). Tensors with
    /// NaN or infinite values load as they are and are listed by <see cref="NonFiniteTensors"/>.
    /// </summary>
    /// <exception cref="FileNotFoundException">The folder lacks adapter_config.json or adapter_model.safetensors.</exception>
    /// <exception cref="InvalidDataException">Bad config or safetensors file, or tensors that do not fit the model (the first few problems and a count).</exception>
    public PeftConfig LoadAdapter(string folder, string name = "default", bool trainable = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string configPath = Path.Combine(folder, Lora.ConfigFile), weightsPath = Path.Combine(folder, Lora.WeightsFile);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{folder} is not a PEFT adapter folder: it needs {Lora.ConfigFile} and {Lora.WeightsFile}.", configPath);
        }

        if (ModelAdapterFolders.Recognizes(folder))
        {
            throw new InvalidDataException($"{folder} holds a whole-model adapter (prompt learning, bottleneck, X-LoRA or MixLoRA), not LoRA / DoRA / IA³: load it with ModelAdapterFolders.Load(model, folder).");
        }

        var config = PeftConfig.Load(configPath);
        List<ExpectedKey> expected;
        Action<IReadOnlyDictionary<string, float[]>> inject;
        try
        {
            if (config is Ia3Config ia3)
            {
                var (targets, toSave) = Plan(name, ia3);
                expected = AdapterKeys.Expected(targets, toSave);
                inject = values => Inject(name, ia3, targets, toSave, 0, values, trainable);
            }
            else
            {
                var lora = (LoraConfig)config;
                var (targets, toSave) = Plan(name, lora);
                expected = AdapterKeys.Expected(Model, lora, targets, toSave);
                inject = values => Inject(name, lora, targets, toSave, 0, values, trainable);
            }
        }
        catch (ArgumentException e) when (e.ParamName == nameof(config) || e.ParamName == null)
        {
            throw new InvalidDataException($"{configPath}: {e.Message}", e);
        }

        using var file = SafeTensorsFile.Open(weightsPath);
        var known = expected.SelectMany(e => e.Keys).ToHashSet(StringComparer.Ordinal);
        var problems = new List<string>();
        var missing = new List<string>();
        var present = new List<string>();
        foreach (var e in expected)
        {
            string? key = e.Keys.FirstOrDefault(file.Contains);
            if (key == null)
            {
                if (e.Required)
                {
                    missing.Add($"missing key '{e.Keys[0]}' (module '{e.Module}' {e.Role}, shape [{string.Join(", ", e.Shape)}])");
                }

                continue;
            }

            var info = file.GetInfo(key);
            if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            {
                problems.Add($"'{key}' is {info.DType.HeaderName()}; adapter tensors must be F32, F16 or BF16");
            }
            else if (!info.Shape.SequenceEqual(e.Shape.Select(d => (long)d)))
            {
                problems.Add($"'{key}': {ShapeProblem(e, info.Shape)}");
            }
            else
            {
                present.Add(key);
            }
        }

        var unexpected = file.Names.Where(k => !known.Contains(k)).Select(k => $"unexpected key '{k}' [{string.Join(", ", file.GetInfo(k).Shape)}]").ToList();
        if (problems.Count + missing.Count + unexpected.Count > 0)
        {
            throw new InvalidDataException($"{weightsPath} does not fit the model with {configPath}: {ProblemList.CountGroups("problem", problems, missing, unexpected)}.");
        }

        var values = present.ToDictionary(k => k, file.ReadFloat32, StringComparer.Ordinal);
        var nonFinite = present.SelectMany(k => NonFiniteTensor.Scan(weightsPath, k, values[k])).ToList();
        inject(values);
        loadedNonFinite[name] = nonFinite;
        return config;
    }

    /// <summary>
    /// The tensors of adapter <paramref name="name"/> that held NaN or infinite values when <see cref="LoadAdapter"/> read them
    /// (they load as they are, as in PyTorch); empty for a clean, a created or an unknown adapter.
    /// </summary>
    public IReadOnlyList<NonFiniteTensor> NonFiniteTensors(string name = "default") =>
        loadedNonFinite.TryGetValue(name, out var list) ? list : [];

    /// <summary>Writes one adapter in PEFT layout: at the folder root for "default", else in <c>folder/name/</c>.</summary>
    /// <exception cref="InvalidOperationException">A tensor has zero elements (nothing is written).</exception>
    public void SaveAdapter(string folder, string name = "default")
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        RequireAdapter(name);
        var config = configs.First(c => c.Name == name).Config;
        config.Validate();
        var tensors = AdapterTensors(name);
        var empty = tensors.Where(t => t.Parameter.Count == 0).Select(t => $"{t.Key} [{string.Join(", ", t.Parameter.Shape)}]").ToList();
        if (empty.Count > 0)
        {
            throw new InvalidOperationException($"refusing to save zero-element tensors of adapter '{name}': {string.Join(", ", empty)}.");
        }

        string target = Lora.AdapterFolder(folder, name);
        Directory.CreateDirectory(target);
        SafeTensorsWriter.Write(Path.Combine(target, Lora.WeightsFile),
            tensors.Select(t => SafeTensor.FromFloat32(t.Key, t.Parameter.Data, [.. t.Parameter.Shape.Select(d => (long)d)])),
            new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(Path.Combine(target, Lora.ConfigFile));
    }

    /// <summary>The adapter's tensors by their on-disk key, sorted by key.</summary>
    internal List<(string Key, Parameter Parameter)> AdapterTensors(string name)
    {
        var config = configs.First(c => c.Name == name).Config;
        var tensors = new List<(string Key, Parameter Parameter)>();
        var wrapped = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (module, layer) in Layers())
        {
            switch (layer.AllAdapters.FirstOrDefault(a => a.Name == name))
            {
                case Ia3Adapter ia3:
                    tensors.Add((AdapterKeys.Ia3(module), ia3.L));
                    break;
                case LoraAdapter adapter:
                    bool embedding = layer is Embedding;
                    wrapped.Add(module);
                    tensors.Add((AdapterKeys.LoraA(module, embedding), adapter.A));
                    tensors.Add((AdapterKeys.LoraB(module, embedding), adapter.B));
                    if (adapter.Bias != null)
                    {
                        tensors.Add((AdapterKeys.LoraBias(module), adapter.Bias));
                    }

                    if (adapter.Magnitude != null)
                    {
                        tensors.Add((AdapterKeys.Magnitude(module), adapter.Magnitude));
                    }

                    break;
            }
        }

        var copies = saved.CopiesOf(name).ToList();
        foreach (var (module, weight, bias) in copies)
        {
            tensors.Add((AdapterKeys.SavedWeight(module), weight));
            if (bias != null)
            {
                tensors.Add((AdapterKeys.PlainBias(module), bias));
            }
        }

        if (config is LoraConfig lora)
        {
            foreach (var (module, linear) in AdapterKeys.BiasLinears(Model, lora, wrapped, copies.Select(c => c.Module).ToHashSet(StringComparer.Ordinal)))
            {
                tensors.Add((linear.Adapters.Count > 0 ? AdapterKeys.WrappedBias(module) : AdapterKeys.PlainBias(module), linear.Bias!));
            }
        }

        tensors.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
        return tensors;
    }

    /// <summary>Registers an adapter that already sits on the model's layers (the static <see cref="Lora"/> helpers).</summary>
    internal void Adopt(string name, LoraConfig config)
    {
        if (!Layers().Any(l => l.Layer.AllAdapters.Any(a => a.Name == name)))
        {
            throw new InvalidOperationException($"the model has no adapter named '{name}'.");
        }

        if (config.ModulesToSave is { Count: > 0 })
        {
            throw new NotSupportedException("modules_to_save copies are kept by the PeftModel that created them; save through that PeftModel.");
        }

        configs.Add((name, config));
    }

    private static string ShapeProblem(ExpectedKey e, IReadOnlyList<long> found)
    {
        string text = $"module '{e.Module}' {e.Role}: expected shape [{string.Join(", ", e.Shape)}], found [{string.Join(", ", found)}]";
        int rankAxis = e.Role is "lora_A" or "lora_embedding_A" ? 0 : e.Role is "lora_B" or "lora_embedding_B" ? 1 : -1;
        if (rankAxis >= 0 && found.Count == 2 && found[1 - rankAxis] == e.Shape[1 - rankAxis])
        {
            text += $" (the config's r = {e.Shape[rankAxis]} disagrees with the tensor's rank {found[rankAxis]})";
        }

        return text;
    }
}
