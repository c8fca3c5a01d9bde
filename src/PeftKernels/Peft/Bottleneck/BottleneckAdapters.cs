// The bottleneck adapters attached to one model (docs/formats/bottleneck-adapters.md): a
// BottleneckSite on each decoder layer's attention and output site, the adapters and fusion layers
// in them, the active setup (one adapter or a composition) and the named setups a per-row switch
// selects (ForwardContext.AdapterNames). It is the model's IModelAdapter of method "bottleneck".
// Bottleneck adapters do not merge: A(z) is non-linear in the hidden state, so no weight update of
// the base reproduces it (Merge refuses; CanMerge is false).
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>The bottleneck adapters (and their compositions) attached to a model.</summary>
public sealed partial class BottleneckAdapters : IModelAdapter
{
    private readonly List<string> names = [];
    private readonly Dictionary<string, BottleneckConfig> configs = [];
    private readonly Dictionary<string, AdapterFileInfo> infos = [];
    private readonly Dictionary<string, AdapterFusionConfig> fusionConfigs = [];
    private readonly Dictionary<string, AdapterSetup> namedSetups = [];
    private readonly List<BottleneckSite> sites = [];
    private readonly Action removeAuxiliaryLoss;
    private AdapterSetup? activeSetup;

    private BottleneckAdapters(LlamaForCausalLM model)
    {
        Model = model;
        for (int l = 0; l < model.Model.Layers.Count; l++)
        {
            var layer = model.Model.Layers[l];
            if (layer.AttentionSite != null || layer.OutputSite != null)
            {
                throw new InvalidOperationException($"layer {l} already has a residual site attached; detach it first.");
            }

            var attention = new BottleneckSite(this, l, attention: true);
            var output = new BottleneckSite(this, l, attention: false);
            layer.AttentionSite = attention;
            layer.OutputSite = output;
            sites.Add(attention);
            sites.Add(output);
        }

        removeAuxiliaryLoss = model.AddAuxiliaryLoss(FusionRegularization);
    }

    /// <inheritdoc/>
    public string Method => "bottleneck";

    /// <inheritdoc/>
    public LlamaForCausalLM Model { get; }

    /// <inheritdoc/>
    public IEnumerable<Parameter> Parameters => sites.SelectMany(s => s.NamedParameters().Select(p => p.Parameter));

    /// <summary>False: bottleneck adapters are non-linear in the hidden state and cannot be merged into the base weights.</summary>
    public bool CanMerge => false;

    /// <summary>The adapters' names, in the order they were added.</summary>
    public IReadOnlyList<string> AdapterNames => names;

    /// <summary>The fusions' names ("a,b").</summary>
    public IReadOnlyCollection<string> FusionNames => fusionConfigs.Keys;

    /// <summary>The sites, layer by layer (attention, then output).</summary>
    public IReadOnlyList<BottleneckSite> Sites => sites;

    /// <summary>The setup forward runs when no per-row names are given (null: none; the model computes as the base).</summary>
    /// <exception cref="ArgumentException">The setup names an adapter or a fusion that is not attached.</exception>
    public AdapterSetup? ActiveSetup
    {
        get => activeSetup;
        set
        {
            if (value != null)
            {
                CheckSetup(value);
            }

            activeSetup = value;
        }
    }

    /// <summary>True while <see cref="ForwardParallel"/> runs (the batch is replicated for Parallel blocks).</summary>
    internal bool ParallelReplicated { get; private set; }

    /// <summary>The set attached to <paramref name="model"/>, or null.</summary>
    public static BottleneckAdapters? Find(LlamaForCausalLM model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.Model.Layers.Count > 0 && model.Model.Layers[0].OutputSite is BottleneckSite site ? site.Owner : null;
    }

    /// <summary>The set attached to <paramref name="model"/>, attaching an empty one (its sites) when there is none.</summary>
    public static BottleneckAdapters Of(LlamaForCausalLM model) => Find(model) ?? new BottleneckAdapters(model);

