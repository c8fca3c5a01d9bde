// PEFT's PeftModel over a base module: named LoRA (DoRA) adapters added or loaded onto the
// Linear and Embedding layers the config targets, and IA³ adapters onto Linear layers (PEFT
// keeps one method per model; here a layer may hold adapters of both kinds under different
// names), one or several active (LoRA branches are summed, IA³ scalings multiply), a
// disable scope, modules_to_save copies, trainable base biases, merge / unmerge / unload, and
// the adapter folder in PEFT layout (PeftModelFiles.cs, PeftModelMerge.cs). The base is frozen
// when the first adapter arrives. Base biases trained with bias "all" / "lora_only" live in the
// base layers (as in PEFT); their original values are kept so that Unload restores them.
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft;

/// <summary>Named LoRA, DoRA and IA³ adapters over a base model, as Hugging Face PEFT's PeftModel.</summary>
public sealed partial class PeftModel
{
    private readonly List<(string Name, PeftConfig Config)> configs = [];
    private readonly ModulesToSave saved = new();
    private readonly Dictionary<Parameter, float[]> originalBiases = new(ReferenceEqualityComparer.Instance);
    private string[] active = [];
    private int disabledDepth;

    /// <summary>Wraps <paramref name="model"/> (no adapters yet).</summary>
    public PeftModel(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
    }

    /// <summary>Wraps <paramref name="model"/> and adds the active adapter <paramref name="adapterName"/> (PEFT's get_peft_model).</summary>
    public PeftModel(Module model, LoraConfig config, string adapterName = "default", int seed = 0)
        : this(model) => AddAdapter(adapterName, config, seed);

    /// <summary>The base model, carrying the adapters.</summary>
    public Module Model { get; }

    /// <summary>The adapters and their configs (<see cref="LoraConfig"/> or <see cref="Ia3Config"/>), in the order added (PEFT's peft_config).</summary>
    public IReadOnlyDictionary<string, PeftConfig> Adapters => configs.ToDictionary(c => c.Name, c => c.Config);

    /// <summary>The active adapters, in the order given to <see cref="SetAdapter"/>.</summary>
    public IReadOnlyList<string> ActiveAdapters => active;

    /// <summary>True inside a <see cref="DisableAdapter"/> scope.</summary>
    public bool AdaptersDisabled => disabledDepth > 0;

    /// <summary>
    /// Adds a freshly initialised, trainable LoRA adapter (DoRA with use_dora: its magnitude starts at the row norms of W)
    /// and its modules_to_save copies, and trains the biases its config names; the first adapter becomes active.
    /// Returns the wrapped module names.
    /// </summary>
    /// <exception cref="ArgumentException">The name is taken, the config is invalid, or no module matches its targets.</exception>
    public IReadOnlyList<string> AddAdapter(string name, LoraConfig config, int seed = 0)
    {
        var (targets, toSave) = Plan(name, config);
        Inject(name, config, targets, toSave, (ulong)seed, values: null, trainable: true);
        return [.. targets.Select(t => t.Name)];
    }

    /// <summary>
    /// Adds a freshly initialised, trainable IA³ adapter (vectors of ones with init_ia3_weights) and its modules_to_save
    /// copies; the first adapter becomes active. Returns the wrapped module names.
    /// </summary>
    /// <exception cref="ArgumentException">The name is taken, the config is invalid, or no Linear matches its targets.</exception>
    public IReadOnlyList<string> AddAdapter(string name, Ia3Config config, int seed = 0)
    {
        var (targets, toSave) = Plan(name, config);
        Inject(name, config, targets, toSave, (ulong)seed, values: null, trainable: true);
        return [.. targets.Select(t => t.Name)];
    }

    /// <summary>Makes <paramref name="names"/> the active adapters (one or several; their branches are summed).</summary>
    /// <exception cref="ArgumentException">An unknown name, or none given.</exception>
    public void SetAdapter(params string[] names)
    {
        ArgumentNullException.ThrowIfNull(names);
        if (names.Length == 0 || names.Distinct().Count() != names.Length)
        {
            throw new ArgumentException($"give one or more distinct adapter names; got [{string.Join(", ", names)}].", nameof(names));
        }

        foreach (string n in names)
        {
            RequireAdapter(n);
        }

        saved.CheckActive(names);
        active = (string[])names.Clone();
        Sync();
    }

    /// <summary>Removes an adapter everywhere; when it was active, the first remaining adapter becomes active.</summary>
    /// <exception cref="InvalidOperationException">The adapter is merged.</exception>
    public void DeleteAdapter(string name)
    {
        RequireAdapter(name);
        if (Layers().Any(l => l.Layer.MergedAdapters.Contains(name)))
        {
            throw new InvalidOperationException($"adapter '{name}' is merged into the base weights; unmerge before deleting it.");
        }

        foreach (var (_, layer) in Layers())
        {
            layer.RemoveAdapter(name);
        }

        saved.Remove(name);
        configs.RemoveAll(c => c.Name == name);
        loadedNonFinite.Remove(name);
        active = [.. active.Where(a => a != name)];
        if (active.Length == 0 && configs.Count > 0)
        {
            active = [configs[0].Name];
        }

        Sync();
    }

