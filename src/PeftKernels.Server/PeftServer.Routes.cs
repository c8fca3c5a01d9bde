// The routes besides generation: GET / (the web page: PeftServer.Web.cs), GET /health, GET /v1/models
// (the base model by its own name, then every adapter with parent = the base and root = its folder), and vLLM's runtime adapter management,
// POST /v1/load_lora_adapter {"lora_name", "lora_path"} (a known name is replaced: new requests get the
// new version, running ones finish on the old) and POST /v1/unload_lora_adapter {"lora_name"}. Paths are
// confined to --adapters-dir (AdapterFolders: "..", absolute paths elsewhere and links out are refused);
// without --adapters-dir runtime loading is off. With a gate, only tenants allowed to manage adapters
// may call them (403).
using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using PeftKernels.Engine;
using PeftKernels.Serving;

namespace PeftKernels.Server;

public sealed partial class PeftServer
{
    private const string AbortKey = "peft.abort";
    private const string ModelKey = "peft.model";
    private readonly ConcurrentDictionary<string, string> folders = new(StringComparer.Ordinal);
    private readonly long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>The adapters requests may name (without derived mixes), sorted: llama.cpp's <c>lora[].id</c> indexes this list.</summary>
    public IReadOnlyList<string> AdapterNames => [.. Engine.Adapters.Names.Where(n => !n.StartsWith(AdapterMixer.MixPrefix, StringComparison.Ordinal))];

    private static CancellationToken Aborted(HttpContext context) => context.Items[AbortKey] is CancellationToken token ? token : context.RequestAborted;

    private void MapRoutes(WebApplication web)
    {
        MapWebPage(web);
        web.MapGet("/health", (HttpContext c) => Json(c, json => json.WriteString("status", "ok")));
        web.MapGet("/v1/models", Models);
        web.MapPost("/v1/completions", c => Generate(c, chat: false));
        web.MapPost("/v1/chat/completions", c => Generate(c, chat: true));
        web.MapPost("/v1/load_lora_adapter", LoadAdapter);
        web.MapPost("/v1/unload_lora_adapter", UnloadAdapter);
        web.MapFallback((HttpContext c) => throw new ApiException(StatusCodes.Status404NotFound, $"no route {c.Request.Method} {c.Request.Path}.", code: "not_found"));
    }