    /// <summary>
    /// Freezes the model, adds a trainable bottleneck adapter <paramref name="name"/> (initialised by <paramref name="seed"/> and
    /// <see cref="BottleneckConfig.InitWeights"/>) and makes it the active setup: the factory for training one adapter.
    /// </summary>
    public static BottleneckAdapters Attach(LlamaForCausalLM model, BottleneckConfig config, int seed = 0, string name = "bottleneck")
    {
        ArgumentNullException.ThrowIfNull(model);
        model.Freeze();
        var set = Of(model);
        set.Add(name, config, seed, trainable: true);
        set.ActiveSetup = AdapterSetup.Single(name);
        return set;
    }

    /// <summary>The config of adapter <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such adapter.</exception>
    public BottleneckConfig ConfigOf(string name) =>
        configs.TryGetValue(name, out var c) ? c : throw new KeyNotFoundException($"no bottleneck adapter '{name}' is attached (have: {string.Join(", ", names)}).");

    /// <summary>The fusion config of fusion <paramref name="name"/> ("a,b").</summary>
    public AdapterFusionConfig FusionConfigOf(string name) =>
        fusionConfigs.TryGetValue(name, out var c) ? c : throw new KeyNotFoundException($"no fusion '{name}' is attached.");

    /// <summary>Adds a bottleneck adapter at the sites its config names (not made active).</summary>
    /// <exception cref="ArgumentException">A duplicate or empty name, or a bad config.</exception>
    public void Add(string name, BottleneckConfig config, int seed = 0, bool trainable = true) =>
        Add(name, config, new AdapterFileInfo(name, Model.Config.HiddenSize, ModelName, AdapterFileInfo.DefaultVersion), seed, trainable);

    /// <summary>Adds a fusion layer over the adapters of <paramref name="fuse"/> (a Fuse block) at every site where one of them sits.</summary>
    public void AddFusion(AdapterSetup fuse, AdapterFusionConfig? config = null, int seed = 0, bool trainable = true)
    {
        ArgumentNullException.ThrowIfNull(fuse);
        if (fuse.Kind != AdapterSetupKind.Fuse)
        {
            throw new ArgumentException($"AddFusion needs a Fuse block; got {fuse}.", nameof(fuse));
        }

        foreach (var n in fuse.AdapterNames)
        {
            _ = ConfigOf(n);
        }

        string name = fuse.FusionName;
        if (fusionConfigs.ContainsKey(name))
        {
            throw new ArgumentException($"a fusion '{name}' is already attached.", nameof(fuse));
        }

        config ??= AdapterFusionConfig.Dynamic();
        var rng = new Random(seed);
        foreach (var site in sites.Where(s => fuse.AdapterNames.Any(n => s.Adapter(n) != null)))
        {
            site.AddFusion(name, new AdapterFusionLayer(config, Model.Config.HiddenSize, rng, trainable));
        }

        fusionConfigs[name] = config;
        Model.SyncDevice(refresh: false);
    }

    /// <summary>Registers a setup under a name that <see cref="ForwardContext.AdapterNames"/> can select per row (each adapter's own name selects it alone).</summary>
    public void RegisterSetup(string name, AdapterSetup setup)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(setup);
        CheckSetup(setup);
        if (setup.ParallelChannels > 1)
        {
            throw new ArgumentException($"a per-row setup cannot hold a Parallel block ({setup}); use ForwardParallel.", nameof(setup));
        }

