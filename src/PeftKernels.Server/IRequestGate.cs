using Microsoft.AspNetCore.Http;

namespace PeftKernels.Server;

/// <summary>The tenant a request authenticated as (from its API key or its <c>X-Tenant-Id</c> header).</summary>
/// <param name="Name">The tenant's name, as the key file gives it; used in logs and metrics labels.</param>
/// <param name="CanManageAdapters">Whether this tenant may call <c>/v1/load_lora_adapter</c> and <c>/v1/unload_lora_adapter</c>.</param>
public sealed record TenantIdentity(string Name, bool CanManageAdapters);

/// <summary>What the gate decided about one request: let it through (status 200) or answer with an OpenAI error.</summary>
/// <param name="Status">200 to proceed; otherwise the HTTP status to answer (401, 403, 404, 429).</param>
/// <param name="Message">The error message for the OpenAI error body (null when allowed).</param>
/// <param name="Code">The OpenAI error <c>code</c> (for example <c>invalid_api_key</c>, <c>model_not_found</c>, <c>rate_limit_exceeded</c>).</param>
/// <param name="Tenant">The tenant, when authentication succeeded.</param>
/// <param name="Model">The model the request runs on after routing (tenant default, canary alias), when resolved.</param>
/// <param name="RetryAfter">For 429: how long the client should wait (the <c>Retry-After</c> header).</param>
public sealed record GateDecision(int Status, string? Message = null, string? Code = null, TenantIdentity? Tenant = null, string? Model = null, TimeSpan? RetryAfter = null)
{
    /// <summary>True when the request may proceed.</summary>
    public bool Allowed => Status == StatusCodes.Status200OK;
}

/// <summary>
/// Admission of a request before it reaches the engine: authentication, routing of the requested model to an adapter
/// (tenant default adapter, canary aliases sticky per <c>user</c>), key scoping, and rate limiting.
/// The HTTP layer calls <see cref="Authenticate"/> first, then <see cref="Route"/>, then <see cref="TryAcquire"/>;
/// the first decision that is not allowed is answered as an OpenAI error with its status.
/// </summary>
public interface IRequestGate
{
    /// <summary>Who sent <paramref name="request"/> (its <c>Authorization: Bearer</c> key, or <c>X-Tenant-Id</c>):
    /// 401 when a key is required and missing or unknown.</summary>
    GateDecision Authenticate(HttpRequest request);

    /// <summary>The model <paramref name="tenant"/>'s request runs on: <paramref name="requestedModel"/> (null or empty: the
    /// tenant's default adapter), an alias resolved to one of its versions (sticky per <paramref name="user"/>);
    /// 403 when the tenant's key may not use it. Whether the model exists is the caller's check (404).</summary>
    GateDecision Route(TenantIdentity tenant, string? requestedModel, string? user);

    /// <summary>Takes one request from <paramref name="tenant"/>'s rate limit: 429 (with a retry delay) when it is spent.</summary>
    GateDecision TryAcquire(TenantIdentity tenant);
}
