// modules_to_save (PEFT's ModulesToSaveWrapper): per adapter a full trainable fp32 copy of a
// module's weight (and bias), taken from the original module. The layer computes with the copy
// of the first active adapter that has one, else with the original; disabling adapters puts
// the originals back. The copies are saved as base_model.model.<module>.weight (.bias).
using PeftKernels.Nn;

namespace PeftKernels.Peft;

internal sealed class ModulesToSave
{
    private readonly Dictionary<string, Entry> entries = new(StringComparer.Ordinal);

    /// <summary>Every parameter held here (originals and copies), for parameter counts.</summary>
    public IEnumerable<Parameter> Parameters =>
        entries.Values.SelectMany(e => e.Copies.Values.SelectMany(c => new[] { c.Weight, c.Bias }).Append(e.Weight).Append(e.Bias)).OfType<Parameter>();

    /// <summary>The modules that have a copy for <paramref name="adapter"/>.</summary>
    public IEnumerable<(string Module, Parameter Weight, Parameter? Bias)> CopiesOf(string adapter) =>
        entries.Where(e => e.Value.Copies.ContainsKey(adapter)).Select(e => (e.Key, e.Value.Copies[adapter].Weight, e.Value.Copies[adapter].Bias));

    public bool Has(string adapter) => entries.Values.Any(e => e.Copies.ContainsKey(adapter));

    /// <summary>Creates <paramref name="adapter"/>'s copy of a module from its original weights (or from given values).</summary>
    public (Parameter Weight, Parameter? Bias) Add(string adapter, string module, ILoraLayer layer, float[]? weight, float[]? bias, bool trainable)
    {
        if (!entries.TryGetValue(module, out var entry))
        {
            entry = new Entry(layer, layer.Weight, (layer as Linear)?.Bias);
            entries.Add(module, entry);
        }

        var w = new Parameter(weight ?? entry.Weight.ToFloat32(), [.. entry.Weight.Shape], trainable);
        var b = entry.Bias == null ? null : new Parameter(bias ?? entry.Bias.ToFloat32(), [.. entry.Bias.Shape], trainable);
        entry.Copies[adapter] = (w, b);
        return (w, b);
    }

    public void Remove(string adapter)
    {
        foreach (var (module, entry) in entries.ToList())
        {
            entry.Copies.Remove(adapter);
            if (entry.Copies.Count == 0)
            {
                Put(entry, entry.Weight, entry.Bias);
                entries.Remove(module);
            }
        }
    }

    /// <summary>Throws when two of the active adapters have a copy of the same module (only one can be used).</summary>
    public void CheckActive(IReadOnlyList<string> active)
    {
        foreach (var (module, entry) in entries)
        {
            var owners = active.Where(entry.Copies.ContainsKey).ToList();
            if (owners.Count > 1)
            {
                throw new InvalidOperationException($"adapters {string.Join(" and ", owners.Select(o => $"'{o}'"))} both have a modules_to_save copy of '{module}'; only one of them can be active.");
            }
        }
    }

    /// <summary>Puts each module's copy of the first active adapter in place (originals when disabled or none).</summary>
    public void Apply(IReadOnlyList<string> active, bool disabled)
    {
        foreach (var entry in entries.Values)
        {
            string? owner = disabled ? null : active.FirstOrDefault(entry.Copies.ContainsKey);
            if (owner == null)
            {
                Put(entry, entry.Weight, entry.Bias);
            }
            else
            {
                Put(entry, entry.Copies[owner].Weight, entry.Copies[owner].Bias);
            }
        }
    }

    /// <summary>Keeps whatever is in place as the module's weights (merge-and-unload), frozen, and forgets everything.</summary>
    public void Commit()
    {
        foreach (var entry in entries.Values)
        {
            entry.Layer.Weight.Trainable = false;
            if (entry.Layer is Linear { Bias: { } bias })
            {
                bias.Trainable = false;
            }
        }

        entries.Clear();
    }

    /// <summary>Puts every original back and forgets the copies.</summary>
    public void Restore()
    {
        foreach (var entry in entries.Values)
        {
            Put(entry, entry.Weight, entry.Bias);
        }

        entries.Clear();
    }

    private static void Put(Entry entry, Parameter weight, Parameter? bias)
    {
        entry.Layer.ReplaceWeight(weight);
        if (bias != null && entry.Layer is Linear linear)
        {
            linear.ReplaceBias(bias);
        }
    }

    private sealed record Entry(ILoraLayer Layer, Parameter Weight, Parameter? Bias)
    {
        public Dictionary<string, (Parameter Weight, Parameter? Bias)> Copies { get; } = new(StringComparer.Ordinal);
    }
}
