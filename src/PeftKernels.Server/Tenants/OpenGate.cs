// The request gate of a server started without an API-key file: every request is the anonymous tenant (any
// key or none is accepted, as OpenAI clients always send one), every model is allowed, nothing is rate
// limited, adapter management only when the server was started to allow it. An empty model runs on the base
// model (as LoRAX accepts ""), and canary aliases still resolve, sticky per user.
using Microsoft.AspNetCore.Http;

namespace PeftKernels.Server.Tenants;

/// <summary><see cref="IRequestGate"/> for a server without an API-key file: one anonymous tenant, canary aliases still applied.</summary>
public sealed class OpenGate : IRequestGate
{
    /// <summary>The tenant name every request gets.</summary>
    public const string AnonymousTenant = "anonymous";

    private readonly TenantIdentity anonymous;

    /// <summary>A gate for a server whose base model is <paramref name="baseModel"/>; <paramref name="canManageAdapters"/>: whether anyone may
    /// load and unload adapters; <paramref name="aliases"/> (default: a new, empty set) the canary aliases.</summary>
    public OpenGate(string baseModel, bool canManageAdapters, CanaryAliases? aliases = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(baseModel);
        BaseModel = baseModel;
        anonymous = new TenantIdentity(AnonymousTenant, canManageAdapters);
        Aliases = aliases ?? new CanaryAliases();
    }

    /// <summary>The base model's name (what an empty model runs on).</summary>
    public string BaseModel { get; }

    /// <summary>The canary aliases requests resolve through.</summary>
    public CanaryAliases Aliases { get; }

    /// <inheritdoc/>
    public GateDecision Authenticate(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return GateDecisions.Allow(anonymous);
    }

    /// <inheritdoc/>
    public GateDecision Route(TenantIdentity tenant, string? requestedModel, string? user)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        string model = string.IsNullOrWhiteSpace(requestedModel) ? BaseModel : requestedModel;
        return GateDecisions.Allow(tenant, Aliases.Resolve(model, user));
    }

    /// <inheritdoc/>
    public GateDecision TryAcquire(TenantIdentity tenant)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        return GateDecisions.Allow(tenant);
    }
}
