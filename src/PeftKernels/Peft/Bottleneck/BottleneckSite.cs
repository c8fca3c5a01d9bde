// One residual site of one decoder layer with its bottleneck adapters and fusion layers, and the
// evaluation of an adapter setup there (docs/formats/bottleneck-adapters.md#composition). With x the
// sublayer's input and a its output, the site returns x + a + Δ, where Δ is the setup's contribution:
//   adapter A:   Δ = A(z),  z = x (parallel adapter), c + x (original_ln_before) or c (sequential);
//                c is the running sublayer output (a, plus the contributions before it in a Stack)
//   Stack:       children in order, each seeing c + the earlier children's Δ; Δ = their sum
//   Average:     Δ = Σ_i w_i·Δ_i, each child from the same c (weights sum to 1)
//   Fuse:        Δ = Σ_i p_i·V·Δ_i, p from the fusion layer's attention (AdapterFusion.cs)
//   Parallel:    the rows split into one block per child (the batch was replicated); child i on block i
// Per-row switch: with ForwardContext.AdapterNames each sequence runs the setup its name selects
// (rows gathered, the setup run, its Δ scattered back); names of no bottleneck setup (LoRA adapters,
// "__base__") contribute nothing there. Without adapters the site is exactly x + a.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Ops;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>A decoder layer's attention or output site holding bottleneck adapters and fusion layers.</summary>
public sealed class BottleneckSite : ResidualSite
{
    private readonly BottleneckAdapters owner;
    private readonly NamedModule adapters = new();
    private readonly NamedModule fusions = new();

    internal BottleneckSite(BottleneckAdapters owner, int layer, bool attention)
    {
        this.owner = owner;
        Layer = layer;
        IsAttention = attention;
    }

    /// <summary>The set this site belongs to.</summary>
    public BottleneckAdapters Owner => owner;

    /// <summary>The decoder layer's index.</summary>
    public int Layer { get; }

    /// <summary>True for the site after attention ("attention_adapters"), false after the MLP ("output_adapters").</summary>
    public bool IsAttention { get; }

    /// <summary>The AdapterHub key prefix of this site, e.g. "model.layers.3.output_adapters.".</summary>
    public string KeyPrefix => $"model.layers.{Layer}.{(IsAttention ? "attention_adapters" : "output_adapters")}.";

    /// <summary>The adapter of that name at this site, or null.</summary>
    public BottleneckLayer? Adapter(string name) => adapters.Find(name) as BottleneckLayer;

    /// <summary>The fusion layer of that name ("a,b") at this site, or null.</summary>
    public AdapterFusionLayer? Fusion(string name) => fusions.Find(name) as AdapterFusionLayer;

    /// <summary>The fusion layers at this site.</summary>
    public IEnumerable<AdapterFusionLayer> FusionLayers => fusions.Items.Select(i => (AdapterFusionLayer)i.Module);

