// The engine's adapter registry: PEFT adapter folders known by name and loaded on demand
// (EngineAdapterLoader), under a memory budget (bytes of factors) and a count limit, with LRU eviction.
// States of one loaded version ("slot"):
//   current   what new acquisitions of its name get; evictable when unpinned and no lease holds it
//   retired   replaced (Load of a resident name) or unloaded while leases held it: still resident, still
//             counted against the budget, freed when its last lease is released; never handed out again
// Acquire loads a missing name (evicting least recently used, unpinned, unleased current versions until the
// new one fits, or failing without evicting anything when it cannot fit); pinned names are never evicted.
// Every resident version counts against the limits, retired ones too (the engine still reads them).
// Thread-safe: one lock guards the state (short sections only); loads run outside it, one at a time (a
// second lock), so acquiring and releasing resident adapters never waits for a load from disk.
// Changed counts changes of the resident set (load, evict, free, replace, unload) so the engine rebuilds
// its packed per-layer tables only when it moved.
using PeftKernels.Models;

namespace PeftKernels.Engine;

/// <summary>
/// Named PEFT adapters for the engine: loaded on demand, hot loaded, replaced and unloaded while sequences run (a sequence keeps
/// the version it leased), held under a memory budget with LRU eviction (pinned adapters stay), with per-adapter counters.
/// </summary>
public sealed class AdapterRegistry
{
    private readonly object gate = new();
    private readonly object loadGate = new();
    private readonly LlamaForCausalLM model;
    private readonly Dictionary<string, Entry> entries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> lastVersion = new(StringComparer.Ordinal);
    private readonly List<Slot> resident = [];
    private long changed;
    private long clock;

    /// <summary>A registry serving adapters over <paramref name="model"/> (the base it reads for DoRA norms; its layers are never modified).</summary>
    public AdapterRegistry(LlamaForCausalLM model, AdapterRegistryOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new AdapterRegistryOptions();
        ArgumentOutOfRangeException.ThrowIfNegative(options.MemoryBudgetBytes, nameof(options.MemoryBudgetBytes));
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxLoaded, nameof(options.MaxLoaded));
        if (options.AdaptersDir != null && !Directory.Exists(options.AdaptersDir))
        {
            throw new DirectoryNotFoundException($"the adapters directory '{options.AdaptersDir}' does not exist.");
        }

