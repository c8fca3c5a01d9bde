// Run-time management of canary aliases over HTTP (the same shape as the key file's "aliases" section):
//   GET    /v1/aliases         every alias and its versions (any authenticated tenant)
//   PUT    /v1/aliases/{name}  {"versions": {"support-v1": 80, "support-v2": 20}}: define or replace (adapter managers)
//   DELETE /v1/aliases/{name}  remove (adapter managers)
// A change swaps the alias map atomically (CanaryAliases): running and concurrent requests are never dropped.
// Refusals are OpenAI error bodies: 401 (gate), 403 permission_denied, 400 invalid_request_error, 404 not found.
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace PeftKernels.Server.Tenants;

/// <summary>Maps the canary-alias management endpoints.</summary>
public static class AliasEndpoints
{
    /// <summary>Serves GET <c>/v1/aliases</c>, PUT and DELETE <c>/v1/aliases/{name}</c> over <paramref name="aliases"/>, authenticated by
    /// <paramref name="gate"/>; changes need <see cref="TenantIdentity.CanManageAdapters"/>.</summary>
    public static IEndpointRouteBuilder MapPeftAliases(this IEndpointRouteBuilder endpoints, IRequestGate gate, CanaryAliases aliases)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(gate);
        ArgumentNullException.ThrowIfNull(aliases);
        endpoints.MapGet("/v1/aliases", async (HttpContext context) =>
        {
            if (await Admit(context, gate, manage: false).ConfigureAwait(false))
            {
                await context.Response.WriteAsJsonAsync(new { @object = "list", data = aliases.Snapshot().Values.OrderBy(a => a.Name, StringComparer.Ordinal).Select(Describe) })
                    .ConfigureAwait(false);
            }
        });
        endpoints.MapPut("/v1/aliases/{name}", async (HttpContext context, string name) =>
        {
            if (!await Admit(context, gate, manage: true).ConfigureAwait(false))
            {
                return;
            }

            List<CanaryVersion> versions;
            try
            {
                using var doc = await JsonDocument.ParseAsync(context.Request.Body, cancellationToken: context.RequestAborted).ConfigureAwait(false);
                versions = Versions(doc.RootElement);
                aliases.Set(name, versions);
            }
            catch (Exception e) when (e is JsonException or ArgumentException or FormatException)
            {
                await Error(context, 400, e.Message.Split(" (Parameter")[0], "invalid_request_error", null).ConfigureAwait(false);
                return;
            }

            await context.Response.WriteAsJsonAsync(Describe(aliases.Snapshot()[name])).ConfigureAwait(false);
        });
        endpoints.MapDelete("/v1/aliases/{name}", async (HttpContext context, string name) =>
        {
            if (!await Admit(context, gate, manage: true).ConfigureAwait(false))
            {
                return;
            }

            if (!aliases.Remove(name))
            {
                await Error(context, 404, $"The alias `{name}` does not exist.", "NotFoundError", "alias_not_found").ConfigureAwait(false);
                return;
            }

            await context.Response.WriteAsJsonAsync(new { id = name, @object = "alias", deleted = true }).ConfigureAwait(false);
        });
        return endpoints;
    }

    private static List<CanaryVersion> Versions(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("versions", out var versions) || versions.ValueKind != JsonValueKind.Object)
        {
            throw new FormatException("expected {\"versions\": {\"VERSION\": weight, ...}}.");
        }

        var list = new List<CanaryVersion>();
        foreach (var p in versions.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetDouble(out double weight))
            {
                throw new FormatException($"versions.{p.Name}: expected a positive number, got {p.Value.GetRawText()}.");
            }

            list.Add(new CanaryVersion(p.Name, weight));
        }

        return list;
    }

    private static object Describe(CanaryAlias alias) => new
    {
        id = alias.Name,
        @object = "alias",
        versions = alias.Versions.ToDictionary(v => v.Name, v => v.Weight, StringComparer.Ordinal),
    };

    private static async Task<bool> Admit(HttpContext context, IRequestGate gate, bool manage)
    {
        var decision = gate.Authenticate(context.Request);
        if (!decision.Allowed)
        {
            await Error(context, decision.Status, decision.Message ?? "Not allowed.", decision.Status == 401 ? "invalid_request_error" : "permission_error", decision.Code)
                .ConfigureAwait(false);
            return false;
        }

        if (manage && !decision.Tenant!.CanManageAdapters)
        {
            await Error(context, 403, $"Tenant '{decision.Tenant.Name}' may not change aliases (it may not manage adapters).", "permission_error",
                GateDecisions.PermissionDenied).ConfigureAwait(false);
            return false;
        }

        return true;
    }

    private static Task Error(HttpContext context, int status, string message, string type, string? code)
    {
        context.Response.StatusCode = status;
        return context.Response.WriteAsJsonAsync(new { error = new { message, type, param = (string?)null, code } });
    }
}
