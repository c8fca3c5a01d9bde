// New adapters built from existing ones, module by module (docs/formats/methods.md#weighted-combination):
//   AddWeightedAdapter  PEFT's add_weighted_adapter: on every module that carries at least one
//       of the plain LoRA adapters, AdapterCombination.Combine of the factors present there
//       (weights as given; each module's DARE drops seeded by (seed, module name)). The new
//       config is the first adapter's with r = the combined rank, lora_alpha = r (scale 1),
//       use_rslora false, target_modules covering exactly the combined modules (a shared
//       target list, their union, or the full module names, whichever selects exactly them),
//       and a rank_pattern / alpha_pattern entry for a module whose rank differs (cat or a
//       factor-wise type over rank_pattern adapters).
//   FederatedAverage  θ = Σ n_k·θ_k / Σ n_k over every tensor of the clients' adapters (same
//       method, same keys and shapes, and for LoRA the same scale per module), config of the
//       first client.
// The new adapter is frozen and not activated (as in PEFT); SetAdapter makes it active.
using PeftKernels.Nn;

namespace PeftKernels.Peft;

public sealed partial class PeftModel
{
    /// <summary>
    /// Adds adapter <paramref name="name"/> combining plain LoRA adapters with <paramref name="weights"/> (PEFT's
    /// add_weighted_adapter); <paramref name="combination"/> is a PEFT combination_type ("svd", "linear", "cat", "ties",
    /// "dare_linear", "dare_ties", "magnitude_prune", or an *_svd variant). Returns the modules it sits on.
    /// </summary>
    /// <param name="adapters">Existing LoRA adapters (not DoRA, IA³, lora_bias or modules_to_save ones).</param>
    /// <param name="weights">One weight per adapter.</param>
    /// <param name="name">The new adapter's name.</param>
    /// <param name="combination">The combination type.</param>
    /// <param name="svdRank">Rank of an svd type (default: the largest rank).</param>
    /// <param name="svdClamp">Quantile clamp of an svd type, or null.</param>
    /// <param name="density">Fraction kept by ties, dare_* and magnitude_prune (required by them).</param>
    /// <param name="majoritySignMethod">TIES sign election.</param>
    /// <param name="seed">Seed of DARE's drops.</param>
    /// <exception cref="ArgumentException">Unknown or repeated adapter, bad counts or options, unequal ranks where needed.</exception>
    /// <exception cref="NotSupportedException">An adapter is not plain LoRA or has modules_to_save.</exception>
    public IReadOnlyList<string> AddWeightedAdapter(IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string name, string combination = "svd",
        int? svdRank = null, double? svdClamp = null, double? density = null, MajoritySignMethod majoritySignMethod = MajoritySignMethod.Total, ulong seed = 0) =>
        AddWeightedAdapter(adapters, weights, name, new AdapterCombinationOptions
        {
            Type = AdapterCombination.ParseType(combination),
            SvdRank = svdRank,
            SvdClamp = svdClamp,
            Density = density,
            MajoritySignMethod = majoritySignMethod,
            Seed = seed,
        });

    /// <summary>As the string overload, with the options given whole.</summary>
    public IReadOnlyList<string> AddWeightedAdapter(IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string name, AdapterCombinationOptions options)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        CheckNewName(name);
        if (adapters.Count == 0 || adapters.Distinct().Count() != adapters.Count)
        {
            throw new ArgumentException($"give one or more distinct adapters to combine; got [{string.Join(", ", adapters)}].", nameof(adapters));
        }

        if (weights.Count != adapters.Count)
        {
            throw new ArgumentException($"weights has {weights.Count} entries; expected one per adapter ({adapters.Count}).", nameof(weights));
        }

        var sources = adapters.Select(a => (Name: a, Config: LoraSource(a))).ToList();
        int rank = AdapterCombination.CombinedRank([.. sources.Select(s => s.Config.R)], options);

