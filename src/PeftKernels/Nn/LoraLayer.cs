// The adapter bookkeeping shared by every layer that can carry LoRA adapters (Linear,
// Embedding): the adapters in the order added, the names forward uses (active), the names
// whose update is already folded into the weight (merged: forward must not add them again),
// and the disable switch. Forward runs the active adapters that are not merged.
namespace PeftKernels.Nn;

/// <summary>A layer that carries named LoRA adapters: what PEFT wrappers (PeftModel) work against.</summary>
public interface ILoraLayer
{
    /// <summary>The adapter input width: in_features (Linear) or num_embeddings (Embedding).</summary>
    int InFeatures { get; }

    /// <summary>The adapter output width: out_features (Linear) or embedding_dim (Embedding).</summary>
    int OutFeatures { get; }

    /// <summary>The base weight: [out, in] for Linear, [num_embeddings, embedding_dim] for Embedding.</summary>
    Parameter Weight { get; }

    /// <summary>The adapters, in the order they were added.</summary>
    IReadOnlyList<LoraAdapter> Adapters { get; }

    /// <summary>Names of the adapters forward uses (those present on this layer).</summary>
    IReadOnlyList<string> ActiveAdapters { get; }

    /// <summary>Names of the adapters whose update is merged into <see cref="Weight"/>, in merge order.</summary>
    IReadOnlyList<string> MergedAdapters { get; }

    /// <summary>When true, forward ignores every adapter (PEFT's disable_adapter).</summary>
    bool AdaptersDisabled { get; set; }

    /// <summary>Adds an adapter; names must be unique on the layer and the shapes must fit.</summary>
    void AddAdapter(LoraAdapter adapter);

    /// <summary>Removes the adapter of that name; false when absent.</summary>
    /// <exception cref="InvalidOperationException">The adapter is merged.</exception>
    bool RemoveAdapter(string name);

    /// <summary>Chooses the adapters used in forward (names absent from this layer are skipped).</summary>
    void SetActiveAdapters(params string[] names);

    /// <summary>Replaces the weight (same shape).</summary>
    void ReplaceWeight(Parameter weight);

    /// <summary>Records that an adapter's update is (or no longer is) part of <see cref="Weight"/>; forward skips merged adapters.</summary>
    void MarkMerged(string name, bool merged);
}

internal sealed class AdapterSlots
{
    private readonly List<LoraAdapter> adapters = [];
    private readonly List<string> merged = [];
    private string[] active = ["default"];

    public IReadOnlyList<LoraAdapter> All => adapters;

    public IReadOnlyList<string> Active => active;

    public IReadOnlyList<string> Merged => merged;

    public bool Disabled { get; set; }

    public LoraAdapter? Find(string name) => adapters.FirstOrDefault(a => a.Name == name);

    public void Add(LoraAdapter adapter, int inFeatures, int outFeatures, string layer)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (Find(adapter.Name) != null)
        {
            throw new ArgumentException($"this {layer} already has an adapter named '{adapter.Name}'.", nameof(adapter));
        }

        if (adapter.A.Shape[1] != inFeatures || adapter.B.Shape[0] != outFeatures)
        {
            throw new ArgumentException($"adapter '{adapter.Name}' has A [{string.Join(", ", adapter.A.Shape)}] and B [{string.Join(", ", adapter.B.Shape)}]; "
                + $"the {layer} needs A [r, {inFeatures}] and B [{outFeatures}, r].", nameof(adapter));
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

    /// <summary>The adapters forward adds: active, not merged; none when disabled.</summary>
    public List<LoraAdapter> Running() =>
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
            if (Find(name) is not { } adapter)
            {
                continue;
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