    private static async Task Json(HttpContext context, Action<Utf8JsonWriter> body, int status = StatusCodes.Status200OK)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            body(json);
            json.WriteEndObject();
        }

        await context.Response.Body.WriteAsync(buffer.ToArray(), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task Models(HttpContext context)
    {
        Authenticate(context);
        var resident = Engine.Adapters.Snapshot().Where(r => r.Current).ToDictionary(r => r.Name, r => r.Folder, StringComparer.Ordinal);
        await Json(context, json =>
        {
            json.WriteString("object", "list");
            json.WriteStartArray("data");
            WriteModel(json, Model.Name, Model.Name, null);
            foreach (string name in AdapterNames)
            {
                string root = resident.TryGetValue(name, out var f) ? f : folders.TryGetValue(name, out var g) ? g : name;
                WriteModel(json, name, root, Model.Name);
            }

            json.WriteEndArray();
        }).ConfigureAwait(false);
    }

    private void WriteModel(Utf8JsonWriter json, string id, string root, string? parent)
    {
        json.WriteStartObject();
        json.WriteString("id", id);
        json.WriteString("object", "model");
        json.WriteNumber("created", created);
        json.WriteString("owned_by", ServerInfo.Name);
        json.WriteString("root", root);
        if (parent == null)
        {
            json.WriteNull("parent");
        }
        else
        {
            json.WriteString("parent", parent);
        }

        json.WriteEndObject();
    }

    /// <summary>The gate's authentication (401 when refused); null tenant when there is no gate.</summary>
    private TenantIdentity? Authenticate(HttpContext context)
    {
        if (Gate == null)
        {
            return null;
        }

        var decision = Gate.Authenticate(context.Request);
        Require(decision);
        return decision.Tenant ?? throw new ApiException(StatusCodes.Status401Unauthorized, "authentication failed.", code: "invalid_api_key");
    }

    private static void Require(GateDecision decision)
    {
        if (!decision.Allowed)
        {
            throw new ApiException(decision.Status, decision.Message ?? $"refused ({decision.Status}).", decision.Status == StatusCodes.Status404NotFound ? "model" : null, decision.Code)
            {
                RetryAfter = decision.RetryAfter,
            };
        }
    }

    private TenantIdentity? AuthenticateManager(HttpContext context)
    {
        var tenant = Authenticate(context);
        if (tenant is { CanManageAdapters: false })
        {
            throw new ApiException(StatusCodes.Status403Forbidden, $"tenant '{tenant.Name}' may not load or unload adapters.", code: "permission_denied");
        }

        return tenant;
    }

    private static async Task<JsonElement> ReadObject(HttpContext context)
    {
        var body = await ReadBody(context).ConfigureAwait(false);
        try
        {
            using var document = JsonDocument.Parse(body);
            return document.RootElement.ValueKind == JsonValueKind.Object ? document.RootElement.Clone()
                : throw ApiException.BadRequest("the request body must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
    }

    private static async Task<ReadOnlyMemory<byte>> ReadBody(HttpContext context)
    {
        using var buffer = new MemoryStream();
        await context.Request.Body.CopyToAsync(buffer, context.RequestAborted).ConfigureAwait(false);
        return buffer.ToArray();
    }

    private static string RequiredString(JsonElement body, string field) =>
        body.TryGetProperty(field, out var v) && v.ValueKind == JsonValueKind.String && v.GetString() is { Length: > 0 } s ? s
            : throw ApiException.BadRequest($"{field} is required and must be a non-empty string.", field);

    private async Task LoadAdapter(HttpContext context)
    {
        AuthenticateManager(context);
        var body = await ReadObject(context).ConfigureAwait(false);
        string name = RequiredString(body, "lora_name"), path = RequiredString(body, "lora_path");
        context.Items[ModelKey] = name;
        if (AdaptersDir == null)
        {
            throw ApiException.BadRequest("runtime adapter loading is off: start the server with --adapters-dir DIR (lora_path must lie inside it).", "lora_path");
        }

        if (!IsValidName(name) || name == Model.Name)
        {
            throw ApiException.BadRequest($"lora_name '{name}' is not a valid adapter name (1-128 characters, no control characters, not the base model's name, "
                + $"not starting with '{AdapterMixer.MixPrefix}').", "lora_name");
        }

        string real;
        try
        {
            real = AdapterFolders.Resolve(path, AdaptersDir);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new ApiException(StatusCodes.Status400BadRequest, $"lora_path: {e.Message}", "lora_path", "path_outside_adapters_dir");
        }
        catch (IOException e)
        {
            throw ApiException.BadRequest($"lora_path: {e.Message}", "lora_path");
        }

        bool replaced = Engine.Adapters.Names.Contains(name, StringComparer.Ordinal);
        EngineAdapter adapter;
        try
        {
            adapter = await Task.Run(() => Engine.Adapters.Load(name, real)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or InvalidOperationException or UnauthorizedAccessException or ArgumentException)
        {
            throw ApiException.BadRequest($"cannot load adapter '{name}' from {path}: {e.Message}", "lora_path");
        }

        folders[name] = real;
        logger.LogInformation("{Action} adapter {Name} v{Version} from {Folder}", replaced ? "replaced" : "loaded", name, adapter.Version, real);
        await Json(context, json =>
        {
            json.WriteString("status", "ok");
            json.WriteString("lora_name", name);
            json.WriteNumber("version", adapter.Version);
            json.WriteBoolean("replaced", replaced);
        }).ConfigureAwait(false);
    }

    private async Task UnloadAdapter(HttpContext context)
    {
        AuthenticateManager(context);
        var body = await ReadObject(context).ConfigureAwait(false);
        string name = RequiredString(body, "lora_name");
        context.Items[ModelKey] = name;
        if (name.StartsWith(AdapterMixer.MixPrefix, StringComparison.Ordinal) || !Engine.Adapters.Unload(name))
        {
            throw ApiException.UnknownModel(name);
        }

        folders.TryRemove(name, out _);
        logger.LogInformation("unloaded adapter {Name}", name);
        await Json(context, json =>
        {
            json.WriteString("status", "ok");
            json.WriteString("lora_name", name);
        }).ConfigureAwait(false);
    }
}
