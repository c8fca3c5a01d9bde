// The adapter bookkeeping shared by every layer that can carry adapters (Linear: LoRA, DoRA
// and IA³; Embedding: LoRA): the adapters of every kind in the order added, the names forward
// uses (active), the names whose update is already folded into the weight (merged: forward
// must not add them again), and the disable switch. Forward runs the active adapters that are
// not merged. Per-row selection serves plain LoRA only (PEFT refuses DoRA and IA³ there too).
namespace PeftKernels.Nn;

internal sealed class AdapterSlots
{
    private readonly List<LayerAdapter> adapters = [];
    private readonly List<string> merged = [];
    private string[] active = ["default"];

    public IReadOnlyList<LayerAdapter> All => adapters;

    public IReadOnlyList<LoraAdapter> Lora => [.. adapters.OfType<LoraAdapter>()];

    public IReadOnlyList<Ia3Adapter> Ia3 => [.. adapters.OfType<Ia3Adapter>()];

    public IReadOnlyList<string> Active => active;

    public IReadOnlyList<string> Merged => merged;

    public bool Disabled { get; set; }

    public LayerAdapter? Find(string name) => adapters.FirstOrDefault(a => a.Name == name);

    public void Add(LayerAdapter adapter, int inFeatures, int outFeatures, string layer)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (Find(adapter.Name) != null)
        {
            throw new ArgumentException($"this {layer} already has an adapter named '{adapter.Name}'.", nameof(adapter));
        }

        if (adapter is LoraAdapter lora && (lora.A.Shape[1] != inFeatures || lora.B.Shape[0] != outFeatures))
        {
            throw new ArgumentException($"adapter '{adapter.Name}' has A [{string.Join(", ", lora.A.Shape)}] and B [{string.Join(", ", lora.B.Shape)}]; "
                + $"the {layer} needs A [r, {inFeatures}] and B [{outFeatures}, r].", nameof(adapter));
        }

        if (adapter is Ia3Adapter ia3 && ia3.Features != (ia3.IsFeedforward ? inFeatures : outFeatures))
        {
            throw new ArgumentException($"IA³ adapter '{adapter.Name}' has ia3_l [{string.Join(", ", ia3.L.Shape)}]; the {layer} needs "
                + (ia3.IsFeedforward ? $"[1, {inFeatures}] (input scaling)." : $"[{outFeatures}, 1] (output scaling)."), nameof(adapter));
        }

        adapters.Add(adapter);
    }

    public bool Remove(string name)
    {
        if (merged.Contains(name))
        {
            throw new InvalidOperationException($"adapter '{name}' is merged into the weight; unmerge it before removing it.");
        }

        return adapters.RemoveAll(a => a.Name == name) > 0;
    }

    public void SetActive(string[] names)
    {
        ArgumentNullException.ThrowIfNull(names);
        active = (string[])names.Clone();
    }

    public void MarkMerged(string name, bool isMerged)
    {
        if (Find(name) == null)
        {
            throw new ArgumentException($"the layer has no adapter named '{name}'.", nameof(name));
        }

        merged.Remove(name);
        if (isMerged)
        {
            merged.Add(name);
        }
    }

    /// <summary>The adapters forward applies: active, not merged; none when disabled.</summary>
    public List<LayerAdapter> Running() =>
        Disabled ? [] : [.. adapters.Where(a => active.Contains(a.Name) && !merged.Contains(a.Name))];

    /// <summary>
    /// Per-row selection: for each adapter named in <paramref name="names"/> (one per sequence of
    /// <paramref name="rows"/> / names.Count rows) that this layer has, the row indices that use it.
    /// </summary>
    public List<(LoraAdapter Adapter, int[] Rows)> Groups(IReadOnlyList<string> names, int rows, string layer)
    {
        if (names.Count == 0 || rows % names.Count != 0)
        {
            throw new ArgumentException($"{names.Count} per-row adapter names for {rows} rows of {layer}: the rows must split into one equal group per name.", nameof(names));
        }

        if (Disabled)
        {
            return [];
        }

        if (merged.Count > 0)
        {
            throw new InvalidOperationException($"per-row adapter selection with merged adapters ({string.Join(", ", merged)}) on {layer}: unmerge first.");
        }

        int perRow = rows / names.Count;
        var groups = new List<(LoraAdapter, int[])>();
        foreach (string name in names.Distinct())
        {
            if (Find(name) is not { } found)
            {
                continue;
            }

            if (found is not LoraAdapter { UseDora: false } adapter)
            {
                throw new NotSupportedException($"per-row adapter selection supports plain LoRA adapters only; '{name}' on {layer} is "
                    + $"{(found is Ia3Adapter ? "IA³" : "DoRA")} (PEFT refuses mixed batches with these too).");
            }

            var indices = new List<int>();
            for (int s = 0; s < names.Count; s++)
            {
                if (names[s] == name)
                {
                    indices.AddRange(Enumerable.Range(s * perRow, perRow));
                }
            }

            groups.Add((adapter, indices.ToArray()));
        }

        return groups;
    }
}
