// Per-request adapter mixes (llama.cpp's "lora": [{id|name, scale}], LoRAX's "merged_adapters" with
// merge_strategy "linear") served inside the same continuous batch as every other request. For LoRA
// adapters a weighted sum of deltas is itself a LoRA: with ΔW_i = s_i·B_i·A_i (s_i = α_i/r_i, or α_i/√r_i
// under rsLoRA) and weights w_i,
//   Σ w_i·ΔW_i = [w_1·s_1·B_1 | … | w_n·s_n·B_n] · [A_1; …; A_n]
// a LoRA of rank Σ r_i (A stacked by rows, B concatenated by columns with the weights and scales folded
// in) and scale 1 — exactly PEFT's add_weighted_adapter with combination_type "cat" (docs/formats/
// methods.md#weighted-combination), which builds it here on a twin of the serving model (base parameters
// shared, nothing copied). The mix is saved in PEFT layout under a cache folder and registered in the
// engine's AdapterRegistry under a derived name (MixPrefix + a hash of the parts' names, versions and
// weights), so requests that name the same mix share one adapter, and a replaced part gives a new mix.
// DoRA and IA³ are not linear in a way that sums (DoRA rescales by a norm of the whole weight, IA³
// multiplies), so they are refused in a mix; so are LoRAs with lora_bias (PEFT refuses to combine them).
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Serving;

/// <summary>Builds, registers and caches weighted mixes of LoRA adapters as one derived adapter of the engine.</summary>
public sealed class AdapterMixer : IDisposable
{
    /// <summary>Names of derived mix adapters start with this (a request cannot load an adapter under such a name).</summary>
    public const string MixPrefix = "~mix-";

    /// <summary>Most mixes kept registered; the oldest is unloaded beyond it.</summary>
    public const int MaxCached = 64;

    private readonly LlamaForCausalLM model;
    private readonly AdapterRegistry registry;
    private readonly string cacheFolder;
    private readonly Lock gate = new();
    private readonly LinkedList<string> order = new();

    /// <summary>A mixer over <paramref name="model"/> (the engine's model) registering mixes in <paramref name="registry"/>; mixes are written under a new temporary folder.</summary>
    public AdapterMixer(LlamaForCausalLM model, AdapterRegistry registry)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(registry);
        this.model = model;
        this.registry = registry;
        cacheFolder = Directory.CreateTempSubdirectory("peft-serve-mixes-").FullName;
    }

    /// <summary>
    /// The registry name of the mix Σ weight·adapter over <paramref name="parts"/> (built and registered on first use).
    /// </summary>
    /// <exception cref="ArgumentException">No parts, a repeated adapter, or a weight that is not finite.</exception>
    /// <exception cref="KeyNotFoundException">A part names an adapter the registry does not know.</exception>
    /// <exception cref="NotSupportedException">A part is DoRA or IA³, or a LoRA with lora_bias.</exception>
    public string Mix(IReadOnlyList<(string Adapter, double Weight)> parts)
    {
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0)
        {
            throw new ArgumentException("an adapter mix needs at least one adapter.", nameof(parts));
        }

        foreach (var (name, weight) in parts)
        {
            if (!double.IsFinite(weight))
            {
                throw new ArgumentException($"the weight of adapter '{name}' in the mix must be finite; got {weight.ToString(CultureInfo.InvariantCulture)}.", nameof(parts));
            }
        }

        var repeated = parts.GroupBy(p => p.Adapter, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (repeated != null)
        {
            throw new ArgumentException($"adapter '{repeated.Key}' appears more than once in the mix.", nameof(parts));
        }

        var leases = new List<AdapterLease>();
        try
        {
            foreach (var (name, _) in parts)
            {
                var lease = registry.Acquire(Known(name));
                leases.Add(lease);
                if (lease.Adapter.Kind != AdapterKind.Lora)
                {
                    throw new NotSupportedException($"adapter '{name}' is {(lease.Adapter.Kind == AdapterKind.Dora ? "DoRA" : "IA³")}; only LoRA adapters can be mixed "
                        + "(a weighted sum of LoRAs is a LoRA; of DoRA or IA³ adapters it is not).");
                }
            }

            string key = string.Join('\n', parts.Select((p, i) => string.Create(CultureInfo.InvariantCulture, $"{p.Adapter}\t{leases[i].Version}\t{p.Weight:R}")));
            string mixName = MixPrefix + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)))[..16];
            lock (gate)
            {
                if (order.Contains(mixName))
                {
                    return mixName;
                }

                string folder = Build(mixName, parts, leases);
                registry.Register(mixName, folder);
                order.AddLast(mixName);
                if (order.Count > MaxCached)
                {
                    string oldest = order.First!.Value;
                    order.RemoveFirst();
                    registry.Unload(oldest);
                }

                return mixName;
            }
        }
        finally
        {
            foreach (var lease in leases)
            {
                lease.Dispose();
            }
        }
    }

    /// <summary>Deletes the cache folder (registered mixes already loaded stay in memory until unloaded).</summary>
    public void Dispose()
    {
        try
        {
            Directory.Delete(cacheFolder, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a temporary folder.
        }
    }

    private string Known(string name) => registry.Names.Contains(name, StringComparer.Ordinal) ? name
        : throw new KeyNotFoundException($"adapter '{name}' is not known; known adapters: {string.Join(", ", registry.Names.Where(n => !n.StartsWith(MixPrefix, StringComparison.Ordinal)).Select(n => $"'{n}'"))}.");

    /// <summary>PEFT's "cat" combination of the parts on a twin of the model, saved under the cache folder.</summary>
    private string Build(string mixName, IReadOnlyList<(string Adapter, double Weight)> parts, List<AdapterLease> leases)
    {
        var twin = model.ShareBaseParameters();
        var flags = twin.NamedParameters().Select(p => (p.Parameter, p.Parameter.Trainable)).ToList();
        try
        {
            var peft = new PeftModel(twin);
            var names = new List<string>();
            for (int i = 0; i < parts.Count; i++)
            {
                string part = string.Create(CultureInfo.InvariantCulture, $"part{i}");
                peft.LoadAdapter(leases[i].Adapter.SourceFolder, part);
                names.Add(part);
            }

            string mix = mixName[MixPrefix.Length..];
            peft.AddWeightedAdapter(names, [.. parts.Select(p => p.Weight)], mix, "cat");
            peft.SaveAdapter(cacheFolder, mix);
            return Lora.AdapterFolder(cacheFolder, mix);
        }
        finally
        {
            foreach (var (parameter, trainable) in flags)
            {
                parameter.Trainable = trainable;
            }
        }
    }
}
