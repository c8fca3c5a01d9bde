// The per-version state of the engine adapters that are more than projection modules (bottleneck
// sites, MixLoRA mixtures, X-LoRA classifiers): one weak table per kind from the EngineAdapter to its
// state, so the state lives exactly as long as the adapter version, and one process-wide flag per kind,
// "any loaded yet", that lets the batched forward skip the kind's hook on every step until one is.
using System.Runtime.CompilerServices;

namespace PeftKernels.Engine;

/// <summary>The state of type <typeparamref name="T"/> attached to engine adapters of one kind.</summary>
internal static class EngineAdapterState<T>
    where T : class
{
    private static readonly ConditionalWeakTable<EngineAdapter, T> Table = [];
    private static int loads;

    /// <summary>True once any adapter of this kind was loaded in this process (the forward's hook is skipped until then).</summary>
    public static bool AnyLoaded => Volatile.Read(ref loads) > 0;

    /// <summary>Turns the forward's hook on as if such an adapter had been loaded (tests of the steady state with every hook live).</summary>
    public static void ArmHooks() => Interlocked.Increment(ref loads);

    /// <summary>Attaches <paramref name="state"/> to <paramref name="adapter"/> and turns the kind's hook on.</summary>
    public static void Register(EngineAdapter adapter, T state)
    {
        Table.AddOrUpdate(adapter, state);
        Interlocked.Increment(ref loads);
    }

    /// <summary>The state of <paramref name="adapter"/> when it is of <paramref name="kind"/>, else null.</summary>
    public static T? Of(EngineAdapter? adapter, AdapterKind kind) =>
        adapter != null && adapter.Kind == kind && Table.TryGetValue(adapter, out var state) ? state : null;
}