    /// <summary>A scope in which the model computes as the base (PEFT's disable_adapter); dispose to re-enable.</summary>
    /// <exception cref="InvalidOperationException">An adapter is merged (unmerge first).</exception>
    public IDisposable DisableAdapter()
    {
        if (Layers().Any(l => l.Layer.MergedAdapters.Count > 0))
        {
            throw new InvalidOperationException("adapters are merged into the base weights; unmerge before disabling adapters.");
        }

        disabledDepth++;
        Sync();
        return new EnableScope(this);
    }

    /// <summary>LoRA-FA: freezes lora_A of the adapter (or of every adapter) so only B trains and backward skips the dA GEMM.</summary>
    public void FreezeLoraA(string? adapterName = null)
    {
        if (adapterName != null)
        {
            RequireAdapter(adapterName);
        }

        foreach (var (_, layer) in Layers())
        {
            foreach (var a in layer.Adapters.Where(a => adapterName == null || a.Name == adapterName))
            {
                a.A.Trainable = false;
            }
        }
    }

    /// <summary>Trainable and total parameter counts, as PEFT's print_trainable_parameters (modules_to_save originals and copies included).</summary>
    public TrainableParameterCount TrainableParameters()
    {
        var all = Model.NamedParameters().Select(p => p.Parameter).Concat(saved.Parameters).Distinct<Parameter>(ReferenceEqualityComparer.Instance).ToList();
        return new TrainableParameterCount(all.Where(p => p.Trainable).Sum(p => p.Count), all.Sum(p => p.Count));
    }

    /// <summary>
    /// Causal-LM logits with a per-row adapter choice: <paramref name="adapterNames"/> gives one adapter per sequence
    /// (<see cref="ForwardContext.BaseAdapterName"/> for none); null uses the active adapters.
    /// </summary>
    /// <exception cref="ArgumentException">Wrong count or unknown name.</exception>
    /// <exception cref="NotSupportedException">The base is not a <see cref="LlamaForCausalLM"/>, or a named adapter has modules_to_save.</exception>
    public Tensor Forward(int[] tokens, int batch = 1, IReadOnlyList<string>? adapterNames = null, ForwardContext? context = null)
    {
        var lm = Model as LlamaForCausalLM ?? throw new NotSupportedException($"Forward needs a LlamaForCausalLM base; this one is a {Model.GetType().Name}.");
        context ??= ForwardContext.Default;
        if (adapterNames != null)
        {
            if (adapterNames.Count != batch)
            {
                throw new ArgumentException($"{adapterNames.Count} adapter names for a batch of {batch}: give one per sequence.", nameof(adapterNames));
            }

            foreach (string n in adapterNames.Where(n => n != ForwardContext.BaseAdapterName).Distinct())
            {
                RequireAdapter(n);
                if (configs.First(c => c.Name == n).Config is Ia3Config or LoraConfig { UseDora: true })
                {
                    throw new NotSupportedException($"adapter '{n}' is {(configs.First(c => c.Name == n).Config is Ia3Config ? "IA³" : "DoRA")}; "
                        + "per-row adapter selection supports plain LoRA adapters only (PEFT refuses mixed batches with these too).");
                }

                if (saved.Has(n))
                {
                    throw new NotSupportedException($"adapter '{n}' has modules_to_save copies; per-row adapter selection supports LoRA layers only.");
                }
            }

            if (active.Any(saved.Has) && !AdaptersDisabled)
            {
                throw new NotSupportedException("an active adapter has modules_to_save copies in place; per-row selection would apply them to every row.");
            }

            context = context with { AdapterNames = [.. adapterNames] };
        }

        return lm.Forward(tokens, batch, null, context);
    }

    internal IEnumerable<(string Name, ILoraLayer Layer)> Layers() =>
        Model.NamedModules().Where(m => m.Module is ILoraLayer).Select(m => (m.Name, (ILoraLayer)m.Module));

    private void RequireAdapter(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (!configs.Any(c => c.Name == name))
        {
            throw new ArgumentException($"no adapter named '{name}'; the model has [{string.Join(", ", configs.Select(c => c.Name))}].", nameof(name));
        }
    }

