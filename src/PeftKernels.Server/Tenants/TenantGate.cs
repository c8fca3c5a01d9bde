// The request gate of a server started with an API-key file (TenantKeyFile):
//   Authenticate  Authorization: Bearer KEY → the key's tenants; X-Tenant-Id picks one of them (absent: the
//                 first listed), a tenant the key does not cover is 403. Keys are compared in constant time:
//                 SHA-256 of the presented key against the SHA-256 of every known key with
//                 CryptographicOperations.FixedTimeEquals, without stopping at a match. No key: 401, unless
//                 the file trusts the X-Tenant-Id header, which then names the tenant alone.
//   Route         model empty → the tenant's default adapter (none: the base model); the base model's name →
//                 the base model when the tenant may use it, else its default adapter (a client that only
//                 knows the base name reaches its tenant's adapter); a name the tenant may not use → 403;
//                 then a canary alias → one of its versions, sticky per user. Permission is checked on the
//                 name asked for: allowing an alias allows whichever version it resolves to.
//   TryAcquire    the tenant's token bucket and concurrency cap (TenantLimiter); the concurrency lease is
//                 tied to the HTTP request that Authenticate saw and released when its response completes.
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;

namespace PeftKernels.Server.Tenants;

/// <summary>
/// <see cref="IRequestGate"/> over an API-key file: keys scoped to tenants, tenants scoped to models, per-tenant rate limits, canary
/// aliases (<see cref="Aliases"/>, changeable at run time). Thread-safe. Pass <see cref="TryAcquire"/> the identity that
/// <see cref="Authenticate"/> returned for the same request (its concurrency lease is released when that request's response completes).
/// </summary>
public sealed class TenantGate : IRequestGate, IDisposable
{
    /// <summary>The header that picks one of a key's tenants (or names the tenant alone when the file trusts it).</summary>
    public const string TenantHeader = "X-Tenant-Id";

    private readonly (byte[] Hash, string[] Tenants)[] keys;
    private readonly Dictionary<string, TenantPolicy> tenants;
    private readonly Dictionary<string, TenantLimiter> limiters;
    private readonly ConditionalWeakTable<TenantIdentity, HttpContext> requests = [];
    private readonly bool trustHeader;

    /// <summary>A gate over <paramref name="file"/> for a server whose base model is called <paramref name="baseModel"/>;
    /// <paramref name="aliases"/> (default: a new set) receives the file's aliases.</summary>
    public TenantGate(TenantKeyFile file, string baseModel, CanaryAliases? aliases = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentException.ThrowIfNullOrWhiteSpace(baseModel);
        BaseModel = baseModel;
        tenants = new Dictionary<string, TenantPolicy>(file.Tenants, StringComparer.Ordinal);
        keys = [.. file.Keys.Select(k => (SHA256.HashData(Encoding.UTF8.GetBytes(k.Key)), k.Value.ToArray()))];
        limiters = tenants.Values.Where(t => !t.RateLimit.IsUnlimited).ToDictionary(t => t.Name, t => new TenantLimiter(t.RateLimit), StringComparer.Ordinal);
        trustHeader = file.TrustTenantHeader;
        Aliases = aliases ?? new CanaryAliases();
        if (file.Aliases.Count > 0)
        {
            Aliases.SetAll(file.Aliases);
        }
    }

    /// <summary>A gate over the key file at <paramref name="path"/> (<c>peft serve --api-keys FILE</c>).</summary>
    /// <exception cref="InvalidDataException">The file breaks the format (the message names the file and the field).</exception>
    public static TenantGate FromFile(string path, string baseModel, CanaryAliases? aliases = null) => new(TenantKeyFile.Load(path), baseModel, aliases);

    /// <summary>The base model's name (a model like any other in the tenants' lists).</summary>
    public string BaseModel { get; }

    /// <summary>The canary aliases requests resolve through (change them at run time with Set/Remove).</summary>
    public CanaryAliases Aliases { get; }

    /// <summary>The tenants by name.</summary>
    public IReadOnlyDictionary<string, TenantPolicy> Tenants => tenants;