        this.model = model;
        Options = options;
    }

    /// <summary>The limits and confinement in force.</summary>
    public AdapterRegistryOptions Options { get; }

    /// <summary>Increments whenever the resident set changes (a version loaded, evicted, freed, replaced or unloaded).</summary>
    public long Changed => Interlocked.Read(ref changed);

    /// <summary>Bytes of all resident versions.</summary>
    public long ResidentBytes
    {
        get
        {
            lock (gate)
            {
                return resident.Sum(s => s.Adapter.Bytes);
            }
        }
    }

    /// <summary>The known adapter names, sorted.</summary>
    public IReadOnlyList<string> Names
    {
        get
        {
            lock (gate)
            {
                return [.. entries.Keys.Order(StringComparer.Ordinal)];
            }
        }
    }

    /// <summary>Makes <paramref name="name"/> known as <paramref name="folder"/>, loaded on first <see cref="Acquire"/>; a known name gets the new folder and pin state (a resident version stays until replaced).</summary>
    /// <exception cref="UnauthorizedAccessException">The folder resolves outside <see cref="AdapterRegistryOptions.AdaptersDir"/>.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    public void Register(string name, string folder, bool pinned = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        string real = AdapterPaths.Resolve(folder, Options.AdaptersDir);
        lock (gate)
        {
            if (entries.TryGetValue(name, out var entry))
            {
                entry.Folder = real;
                entry.Pinned = pinned;
            }
            else
            {
                entries[name] = new Entry(name, real, pinned);
            }
        }
    }

    /// <summary>
    /// Loads <paramref name="folder"/> as <paramref name="name"/> now. When the name is resident this is a replace: new acquisitions get
    /// the new version, leases on the old one keep it until released. Returns the new version.
    /// </summary>
    /// <exception cref="InvalidOperationException">It does not fit the memory budget or count even after evicting every evictable version (nothing is evicted then).</exception>
    /// <exception cref="NotSupportedException">The adapter uses what the engine cannot serve (module named).</exception>
    public EngineAdapter Load(string name, string folder, bool pinned = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        string real = AdapterPaths.Resolve(folder, Options.AdaptersDir);
        lock (loadGate)
        {
            int version;
            lock (gate)
            {
                version = NextVersion(name);
            }

            var adapter = EngineAdapterLoader.Load(model, name, version, AdapterPaths.Resolve(real, Options.AdaptersDir));
            lock (gate)
            {
                if (!entries.TryGetValue(name, out var entry))
                {
                    entry = new Entry(name, real, pinned);
                    entries[name] = entry;
                }

                entry.Folder = real;
                entry.Pinned = pinned;
                Install(entry, adapter);
                return adapter;
            }
        }
    }

    /// <summary>Forgets <paramref name="name"/>; its resident version is freed now, or when the last lease on it is released. False when unknown.</summary>
    public bool Unload(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (gate)
        {
            if (!entries.Remove(name, out var entry))
            {
                return false;
            }

            if (entry.Current is { } slot)
            {
                Retire(slot);
                entry.Current = null;
                Interlocked.Increment(ref changed);
            }

            return true;
        }
    }

    /// <summary>A lease on the current version of <paramref name="name"/>, loading it first when it is not resident (evicting LRU versions to make room).</summary>
    /// <exception cref="KeyNotFoundException">The name is not registered (the known names are listed).</exception>
    /// <exception cref="InvalidOperationException">It does not fit the memory budget or count (the budget, the need and what holds memory are named).</exception>
    public AdapterLease Acquire(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (gate)
        {
            if (Find(name).Current is { } slot)
            {
                return Lease(slot);
            }
        }

        lock (loadGate)
        {
            Entry entry;
            int version;
            lock (gate)
            {
                entry = Find(name);
                if (entry.Current is { } slot)
                {
                    return Lease(slot);
                }

                version = NextVersion(name);
            }

            var adapter = EngineAdapterLoader.Load(model, name, version, AdapterPaths.Resolve(entry.Folder, Options.AdaptersDir));
            lock (gate)
            {
                if (!entries.TryGetValue(name, out var now) || !ReferenceEquals(now, entry))
                {
                    throw new InvalidOperationException($"adapter '{name}' was unloaded while it was loading.");
                }

                return Lease(Install(entry, adapter));
            }
        }
    }

    /// <summary>Credits <paramref name="tokens"/> generated or prefilled tokens to the lease's adapter (lock-free).</summary>
    public void RecordTokens(AdapterLease lease, long tokens)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        var counters = ((Slot)lease.Slot).Entry.Counters;
        Interlocked.Add(ref counters.Tokens, tokens);
        Interlocked.Exchange(ref counters.LastUsedTicks, DateTimeOffset.UtcNow.UtcTicks);
    }

    /// <summary>The counters of <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">The name is not registered.</exception>
    public AdapterStats Stats(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (gate)
        {
            return Find(name).Counters.ToStats(name);
        }
    }

    /// <summary>The resident versions (current and retired), by name then version, with pin state, bytes, leases and counters.</summary>
    public IReadOnlyList<ResidentAdapter> Snapshot()
    {
        lock (gate)
        {
            return [.. resident.OrderBy(s => s.Adapter.Name, StringComparer.Ordinal).ThenBy(s => s.Adapter.Version).Select(s => new ResidentAdapter(
                s.Adapter.Name, s.Adapter.Version, s.Adapter.Kind, s.Adapter.Bytes, s.Entry.Pinned, s.Leases, s.IsCurrent, s.Adapter.SourceFolder,
                s.Entry.Counters.ToStats(s.Adapter.Name)))];
        }
    }

    /// <summary>The resident versions themselves (current and retired), in a stable order, and <see cref="Changed"/> at that moment: what the engine's adapter table packs.</summary>
    internal (IReadOnlyList<EngineAdapter> Adapters, long Changed) ResidentAdapters()
    {
        lock (gate)
        {
            return ([.. resident.OrderBy(s => s.Adapter.Name, StringComparer.Ordinal).ThenBy(s => s.Adapter.Version).Select(s => s.Adapter)], Interlocked.Read(ref changed));
        }
    }

    internal void Release(AdapterLease lease)
    {
        lock (gate)
        {
            var slot = (Slot)lease.Slot;
            slot.Leases--;
            Touch(slot);
            if (!slot.IsCurrent && slot.Leases == 0)
            {
                resident.Remove(slot);
                Interlocked.Increment(ref changed);
            }
        }
    }

    private Entry Find(string name) => entries.TryGetValue(name, out var entry) ? entry
        : throw new KeyNotFoundException($"no adapter named '{name}'; "
            + (entries.Count == 0 ? "none is registered." : $"known adapters: [{string.Join(", ", entries.Keys.Order(StringComparer.Ordinal))}]."));

    private int NextVersion(string name)
    {
        int v = lastVersion.GetValueOrDefault(name) + 1;
        lastVersion[name] = v;
        return v;
    }

    private AdapterLease Lease(Slot slot)
    {
        slot.Leases++;
        slot.Entry.Counters.Acquisitions++;
        Touch(slot);
        return new AdapterLease(this, slot, slot.Adapter);
    }

    private void Touch(Slot slot)
    {
        slot.LastUse = ++clock;
        Interlocked.Exchange(ref slot.Entry.Counters.LastUsedTicks, DateTimeOffset.UtcNow.UtcTicks);
    }

    /// <summary>Makes <paramref name="adapter"/> the current version of <paramref name="entry"/> (evicting to make room first), retiring the old one.</summary>
    private Slot Install(Entry entry, EngineAdapter adapter)
    {
        var old = entry.Current;
        bool oldFreed = old != null && old.Leases == 0;
        long used = resident.Sum(s => s.Adapter.Bytes) - (oldFreed ? old!.Adapter.Bytes : 0);
        int count = resident.Count - (oldFreed ? 1 : 0);
        MakeRoom(adapter, used, count, entry);
        if (old != null)
        {
            Retire(old);
        }

        var slot = new Slot(adapter, entry) { IsCurrent = true, LastUse = ++clock };
        entry.Current = slot;
        resident.Add(slot);
        entry.Counters.Loads++;
        Interlocked.Increment(ref changed);
        return slot;
    }

    private void Retire(Slot slot)
    {
        slot.IsCurrent = false;
        if (slot.Leases == 0)
        {
            resident.Remove(slot);
        }
    }

    /// <summary>Evicts least recently used, unpinned, unleased current versions (not <paramref name="owner"/>'s) until <paramref name="adapter"/> fits; throws, evicting nothing, when it cannot.</summary>
    private void MakeRoom(EngineAdapter adapter, long used, int count, Entry owner)
    {
        long budget = Options.MemoryBudgetBytes;
        int max = Options.MaxLoaded;
        bool Fits(long u, int c) => (budget == 0 || u + adapter.Bytes <= budget) && (max == 0 || c + 1 <= max);
        var victims = new List<Slot>();
        foreach (var s in resident.Where(s => s.IsCurrent && s.Leases == 0 && !s.Entry.Pinned && s.Entry != owner).OrderBy(s => s.LastUse))
        {
            if (Fits(used, count))
            {
                break;
            }

            victims.Add(s);
            used -= s.Adapter.Bytes;
            count--;
        }

        if (!Fits(used, count))
        {
            var holders = resident.Where(s => !victims.Contains(s) && (s.Entry != owner || s.Leases > 0)).Select(s =>
                $"'{s.Adapter.Name}' v{s.Adapter.Version} {s.Adapter.Bytes} bytes ({(s.Entry.Pinned && s.IsCurrent ? "pinned" : s.Leases > 0 ? $"{s.Leases} lease(s)" : "resident")})");
            throw new InvalidOperationException($"adapter '{adapter.Name}' needs {adapter.Bytes} bytes but does not fit: the memory budget is "
                + (budget == 0 ? "unlimited" : $"{budget} bytes") + (max == 0 ? "" : $" and at most {max} adapters may be loaded")
                + $"; {used} bytes in {count} version(s) cannot be evicted: [{string.Join(", ", holders)}].");
        }

        foreach (var v in victims)
        {
            v.IsCurrent = false;
            v.Entry.Current = null;
            v.Entry.Counters.Evictions++;
            resident.Remove(v);
        }
    }

    private sealed class Entry(string name, string folder, bool pinned)
    {
        public string Name { get; } = name;

        public string Folder { get; set; } = folder;

        public bool Pinned { get; set; } = pinned;

        public Slot? Current { get; set; }

        public Counters Counters { get; } = new();
    }

    private sealed class Slot(EngineAdapter adapter, Entry entry)
    {
        public EngineAdapter Adapter { get; } = adapter;

        public Entry Entry { get; } = entry;

        public int Leases { get; set; }

        public bool IsCurrent { get; set; }

        public long LastUse { get; set; }
    }

    private sealed class Counters
    {
        public long Loads;
        public long Evictions;
        public long Acquisitions;
        public long Tokens;
        public long LastUsedTicks;

        public AdapterStats ToStats(string name)
        {
            long ticks = Interlocked.Read(ref LastUsedTicks);
            return new AdapterStats(name, Loads, Evictions, Acquisitions, Interlocked.Read(ref Tokens), ticks == 0 ? null : new DateTimeOffset(ticks, TimeSpan.Zero));
        }
    }
}