        // Combine every module that carries at least one of the adapters, from the ones it carries.
        var combined = new List<(string Module, ILoraLayer Layer, LoraFactors Factors)>();
        foreach (var (module, layer) in Layers())
        {
            var present = sources.Select((s, i) => (Adapter: layer.Adapters.FirstOrDefault(a => a.Name == s.Name), Weight: weights[i]))
                .Where(p => p.Adapter != null).ToList();
            if (present.Count == 0)
            {
                continue;
            }

            var factors = present.Select(p => new LoraFactors(p.Adapter!.A.Data, p.Adapter.B.Data, p.Adapter.Rank, layer.InFeatures, layer.OutFeatures, p.Adapter.Scale)).ToList();
            combined.Add((module, layer, AdapterCombination.Combine(factors, [.. present.Select(p => p.Weight)],
                options with { Seed = CombinationSeed(options.Seed, module) })));
        }

        var first = sources[0].Config;
        var odd = combined.Where(c => c.Factors.Rank != rank).ToDictionary(c => c.Module, c => c.Factors.Rank);
        var config = first with
        {
            R = rank,
            LoraAlpha = rank,
            UseRsLora = false,
            LoraBias = false,
            Bias = "none",
            ModulesToSave = null,
            TargetModules = CoveringTargets([.. sources.Select(s => s.Config)], [.. combined.Select(c => c.Module)]),
            ExcludeModules = null,
            LayersToTransform = null,
            LayersPattern = null,
            RankPattern = odd,
            AlphaPattern = odd.ToDictionary(e => e.Key, e => (double)e.Value),
        };

        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var (module, layer, factors) in combined)
        {
            values[AdapterKeys.LoraA(module, layer is Embedding)] = factors.A;
            values[AdapterKeys.LoraB(module, layer is Embedding)] = factors.B;
        }

        var (targets, toSave) = Plan(name, config);
        var planned = targets.Select(t => (t.Name, t.R)).Order().ToList();
        if (!planned.SequenceEqual(combined.Select(c => (c.Module, c.Factors.Rank)).Order()))
        {
            throw new InvalidOperationException($"the combined adapter's config selects [{string.Join(", ", planned)}], not the combined modules; this is a bug.");
        }

        Inject(name, config, targets, toSave, 0, values, trainable: false);
        return [.. targets.Select(t => t.Name)];
    }

    /// <summary>
    /// Adds adapter <paramref name="name"/>, the federated average Σ n_k·θ_k / Σ n_k of every tensor of the clients' adapters
    /// (same method, keys and shapes; LoRA: the same scale per module), with the first client's config. Returns the modules it sits on.
    /// </summary>
    /// <exception cref="ArgumentException">No clients, an unknown or repeated adapter, a sample count ≤ 0, or adapters that differ in method, keys, shapes or scale.</exception>
    public IReadOnlyList<string> FederatedAverage(IReadOnlyList<(string Adapter, long Samples)> clients, string name)
    {
        ArgumentNullException.ThrowIfNull(clients);
        CheckNewName(name);
        if (clients.Count == 0 || clients.Select(c => c.Adapter).Distinct().Count() != clients.Count)
        {
            throw new ArgumentException($"give one or more distinct client adapters; got [{string.Join(", ", clients.Select(c => c.Adapter))}].", nameof(clients));
        }

        foreach (var (adapter, _) in clients)
        {
            RequireAdapter(adapter);
        }

        var config = configs.First(c => c.Name == clients[0].Adapter).Config;
        var tensors = clients.Select(c => AdapterTensors(c.Adapter)).ToList();
        for (int k = 1; k < clients.Count; k++)
        {
            var other = configs.First(c => c.Name == clients[k].Adapter).Config;
            string? problem = other.PeftType != config.PeftType ? $"it is {other.PeftType}, client 0 is {config.PeftType}"
                : !tensors[k].Select(t => (t.Key, Shape: string.Join(",", t.Parameter.Shape))).SequenceEqual(tensors[0].Select(t => (t.Key, Shape: string.Join(",", t.Parameter.Shape))))
                    ? "its tensors (keys or shapes) differ from client 0's"
                : ScaleMismatch(clients[0].Adapter, clients[k].Adapter);
            if (problem != null)
            {
                throw new ArgumentException($"client adapter '{clients[k].Adapter}' cannot be averaged with '{clients[0].Adapter}': {problem}.", nameof(clients));
            }
        }

        long[] samples = [.. clients.Select(c => c.Samples)];
        var values = tensors[0].Select((t, i) => (t.Key, Value: AdapterCombination.FederatedAverage([.. tensors.Select(c => c[i].Parameter.Data)], samples, t.Key)))
            .ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal);
        if (config is Ia3Config ia3)
        {
            var (targets, toSave) = Plan(name, ia3);
            Inject(name, ia3, targets, toSave, 0, values, trainable: false);
            return [.. targets.Select(t => t.Name)];
        }

        var lora = (LoraConfig)config;
        var (loraTargets, loraSaved) = Plan(name, lora);
        Inject(name, lora, loraTargets, loraSaved, 0, values, trainable: false);
        return [.. loraTargets.Select(t => t.Name)];
    }

    /// <summary>The seed of one module's random choices in a combination: (seed, module name) mixed.</summary>
    internal static ulong CombinationSeed(ulong seed, string module) => ForwardContext.Mix(seed, Fnv1a(module));

    private LoraConfig LoraSource(string name)
    {
        RequireAdapter(name);
        var config = configs.First(c => c.Name == name).Config;
        return config switch
        {
            LoraConfig { UseDora: true } => throw new NotSupportedException($"cannot combine adapter '{name}': it is DoRA (its magnitude has no combination rule)."),
            LoraConfig { LoraBias: true } => throw new NotSupportedException($"cannot combine adapter '{name}': it has a lora_B bias."),
            LoraConfig { ModulesToSave.Count: > 0 } => throw new NotSupportedException($"cannot combine adapter '{name}': it has modules_to_save copies."),
            LoraConfig lora => lora,
            _ => throw new NotSupportedException($"cannot combine adapter '{name}': it is {config.PeftType}; weighted combination is defined for LoRA adapters."),
        };
    }

    private string? ScaleMismatch(string a, string b)
    {
        foreach (var (module, layer) in Layers())
        {
            var (x, y) = (layer.Adapters.FirstOrDefault(l => l.Name == a), layer.Adapters.FirstOrDefault(l => l.Name == b));
            if (x != null && y != null && x.Scale != y.Scale)
            {
                return $"on '{module}' its scale is {y.Scale}, client 0's {x.Scale} (averaging A and B assumes one lora_alpha / r)";
            }
        }

        return null;
    }

    /// <summary>target_modules that select exactly <paramref name="modules"/>: the sources' shared targets, their union, or the full names.</summary>
    private TargetModules CoveringTargets(IReadOnlyList<LoraConfig> sources, IReadOnlyList<string> modules)
    {
        var want = modules.Order(StringComparer.Ordinal).ToList();
        var candidates = new List<TargetModules> { sources[0].EffectiveTargets };
        if (sources.All(s => s.EffectiveTargets.Names != null))
        {
            candidates.Add(TargetModules.FromList([.. sources.SelectMany(s => s.EffectiveTargets.Names!).Distinct().Order(StringComparer.Ordinal)]));
        }

        foreach (var candidate in candidates)
        {
            var probe = new LoraConfig { TargetModules = candidate };
            if (AdapterKeys.Targets(Model, probe).Select(t => t.Name).Order(StringComparer.Ordinal).SequenceEqual(want))
            {
                return candidate;
            }
        }

        return TargetModules.FromList([.. want]);
    }
}