    /// <inheritdoc/>
    public GateDecision Authenticate(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        string? asked = request.Headers[TenantHeader].FirstOrDefault();
        asked = string.IsNullOrWhiteSpace(asked) ? null : asked.Trim();
        string? authorization = request.Headers.Authorization.FirstOrDefault();
        string tenant;
        if (string.IsNullOrWhiteSpace(authorization))
        {
            if (!trustHeader || asked == null)
            {
                return GateDecisions.MissingKey();
            }

            if (!tenants.ContainsKey(asked))
            {
                return GateDecisions.UnknownTenant(asked);
            }

            tenant = asked;
        }
        else
        {
            const string scheme = "Bearer ";
            if (!authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase) || authorization.Length == scheme.Length)
            {
                return GateDecisions.MalformedAuthorization();
            }

            var covered = Find(authorization[scheme.Length..].Trim());
            if (covered == null)
            {
                return GateDecisions.UnknownKey();
            }

            if (asked != null && !covered.Contains(asked, StringComparer.Ordinal))
            {
                return GateDecisions.TenantNotAllowed(asked);
            }

            tenant = asked ?? covered[0];
        }

        var identity = new TenantIdentity(tenant, tenants[tenant].CanManageAdapters);
        if (limiters.TryGetValue(tenant, out var limiter) && limiter.HasConcurrencyCap)
        {
            requests.AddOrUpdate(identity, request.HttpContext);
        }

        return GateDecisions.Allow(identity);
    }

    /// <inheritdoc/>
    public GateDecision Route(TenantIdentity tenant, string? requestedModel, string? user)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        if (!tenants.TryGetValue(tenant.Name, out var policy))
        {
            return GateDecisions.UnknownTenant(tenant.Name);
        }

        string model;
        if (string.IsNullOrWhiteSpace(requestedModel))
        {
            model = policy.DefaultAdapter ?? BaseModel;
            if (policy.DefaultAdapter == null && !policy.Allows(BaseModel))
            {
                return GateDecisions.NoModel(tenant);
            }
        }
        else if (requestedModel == BaseModel && !policy.Allows(BaseModel) && policy.DefaultAdapter != null)
        {
            model = policy.DefaultAdapter;
        }
        else
        {
            model = requestedModel;
        }

        if (!policy.Allows(model))
        {
            return GateDecisions.ModelForbidden(tenant, model);
        }

        return GateDecisions.Allow(tenant, Aliases.Resolve(model, user));
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">The tenant has a concurrency cap and <paramref name="tenant"/> is not the identity
    /// <see cref="Authenticate"/> returned (the lease could not be released with its request).</exception>
    public GateDecision TryAcquire(TenantIdentity tenant)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        if (!limiters.TryGetValue(tenant.Name, out var limiter))
        {
            return GateDecisions.Allow(tenant);
        }

        HttpContext? context = null;
        if (limiter.HasConcurrencyCap && !requests.TryGetValue(tenant, out context))
        {
            throw new InvalidOperationException(
                $"tenant '{tenant.Name}' has a concurrency cap: pass TryAcquire the TenantIdentity instance that Authenticate returned for the same request.");
        }

        var lease = limiter.TryAcquire(out var refusal);
        if (lease == null)
        {
            return GateDecisions.RateLimited(tenant, refusal.What, refusal.RetryAfter);
        }

        if (context != null)
        {
            requests.Remove(tenant);
            context.Response.RegisterForDispose(lease);
        }

        return GateDecisions.Allow(tenant);
    }

    /// <summary>Stops the tenants' limiters.</summary>
    public void Dispose()
    {
        foreach (var limiter in limiters.Values)
        {
            limiter.Dispose();
        }
    }

    private string[]? Find(string key)
    {
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(Encoding.UTF8.GetBytes(key), hash);
        string[]? found = null;
        foreach (var (known, covered) in keys)
        {
            // Every key is compared, match or not: the time taken does not depend on which key matched.
            bool equal = CryptographicOperations.FixedTimeEquals(hash, known);
            found = equal ? covered : found;
        }

        return found;
    }
}