    /// <inheritdoc/>
    public override Tensor Apply(Tensor x, Tensor output, int batch, ForwardContext context)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(context);
        var y = Functional.Add(x, output);
        var delta = Delta(x, output, batch, context);
        return delta == null ? y : Functional.Add(y, delta);
    }

    /// <summary>The contribution Δ of <paramref name="setup"/> for rows with sublayer input <paramref name="x"/> and output <paramref name="a"/> (null: none here).</summary>
    internal Tensor? Contribution(AdapterSetup setup, Tensor x, Tensor a, ForwardContext context) => Evaluate(setup, x, a, context);

    internal void AddAdapter(BottleneckLayer layer) => adapters.Child(layer.Name, layer);

    internal void AddFusion(string name, AdapterFusionLayer layer) => fusions.Child(name, layer);

    internal void Remove(string name)
    {
        adapters.Remove(name);
        fusions.Remove(name);
    }

    internal IEnumerable<(string Key, Parameter Parameter)> AdapterParameters(string name) =>
        Adapter(name)?.NamedParameters($"{KeyPrefix}adapters.{name}.") ?? [];

    internal IEnumerable<(string Key, Parameter Parameter)> FusionParameters(string name) =>
        Fusion(name)?.NamedParameters($"{KeyPrefix}adapter_fusion_layer.{name}.") ?? [];

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, Module Module)> Children() => [("adapters", adapters), ("adapter_fusion_layer", fusions)];

    private Tensor? Delta(Tensor x, Tensor a, int batch, ForwardContext context)
    {
        var names = context.AdapterNames;
        if (names == null)
        {
            return owner.ActiveSetup is { } active ? Evaluate(active, x, a, context) : null;
        }

        if (names.Count != batch)
        {
            throw new ArgumentException($"ForwardContext.AdapterNames has {names.Count} names for a batch of {batch} sequences.", nameof(context));
        }

        int t = x.Rows / batch;
        var groups = new Dictionary<AdapterSetup, List<int>>(ReferenceEqualityComparer.Instance);
        for (int b = 0; b < batch; b++)
        {
            if (owner.SetupFor(names[b]) is { } setup)
            {
                if (!groups.TryGetValue(setup, out var rows))
                {
                    groups[setup] = rows = [];
                }

                rows.AddRange(Enumerable.Range(b * t, t));
            }
        }

        if (groups.Count == 1 && groups.First().Value.Count == x.Rows)
        {
            return Evaluate(groups.First().Key, x, a, context);
        }

        Tensor? total = null;
        foreach (var (setup, rowList) in groups)
        {
            int[] rows = [.. rowList];
            var d = Evaluate(setup, Functional.GatherRows(x, rows), Functional.GatherRows(a, rows), context);
            if (d != null)
            {
                total = Sum(total, Functional.ScatterRows(d, rows, x.Rows));
            }
        }

        return total;
    }

    private Tensor? Evaluate(AdapterSetup setup, Tensor x, Tensor c, ForwardContext context)
    {
        switch (setup.Kind)
        {
            case AdapterSetupKind.Single:
                var adapter = Adapter(setup.Name!);
                return adapter?.Forward(Input(adapter.Config, x, c), context);
            case AdapterSetupKind.Stack:
                Tensor? total = null;
                var current = c;
                foreach (var child in setup.Children)
                {
                    if (Evaluate(child, x, current, context) is { } d)
                    {
                        total = Sum(total, d);
                        current = Functional.Add(current, d);
                    }
                }

                return total;
            case AdapterSetupKind.Average:
                Tensor? mean = null;
                for (int i = 0; i < setup.Children.Count; i++)
                {
                    if (Evaluate(setup.Children[i], x, c, context) is { } d)
                    {
                        mean = Sum(mean, Functional.Scale(d, new Tensor([(float)setup.Weights[i]], 1)));
                    }
                }

                return mean;
            case AdapterSetupKind.Fuse:
                return Fuse(setup, x, c, context);
            default:
                return Parallel(setup, x, c, context);
        }
    }

    private Tensor? Fuse(AdapterSetup setup, Tensor x, Tensor c, ForwardContext context)
    {
        var outputs = setup.Children.Select(child => Evaluate(child, x, c, context)).OfType<Tensor>().ToList();
        if (outputs.Count == 0)
        {
            return null;
        }

        var fusion = Fusion(setup.FusionName)
            ?? throw new InvalidOperationException($"layer {Layer}'s {(IsAttention ? "attention" : "output")} site has no fusion layer '{setup.FusionName}'; add it with BottleneckAdapters.AddFusion.");
        var query = fusion.Config.QueryBeforeLn ? c : Input(owner.ConfigOf(setup.Last), x, c);
        return fusion.Forward(query, outputs, context);
    }

    private Tensor? Parallel(AdapterSetup setup, Tensor x, Tensor c, ForwardContext context)
    {
        int channels = setup.Children.Count, n = x.Rows;
        if (!owner.ParallelReplicated || n % channels != 0)
        {
            throw new InvalidOperationException($"{setup} runs each child on its own copy of the batch: call BottleneckAdapters.ForwardParallel, which replicates the batch {channels} times.");
        }

        int block = n / channels;
        Tensor? total = null;
        for (int i = 0; i < channels; i++)
        {
            int[] rows = [.. Enumerable.Range(i * block, block)];
            if (Evaluate(setup.Children[i], Functional.GatherRows(x, rows), Functional.GatherRows(c, rows), context) is { } d)
            {
                total = Sum(total, Functional.ScatterRows(d, rows, n));
            }
        }

        return total;
    }

    private static Tensor Input(BottleneckConfig config, Tensor x, Tensor c) =>
        config.IsParallel ? x : config.OriginalLnBefore ? Functional.Add(c, x) : c;

    private static Tensor Sum(Tensor? total, Tensor d) => total == null ? d : Functional.Add(total, d);
}
