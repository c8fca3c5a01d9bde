// Canary aliases: a model name that clients use (`support`) split by weight between adapter versions
// (`support-v1` 90, `support-v2` 10). Each request resolves the alias to one version:
//   u = first 8 bytes of SHA-256(alias ‖ 0x00 ‖ user) as an unsigned integer / 2^64   (u in [0, 1))
//   version = the first v_i with u < (w_1 + … + w_i) / (w_1 + … + w_n)
// so the same user always gets the same version while the weights are unchanged (sticky), users spread
// over the versions in proportion to the weights, and raising the weight of the last-listed version only
// moves users onto it (those already on it stay). A request without a user draws u at random.
// The alias map is an immutable snapshot swapped atomically: Resolve reads one snapshot and never locks,
// so changing an alias while requests run drops none (each sees the old or the new map, never a mix).
using System.Collections.Frozen;
using System.Security.Cryptography;
using System.Text;

namespace PeftKernels.Server.Tenants;

/// <summary>One version of a canary alias and its weight (any positive number; weights are relative).</summary>
/// <param name="Name">The adapter (version) name requests are routed to.</param>
/// <param name="Weight">Its share of the traffic relative to the other versions.</param>
public sealed record CanaryVersion(string Name, double Weight);

/// <summary>A canary alias: its versions in order (the order fixes which users go where).</summary>
public sealed class CanaryAlias
{
    private readonly double[] cumulative;

    internal CanaryAlias(string name, IReadOnlyList<CanaryVersion> versions)
    {
        Name = name;
        Versions = versions;
        double total = versions.Sum(v => v.Weight);
        cumulative = new double[versions.Count];
        double sum = 0;
        for (int i = 0; i < versions.Count; i++)
        {
            sum += versions[i].Weight;
            cumulative[i] = sum / total;
        }

        cumulative[^1] = 1.0; // rounding must never leave a u in [0, 1) without a version
    }

    /// <summary>The alias name.</summary>
    public string Name { get; }

    /// <summary>The versions and their weights, in order.</summary>
    public IReadOnlyList<CanaryVersion> Versions { get; }

    /// <summary>The version that the point <paramref name="u"/> in [0, 1) falls on.</summary>
    public string Pick(double u)
    {
        for (int i = 0; i < cumulative.Length; i++)
        {
            if (u < cumulative[i])
            {
                return Versions[i].Name;
            }
        }

        return Versions[^1].Name;
    }
}

/// <summary>
/// The server's canary aliases, changeable at run time: <see cref="Set"/> and <see cref="Remove"/> swap in a new immutable map,
/// <see cref="Resolve"/> reads the current one without locking. Thread-safe.
/// </summary>
public sealed class CanaryAliases
{
    private readonly object writeGate = new();
    private FrozenDictionary<string, CanaryAlias> map = FrozenDictionary<string, CanaryAlias>.Empty;

    /// <summary>The current aliases (an immutable snapshot: later changes do not alter it).</summary>
    public IReadOnlyDictionary<string, CanaryAlias> Snapshot() => Volatile.Read(ref map);

    /// <summary>Defines or replaces <paramref name="alias"/> as a split between <paramref name="versions"/> (in that order).</summary>
    /// <exception cref="ArgumentException">The alias is empty; no versions; a version name is empty or repeated; a weight is not a
    /// positive finite number; a version is an alias (or the alias itself); or the alias is a version of another alias.</exception>
    public void Set(string alias, IReadOnlyList<CanaryVersion> versions)
    {
        ArgumentNullException.ThrowIfNull(versions);
        lock (writeGate)
        {
            var current = Volatile.Read(ref map);
            var entry = Validate(alias, versions, current);
            var next = current.ToDictionary(StringComparer.Ordinal);
            next[alias] = entry;
            Volatile.Write(ref map, next.ToFrozenDictionary(StringComparer.Ordinal));
        }
    }

