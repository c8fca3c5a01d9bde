// A composition of bottleneck adapters, AdapterHub's composition blocks
// (docs/formats/bottleneck-adapters.md#composition):
//   Single(a)               one adapter
//   Stack(c1, c2, …)        applied in order at each site, each seeing the previous output
//   Parallel(c1, c2, …)     the batch replicated once per child; child i runs on replica i
//   Average(c1, …; w)       Σ_i w_i·(output of c_i), weights normalised to sum to 1
//   Fuse(c1, c2, …)         AdapterFusion over the children's outputs
// Nesting follows AdapterHub's rules (Fuse holds adapters or Stacks; Average holds adapters or
// Stacks; Parallel holds adapters, Stacks or Averages; Stack holds anything but a Stack).
namespace PeftKernels.Peft.Bottleneck;

/// <summary>The kind of a composition block.</summary>
public enum AdapterSetupKind
{
    /// <summary>One adapter.</summary>
    Single,

    /// <summary>Stack.</summary>
    Stack,

    /// <summary>Parallel.</summary>
    Parallel,

    /// <summary>Average.</summary>
    Average,

    /// <summary>Fuse.</summary>
    Fuse,
}

/// <summary>An adapter setup: one adapter or a composition block over children.</summary>
public sealed class AdapterSetup
{
    private AdapterSetup(AdapterSetupKind kind, string? name, IReadOnlyList<AdapterSetup> children, IReadOnlyList<double> weights)
    {
        Kind = kind;
        Name = name;
        Children = children;
        Weights = weights;
    }

    /// <summary>The block kind.</summary>
    public AdapterSetupKind Kind { get; }

    /// <summary>The adapter's name (Single only).</summary>
    public string? Name { get; }

    /// <summary>The children (empty for Single).</summary>
    public IReadOnlyList<AdapterSetup> Children { get; }

    /// <summary>Average's weights, normalised to sum to 1 (empty for the other kinds).</summary>
    public IReadOnlyList<double> Weights { get; }

    /// <summary>The number of batch replicas a Parallel block inside needs (1 without one).</summary>
    public int ParallelChannels => Kind == AdapterSetupKind.Parallel ? Children.Count : Children.Select(c => c.ParallelChannels).DefaultIfEmpty(1).Max();

    /// <summary>The fusion's name (Fuse only): the last adapter of each child, comma-joined, as AdapterHub names it.</summary>
    public string FusionName => string.Join(",", Children.Select(c => c.Last));

    /// <summary>The rightmost adapter.</summary>
    public string Last => Kind == AdapterSetupKind.Single ? Name! : Children[^1].Last;

    /// <summary>Every adapter named in the setup, in order, once.</summary>
    public IEnumerable<string> AdapterNames => Kind == AdapterSetupKind.Single ? [Name!] : Children.SelectMany(c => c.AdapterNames).Distinct();

    /// <summary>Every Fuse block in the setup.</summary>
    public IEnumerable<AdapterSetup> Fusions => (Kind == AdapterSetupKind.Fuse ? [this] : Enumerable.Empty<AdapterSetup>()).Concat(Children.SelectMany(c => c.Fusions));

    /// <summary>One adapter.</summary>
    public static AdapterSetup Single(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return new(AdapterSetupKind.Single, name, [], []);
    }

    /// <summary>Stack(children).</summary>
    public static AdapterSetup Stack(params AdapterSetup[] children) => Block(AdapterSetupKind.Stack, children, []);

    /// <summary>Parallel(children).</summary>
    public static AdapterSetup Parallel(params AdapterSetup[] children) => Block(AdapterSetupKind.Parallel, children, []);

    /// <summary>Fuse(children).</summary>
    public static AdapterSetup Fuse(params AdapterSetup[] children) => Block(AdapterSetupKind.Fuse, children, []);

    /// <summary>Average(children) with weights (normalised to sum to 1; null: equal weights).</summary>
    public static AdapterSetup Average(IReadOnlyList<double>? weights, params AdapterSetup[] children)
    {
        ArgumentNullException.ThrowIfNull(children);
        var w = weights ?? [.. children.Select(_ => 1.0)];
        if (w.Count != children.Length)
        {
            throw new ArgumentException($"Average has {children.Length} children but {w.Count} weights.", nameof(weights));
        }

        double sum = w.Sum();
        if (!(sum > 0) || w.Any(x => !double.IsFinite(x) || x < 0))
        {
            throw new ArgumentException($"Average's weights must be non-negative with a positive sum; got [{string.Join(", ", w)}].", nameof(weights));
        }

        return Block(AdapterSetupKind.Average, children, [.. w.Select(x => x / sum)]);
    }

    /// <summary>Names of single adapters given as strings become Single setups.</summary>
    public static implicit operator AdapterSetup(string name) => Single(name);

    /// <summary>The single adapter as named (implicit conversion's named alternative).</summary>
    public static AdapterSetup FromString(string name) => Single(name);

    /// <inheritdoc/>
    public override string ToString() => Kind == AdapterSetupKind.Single ? Name! : $"{Kind}[{string.Join(", ", Children)}]";

    private static AdapterSetup Block(AdapterSetupKind kind, AdapterSetup[] children, IReadOnlyList<double> weights)
    {
        ArgumentNullException.ThrowIfNull(children);
        if (children.Length == 0)
        {
            throw new ArgumentException($"a {kind} block needs at least one child.", nameof(children));
        }

        foreach (var child in children)
        {
            ArgumentNullException.ThrowIfNull(child);
            bool allowed = child.Kind == AdapterSetupKind.Single || kind switch
            {
                AdapterSetupKind.Stack => child.Kind != AdapterSetupKind.Stack,
                AdapterSetupKind.Fuse => child.Kind == AdapterSetupKind.Stack,
                AdapterSetupKind.Average => child.Kind == AdapterSetupKind.Stack,
                AdapterSetupKind.Parallel => child.Kind is AdapterSetupKind.Stack or AdapterSetupKind.Average,
                _ => false,
            };
            if (!allowed)
            {
                throw new ArgumentException($"cannot nest {child.Kind} inside {kind} (AdapterHub's nesting rules).", nameof(children));
            }
        }

        return new(kind, null, children, weights);
    }
}
