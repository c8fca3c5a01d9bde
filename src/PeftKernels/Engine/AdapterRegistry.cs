// TEMPORARY stand-in (replaced by the registry branch).
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Engine;

public sealed class AdapterRegistryOptions
{
    public long MemoryBudgetBytes { get; init; }
}

public sealed class EngineAdapter
{
    internal ProjectionAdapter?[,] Projections { get; init; } = new ProjectionAdapter?[0, 0];
}

public sealed class AdapterLease : IDisposable
{
    internal AdapterLease(EngineAdapter a) => Adapter = a;

    public EngineAdapter Adapter { get; }

    public void Dispose()
    {
    }
}

public sealed class AdapterRegistry
{
    private readonly LlamaForCausalLM model;
    private readonly Dictionary<string, EngineAdapter> loaded = [];

    public AdapterRegistry(LlamaForCausalLM model, AdapterRegistryOptions options)
    {
        this.model = model;
        _ = options;
    }

    public long Version { get; private set; }

    public IEnumerable<string> Names => loaded.Keys;

    public bool IsKnown(string name) => loaded.ContainsKey(name);

    public void Load(string name, string folder)
    {
        var peft = new PeftModel(model);
        peft.LoadAdapter(folder, "__engine_" + name);
        var layers = model.Model.Layers;
        var p = new ProjectionAdapter?[layers.Count, Engine.Projections.Count];
        for (int l = 0; l < layers.Count; l++)
        {
            for (int j = 0; j < Engine.Projections.Count; j++)
            {
                p[l, j] = ProjectionAdapter.FromLinear(Engine.Projections.Of(layers[l], j), "__engine_" + name, $"layer {l}");
            }
        }

        peft.DeleteAdapter("__engine_" + name);
        loaded[name] = new EngineAdapter { Projections = p };
        Version++;
    }

    public AdapterLease Acquire(string name) => new(loaded[name]);

    public void RecordTokens(IDisposable? lease, int n)
    {
        _ = lease;
        _ = n;
    }

    public IReadOnlyList<EngineAdapter> Resident() => [.. loaded.Values];
}
