// The OpenAI-style refusals the gates answer with (status, code, message), in one place so that both gates
// and the docs agree: 401 invalid_api_key, 403 permission_denied / model_not_allowed, 429 rate_limit_exceeded.
namespace PeftKernels.Server.Tenants;

/// <summary>The gate decisions (allowed, and the OpenAI error refusals) of <see cref="TenantGate"/> and <see cref="OpenGate"/>.</summary>
public static class GateDecisions
{
    /// <summary>The OpenAI error code of a missing, malformed or unknown API key (401).</summary>
    public const string InvalidApiKey = "invalid_api_key";

    /// <summary>The code of a key acting for a tenant it does not cover, or a tenant that the file does not define (403).</summary>
    public const string PermissionDenied = "permission_denied";

    /// <summary>The code of a model the tenant may not use (403).</summary>
    public const string ModelNotAllowed = "model_not_allowed";

    /// <summary>The OpenAI error code of a spent rate limit (429).</summary>
    public const string RateLimitExceeded = "rate_limit_exceeded";

    /// <summary>Proceed as <paramref name="tenant"/> (on <paramref name="model"/> when routed).</summary>
    public static GateDecision Allow(TenantIdentity tenant, string? model = null) => new(200, Tenant: tenant, Model: model);

    /// <summary>401: no key where one is required.</summary>
    public static GateDecision MissingKey() => new(401,
        "You didn't provide an API key. Send it in an Authorization header (Authorization: Bearer YOUR_KEY).", InvalidApiKey);

    /// <summary>401: the Authorization header is not <c>Bearer KEY</c>.</summary>
    public static GateDecision MalformedAuthorization() => new(401,
        "The Authorization header is malformed (expected 'Authorization: Bearer YOUR_KEY').", InvalidApiKey);

    /// <summary>401: the key is not in the key file (the key itself is never echoed).</summary>
    public static GateDecision UnknownKey() => new(401, "Incorrect API key provided.", InvalidApiKey);

    /// <summary>401: header-only routing names a tenant that the key file does not define.</summary>
    public static GateDecision UnknownTenant(string tenant) => new(401, $"Unknown tenant '{tenant}' in the X-Tenant-Id header.", InvalidApiKey);

    /// <summary>403: the key may not act for <paramref name="tenant"/>.</summary>
    public static GateDecision TenantNotAllowed(string tenant) => new(403,
        $"This API key may not act for tenant '{tenant}' (X-Tenant-Id).", PermissionDenied);

    /// <summary>403: <paramref name="tenant"/> may not use <paramref name="model"/>.</summary>
    public static GateDecision ModelForbidden(TenantIdentity tenant, string model) => new(403,
        $"Tenant '{tenant.Name}' may not use the model '{model}'.", ModelNotAllowed, tenant);

    /// <summary>403: no model given and <paramref name="tenant"/> has no default adapter and may not use the base model.</summary>
    public static GateDecision NoModel(TenantIdentity tenant) => new(403,
        $"No model given and tenant '{tenant.Name}' has no default adapter; name one of its models in 'model'.", ModelNotAllowed, tenant);

    /// <summary>429: <paramref name="tenant"/>'s limit is spent; retry after <paramref name="retryAfter"/>.</summary>
    public static GateDecision RateLimited(TenantIdentity tenant, string what, TimeSpan retryAfter) => new(429,
        $"Rate limit reached for tenant '{tenant.Name}' ({what}). Retry after {Math.Max(1, (int)Math.Ceiling(retryAfter.TotalSeconds))} s.",
        RateLimitExceeded, tenant, RetryAfter: retryAfter);
}