    /// <summary>Defines or replaces several aliases at once (one swap: requests see all of them or none).</summary>
    /// <exception cref="ArgumentException">As for <see cref="Set"/>, naming the alias.</exception>
    public void SetAll(IEnumerable<KeyValuePair<string, IReadOnlyList<CanaryVersion>>> aliases)
    {
        ArgumentNullException.ThrowIfNull(aliases);
        lock (writeGate)
        {
            var next = Volatile.Read(ref map).ToDictionary(StringComparer.Ordinal);
            var pending = aliases.ToList();
            foreach (var (name, versions) in pending)
            {
                // Provisional entries first, so that cross-references between the new aliases are caught too.
                ArgumentException.ThrowIfNullOrWhiteSpace(name, nameof(aliases));
                next[name] = new CanaryAlias(name, versions is { Count: > 0 } ? versions : [new CanaryVersion(name, 1)]);
            }

            var frozen = next.ToFrozenDictionary(StringComparer.Ordinal);
            foreach (var (name, versions) in pending)
            {
                next[name] = Validate(name, versions, frozen);
            }

            Volatile.Write(ref map, next.ToFrozenDictionary(StringComparer.Ordinal));
        }
    }

    /// <summary>Removes <paramref name="alias"/>; false when it was not defined.</summary>
    public bool Remove(string alias)
    {
        ArgumentNullException.ThrowIfNull(alias);
        lock (writeGate)
        {
            var current = Volatile.Read(ref map);
            if (!current.ContainsKey(alias))
            {
                return false;
            }

            Volatile.Write(ref map, current.Where(p => p.Key != alias).ToFrozenDictionary(StringComparer.Ordinal));
            return true;
        }
    }

    /// <summary>True when <paramref name="name"/> is an alias now.</summary>
    public bool IsAlias(string name) => Volatile.Read(ref map).ContainsKey(name);

    /// <summary>
    /// The version <paramref name="model"/> runs on: <paramref name="model"/> itself when it is not an alias; otherwise the version the
    /// stable hash of <paramref name="user"/> falls on (sticky), or a random draw when <paramref name="user"/> is null or empty.
    /// </summary>
    public string Resolve(string model, string? user)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Volatile.Read(ref map).TryGetValue(model, out var alias))
        {
            return model;
        }

        return alias.Pick(string.IsNullOrEmpty(user) ? Random.Shared.NextDouble() : StickyPoint(model, user));
    }

    /// <summary>The point in [0, 1) that <paramref name="user"/> occupies for <paramref name="alias"/>: stable across processes and runs.</summary>
    public static double StickyPoint(string alias, string user)
    {
        ArgumentNullException.ThrowIfNull(alias);
        ArgumentNullException.ThrowIfNull(user);
        byte[] bytes = Encoding.UTF8.GetBytes(alias + "\0" + user);
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(bytes, hash);
        ulong x = System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(hash);
        return (x >> 11) * (1.0 / (1UL << 53)); // the top 53 bits: exactly representable, strictly below 1
    }

    private static CanaryAlias Validate(string alias, IReadOnlyList<CanaryVersion> versions, IReadOnlyDictionary<string, CanaryAlias> others)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(alias);
        ArgumentNullException.ThrowIfNull(versions);
        if (versions.Count == 0)
        {
            throw new ArgumentException($"alias '{alias}': no versions (expected at least one version with a positive weight).", nameof(versions));
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var v in versions)
        {
            if (v is null || string.IsNullOrWhiteSpace(v.Name))
            {
                throw new ArgumentException($"alias '{alias}': a version name is empty.", nameof(versions));
            }

            if (!double.IsFinite(v.Weight) || v.Weight <= 0)
            {
                throw new ArgumentException($"alias '{alias}': version '{v.Name}' has weight {v.Weight} (expected a positive finite number).", nameof(versions));
            }

            if (!seen.Add(v.Name))
            {
                throw new ArgumentException($"alias '{alias}': version '{v.Name}' is listed twice.", nameof(versions));
            }

            if (v.Name == alias)
            {
                throw new ArgumentException($"alias '{alias}': names itself as a version.", nameof(versions));
            }

            if (others.ContainsKey(v.Name))
            {
                throw new ArgumentException($"alias '{alias}': version '{v.Name}' is itself an alias (aliases resolve to adapters, one level only).", nameof(versions));
            }
        }

        foreach (var other in others.Values)
        {
            if (other.Name != alias && other.Versions.Any(v => v.Name == alias))
            {
                throw new ArgumentException($"alias '{alias}': is a version of alias '{other.Name}' (aliases resolve to adapters, one level only).", nameof(alias));
            }
        }

        return new CanaryAlias(alias, [.. versions]);
    }
}