        namedSetups[name] = setup;
    }

    /// <summary>Removes an adapter or a fusion (and any named setup that uses it); false when absent.</summary>
    public bool Remove(string name)
    {
        bool adapter = names.Remove(name), fusion = fusionConfigs.Remove(name);
        if (!adapter && !fusion)
        {
            return false;
        }

        configs.Remove(name);
        infos.Remove(name);
        foreach (var site in sites)
        {
            site.Remove(name);
        }

        foreach (var key in namedSetups.Where(e => !Uses(e.Value)).Select(e => e.Key).ToList())
        {
            namedSetups.Remove(key);
        }

        if (activeSetup != null && !Uses(activeSetup))
        {
            activeSetup = null;
        }

        return true;
    }

    /// <summary>Logits [R·B·T, vocab] of a setup with Parallel blocks: the batch replicated R times (R = its channels), replica i run by child i.</summary>
    public Tensor ForwardParallel(int[] tokens, int batch = 1, KvCache? cache = null, ForwardContext? context = null)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        int channels = activeSetup?.ParallelChannels ?? 1;
        var replicated = new int[checked(tokens.Length * channels)];
        for (int i = 0; i < channels; i++)
        {
            tokens.CopyTo(replicated, i * tokens.Length);
        }

        ParallelReplicated = true;
        try
        {
            return Model.Forward(replicated, batch * channels, cache, context);
        }
        finally
        {
            ParallelReplicated = false;
        }
    }

    /// <summary>Refuses: bottleneck adapters cannot be merged into the base weights.</summary>
    /// <exception cref="NotSupportedException">Always.</exception>
    public void Merge() =>
        throw new NotSupportedException("bottleneck adapters cannot be merged: A(z) = s·(W_up·f(W_down·z + b_down) + b_up) is non-linear in the hidden state, so no change of the base weights reproduces it. Serve the adapter unmerged.");

    /// <inheritdoc/>
    public void Detach()
    {
        foreach (var layer in Model.Model.Layers)
        {
            if (layer.AttentionSite is BottleneckSite a && ReferenceEquals(a.Owner, this))
            {
                layer.AttentionSite = null;
            }

            if (layer.OutputSite is BottleneckSite o && ReferenceEquals(o.Owner, this))
            {
                layer.OutputSite = null;
            }
        }

        removeAuxiliaryLoss();
    }

    /// <summary>The setup a per-row name selects: a registered setup, an adapter alone, or null (a LoRA adapter, "__base__").</summary>
    internal AdapterSetup? SetupFor(string rowName)
    {
        if (namedSetups.TryGetValue(rowName, out var setup))
        {
            return setup;
        }

        if (configs.ContainsKey(rowName))
        {
            namedSetups[rowName] = setup = AdapterSetup.Single(rowName);
            return setup;
        }

        return null;
    }

    private string ModelName => Model.SourceFolder is { } f ? Path.GetFileName(Path.TrimEndingDirectorySeparator(f)) : "";

    private void Add(string name, BottleneckConfig config, AdapterFileInfo info, int seed, bool trainable)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(config);
        if (configs.ContainsKey(name) || fusionConfigs.ContainsKey(name))
        {
            throw new ArgumentException($"a bottleneck adapter or fusion named '{name}' is already attached.", nameof(name));
        }

        if (name.Contains('.', StringComparison.Ordinal) || name.Contains(',', StringComparison.Ordinal))
        {
            throw new ArgumentException($"adapter name '{name}' must not contain '.' or ',' (they separate keys and fused names).", nameof(name));
        }

        config.Validate();
        var rng = new Random(seed);
        foreach (var site in sites.Where(s => config.HasSite(s.Layer, s.IsAttention)))
        {
            site.AddAdapter(new BottleneckLayer(name, config, Model.Config.HiddenSize, rng, trainable));
        }

        names.Add(name);
        configs[name] = config;
        infos[name] = info;
        Model.SyncDevice(refresh: false); // a model on a GPU device gets the new adapter there
    }

    private bool Uses(AdapterSetup setup) =>
        setup.AdapterNames.All(configs.ContainsKey) && setup.Fusions.All(f => fusionConfigs.ContainsKey(f.FusionName));

    private void CheckSetup(AdapterSetup setup)
    {
        foreach (var n in setup.AdapterNames)
        {
            if (!configs.ContainsKey(n))
            {
                throw new ArgumentException($"the setup {setup} names adapter '{n}', which is not attached (have: {string.Join(", ", names)}).", nameof(setup));
            }
        }

        foreach (var f in setup.Fusions)
        {
            if (!fusionConfigs.ContainsKey(f.FusionName))
            {
                throw new ArgumentException($"the setup {setup} fuses '{f.FusionName}', which has no fusion layer: call AddFusion first.", nameof(setup));
            }
        }
    }

    private Tensor? FusionRegularization()
    {
        if (activeSetup == null)
        {
            return null;
        }

        Tensor? total = null;
        foreach (var fuse in activeSetup.Fusions)
        {
            foreach (var layer in sites.Select(s => s.Fusion(fuse.FusionName)).OfType<AdapterFusionLayer>())
            {
                if (layer.RegularizationLoss() is { } term)
                {
                    total = total == null ? term : Ops.Functional.Add(total, term);
                }
            }
        }

        return total;
    }
}
