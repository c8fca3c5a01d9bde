// One named adapter of a layer, of either kind: LoRA (LoraAdapter, DoRA when it carries a
// magnitude vector) or IA³ (Ia3Adapter). A layer keeps every kind in one list (AdapterSlots), so
// activation, merging and removal work by name whatever the kind.
namespace PeftKernels.Nn;

/// <summary>A named adapter of one layer: <see cref="LoraAdapter"/> or <see cref="Ia3Adapter"/>.</summary>
public abstract class LayerAdapter
{
    private protected LayerAdapter(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Name = name;
    }

    /// <summary>The adapter name ("default" unless given).</summary>
    public string Name { get; }

    /// <summary>The adapter's parameters.</summary>
    public abstract IEnumerable<Parameter> Parameters { get; }
}
