// What one tenant of the key file may do: the models (adapters, aliases, the base model by its name) it may
// run on, the adapter its requests default to, whether it manages the server's adapters, and its rate limit.
namespace PeftKernels.Server.Tenants;

/// <summary>A tenant's rate limit: a token bucket of requests per minute and/or a cap on requests in flight.</summary>
/// <param name="RequestsPerMinute">Sustained requests per minute (null: no request-rate limit).</param>
/// <param name="Burst">Requests that may arrive at once after a quiet period (the bucket's size; defaults to <paramref name="RequestsPerMinute"/>).</param>
/// <param name="ConcurrentRequests">Requests in flight at once (null: no cap).</param>
public sealed record TenantRateLimit(int? RequestsPerMinute, int? Burst, int? ConcurrentRequests)
{
    /// <summary>No limit.</summary>
    public static TenantRateLimit None { get; } = new(null, null, null);

    /// <summary>True when neither limit is set.</summary>
    public bool IsUnlimited => RequestsPerMinute is null && ConcurrentRequests is null;
}

/// <summary>One tenant: its name, the models it may use, its default adapter, its management right and its rate limit.</summary>
public sealed class TenantPolicy
{
    /// <summary>The wildcard entry of <see cref="Models"/>: every model.</summary>
    public const string AnyModel = "*";

    /// <summary>A tenant named <paramref name="name"/>.</summary>
    public TenantPolicy(string name, IReadOnlyList<string> models, string? defaultAdapter = null, bool canManageAdapters = false, TenantRateLimit? rateLimit = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(models);
        Name = name;
        Models = [.. models];
        AllowsAll = Models.Contains(AnyModel);
        allowed = new HashSet<string>(Models, StringComparer.Ordinal);
        DefaultAdapter = defaultAdapter;
        CanManageAdapters = canManageAdapters;
        RateLimit = rateLimit ?? TenantRateLimit.None;
        if (defaultAdapter != null && !Allows(defaultAdapter))
        {
            throw new ArgumentException($"tenant '{name}': the default adapter '{defaultAdapter}' is not among the models it may use.", nameof(defaultAdapter));
        }
    }

    private readonly HashSet<string> allowed;

    /// <summary>The tenant's name (logs; the <c>X-Tenant-Id</c> header names it).</summary>
    public string Name { get; }

    /// <summary>The model names it may use, as listed: adapter names, alias names, the base model's name, or <c>*</c> for all.</summary>
    public IReadOnlyList<string> Models { get; }

    /// <summary>True when <see cref="Models"/> holds <c>*</c>.</summary>
    public bool AllowsAll { get; }

    /// <summary>The model a request without one (or naming the base model the tenant may not use) runs on; null: the base model.</summary>
    public string? DefaultAdapter { get; }

    /// <summary>Whether it may load and unload adapters.</summary>
    public bool CanManageAdapters { get; }

    /// <summary>Its rate limit.</summary>
    public TenantRateLimit RateLimit { get; }

    /// <summary>Whether it may run on <paramref name="model"/> (an alias counts as itself, not as its versions).</summary>
    public bool Allows(string model) => AllowsAll || allowed.Contains(model);
}