    /// <summary>Adds the adapter's tensors (fresh, or the given values by file key) and its bookkeeping; cannot fail half-way.</summary>
    private void Inject(string name, LoraConfig config, List<LoraTarget> targets, List<(string Name, ILoraLayer Layer)> toSave, ulong seed,
        IReadOnlyDictionary<string, float[]>? values, bool trainable)
    {
        bool first = configs.Count == 0;
        if (first)
        {
            Model.Freeze();
        }

        foreach (var t in targets)
        {
            ulong moduleSeed = ForwardContext.Mix(seed, Fnv1a(t.Name));
            bool embedding = t.Layer is Embedding;
            var adapter = embedding
                ? LoraAdapter.ForEmbedding(name, t.Layer.InFeatures, t.Layer.OutFeatures, t.R, t.Alpha, config.UseRsLora, moduleSeed)
                : new LoraAdapter(name, t.Layer.InFeatures, t.Layer.OutFeatures, t.R, t.Alpha, (float)config.LoraDropout, config.UseRsLora, moduleSeed,
                    config.InitLoraWeights == "gaussian", config.LoraBias, config.UseDora);
            if (values != null)
            {
                values[AdapterKeys.LoraA(t.Name, embedding)].CopyTo(adapter.A.Data, 0);
                values[AdapterKeys.LoraB(t.Name, embedding)].CopyTo(adapter.B.Data, 0);
                if (adapter.Bias != null)
                {
                    values[AdapterKeys.LoraBias(t.Name)].CopyTo(adapter.Bias.Data, 0);
                }
            }

            if (adapter.Magnitude != null)
            {
                // DoRA starts at m = ‖W + s·B·A‖ row-wise (= ‖W‖ with B = 0), so the wrapped layer starts as the base.
                (values?[AdapterKeys.Magnitude(t.Name)] ?? ((Linear)t.Layer).WeightNorms(adapter)).CopyTo(adapter.Magnitude.Data, 0);
            }

            foreach (var p in adapter.Parameters)
            {
                p.Trainable = trainable;
            }

            t.Layer.AddAdapter(adapter);
        }

        AddSaved(name, toSave, values, trainable);
        var wrapped = targets.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var (module, linear) in AdapterKeys.BiasLinears(Model, config, wrapped, toSave.Select(s => s.Name).ToHashSet(StringComparer.Ordinal)))
        {
            var bias = linear.Bias!;
            originalBiases.TryAdd(bias, (float[])bias.Data.Clone());
            if (values != null && (values.TryGetValue(AdapterKeys.WrappedBias(module), out var v) || values.TryGetValue(AdapterKeys.PlainBias(module), out v)))
            {
                v.CopyTo(bias.Data, 0);
            }

            bias.Trainable |= trainable;
        }

        Register(name, config, first);
        Model.SyncDevice(refresh: values != null); // a model on a GPU device gets the new adapter (and loaded biases) there
    }

    /// <summary>Adds an IA³ adapter's vectors (ones, N(0, 1), or the given values by file key) and its bookkeeping; cannot fail half-way.</summary>
    private void Inject(string name, Ia3Config config, List<Ia3Target> targets, List<(string Name, ILoraLayer Layer)> toSave, ulong seed,
        IReadOnlyDictionary<string, float[]>? values, bool trainable)
    {
        bool first = configs.Count == 0;
        if (first)
        {
            Model.Freeze();
        }

        foreach (var t in targets)
        {
            var adapter = new Ia3Adapter(name, t.Feedforward ? t.Layer.InFeatures : t.Layer.OutFeatures, t.Feedforward, config.InitIa3Weights,
                ForwardContext.Mix(seed, Fnv1a(t.Name)));
            values?[AdapterKeys.Ia3(t.Name)].CopyTo(adapter.L.Data, 0);
            adapter.L.Trainable = trainable;
            t.Layer.AddAdapter(adapter);
        }

        AddSaved(name, toSave, values, trainable);
        Register(name, config, first);
        Model.SyncDevice(refresh: values != null);
    }

    private void AddSaved(string name, List<(string Name, ILoraLayer Layer)> toSave, IReadOnlyDictionary<string, float[]>? values, bool trainable)
    {
        foreach (var (module, layer) in toSave)
        {
            saved.Add(name, module, layer, values?[AdapterKeys.SavedWeight(module)],
                layer is Linear { Bias: not null } ? values?[AdapterKeys.PlainBias(module)] : null, trainable);
        }
    }

    private void Register(string name, PeftConfig config, bool first)
    {
        configs.Add((name, config));
        if (first)
        {
            active = [name];
        }

        Sync();
    }

    /// <summary>Pushes the active set, the disable switch and the modules_to_save copies to every layer.</summary>
    private void Sync()
    {
        foreach (var (_, layer) in Layers())
        {
            layer.SetActiveAdapters(active);
            layer.AdaptersDisabled = AdaptersDisabled;
        }

        saved.Apply(active, AdaptersDisabled);
    }

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

    private sealed class EnableScope(PeftModel owner) : IDisposable
    {
        private bool disposed;

        public void Dispose()
        {
            if (!disposed)
            {
                disposed = true;
                owner.disabledDepth--;
                owner.Sync();
            }
        }
    }
}

/// <summary>Trainable and total parameter counts.</summary>
/// <param name="Trainable">Elements of trainable parameters.</param>
/// <param name="Total">Elements of all parameters (shared ones once; a 4-bit weight counts its elements).</param>
public sealed record TrainableParameterCount(long Trainable, long Total)
{
    /// <summary>100 · trainable / total.</summary>
    public double Percent => Total == 0 ? 0 : 100.0 * Trainable / Total;

    /// <summary>PEFT's print_trainable_parameters line: "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330".</summary>
    public override string ToString() =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture, $"trainable params: {Trainable:N0} || all params: {Total:N0} || trainable%: {Percent:F4}");
}
