// The small types around AdapterRegistry: its options, the lease a sequence holds on one adapter
// version, the per-adapter counters and the rows of a snapshot.
namespace PeftKernels.Engine;

/// <summary>Limits and confinement of an <see cref="AdapterRegistry"/>.</summary>
public sealed record AdapterRegistryOptions
{
    /// <summary>Most bytes of adapter factors resident at once (every resident version counts, leased old ones too); 0 = unlimited.</summary>
    public long MemoryBudgetBytes { get; init; }

    /// <summary>Most adapter versions resident at once; 0 = unlimited.</summary>
    public int MaxLoaded { get; init; }

    /// <summary>When set, adapter folders must lie inside this directory (after resolving ".." and symbolic links); relative folders are taken relative to it.</summary>
    public string? AdaptersDir { get; init; }
}

/// <summary>
/// A sequence's hold on one adapter version: the version stays resident (not evicted, not freed by unload or replace) until
/// the lease is disposed. Dispose is idempotent and thread-safe.
/// </summary>
public sealed class AdapterLease : IDisposable
{
    private readonly AdapterRegistry owner;
    private int disposed;

    internal AdapterLease(AdapterRegistry owner, object slot, EngineAdapter adapter)
    {
        this.owner = owner;
        Slot = slot;
        Adapter = adapter;
    }

    /// <summary>The adapter version held.</summary>
    public EngineAdapter Adapter { get; }

    /// <summary>The adapter's name.</summary>
    public string Name => Adapter.Name;

    /// <summary>The version held.</summary>
    public int Version => Adapter.Version;

    /// <summary>True once disposed.</summary>
    public bool IsReleased => Volatile.Read(ref disposed) != 0;

    internal object Slot { get; }

    /// <summary>Releases the hold (the version may then be evicted, or freed if it was replaced or unloaded).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 0)
        {
            owner.Release(this);
        }
    }
}

/// <summary>Counters of one adapter name (kept across evictions and replaces; forgotten by unload).</summary>
/// <param name="Name">The adapter name.</param>
/// <param name="Loads">Versions loaded (on demand, by Load, and after evictions).</param>
/// <param name="Evictions">Times its resident version was evicted to make room.</param>
/// <param name="Acquisitions">Leases handed out.</param>
/// <param name="Tokens">Tokens recorded with <see cref="AdapterRegistry.RecordTokens"/>.</param>
/// <param name="LastUsed">When it was last acquired, released or credited tokens (UTC), or null if never.</param>
public sealed record AdapterStats(string Name, long Loads, long Evictions, long Acquisitions, long Tokens, DateTimeOffset? LastUsed);

/// <summary>One resident adapter version in <see cref="AdapterRegistry.Snapshot"/>.</summary>
/// <param name="Name">The adapter name.</param>
/// <param name="Version">The version.</param>
/// <param name="Kind">LoRA, DoRA or IA³.</param>
/// <param name="Bytes">Bytes of its factors.</param>
/// <param name="Pinned">Whether its name is pinned (never evicted).</param>
/// <param name="Leases">Leases holding it now.</param>
/// <param name="Current">True for the version new acquisitions get; false for a replaced or unloaded version kept alive by leases.</param>
/// <param name="Folder">The folder it was read from.</param>
/// <param name="Stats">The counters of its name.</param>
public sealed record ResidentAdapter(string Name, int Version, AdapterKind Kind, long Bytes, bool Pinned, int Leases, bool Current, string Folder, AdapterStats Stats);
