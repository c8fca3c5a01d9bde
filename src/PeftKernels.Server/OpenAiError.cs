// OpenAI's error body and the statuses the server answers with: {"error": {"message", "type", "param",
// "code"}}. An ApiException thrown anywhere in a handler becomes that body with its status.
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace PeftKernels.Server;

/// <summary>A request the server refuses, answered as an OpenAI error body with <see cref="Status"/>.</summary>
/// <param name="status">The HTTP status.</param>
/// <param name="message">What was wrong (the field, the value, what is expected).</param>
/// <param name="param">The request field at fault, if any.</param>
/// <param name="code">The OpenAI error code, if any.</param>
public sealed class ApiException(int status, string message, string? param = null, string? code = null) : Exception(message)
{
    /// <summary>The HTTP status.</summary>
    public int Status { get; } = status;

    /// <summary>The request field at fault.</summary>
    public string? Param { get; } = param;

    /// <summary>The OpenAI error code.</summary>
    public string? Code { get; } = code;

    /// <summary>When the client should retry (429, 503).</summary>
    public TimeSpan? RetryAfter { get; init; }

    /// <summary>A 400 about <paramref name="param"/>.</summary>
    public static ApiException BadRequest(string message, string? param = null, string? code = null) => new(StatusCodes.Status400BadRequest, message, param, code);

    /// <summary>A 404 for a model (adapter) the server does not know.</summary>
    public static ApiException UnknownModel(string model) =>
        new(StatusCodes.Status404NotFound, $"The model `{model}` does not exist.", "model", "model_not_found");
}

/// <summary>Writes OpenAI error bodies.</summary>
internal static class OpenAiError
{
    /// <summary>The OpenAI error type of a status.</summary>
    public static string TypeOf(int status) => status switch
    {
        StatusCodes.Status401Unauthorized => "authentication_error",
        StatusCodes.Status403Forbidden => "permission_error",
        StatusCodes.Status404NotFound => "not_found_error",
        StatusCodes.Status413PayloadTooLarge => "invalid_request_error",
        StatusCodes.Status429TooManyRequests => "rate_limit_error",
        >= 500 => "server_error",
        _ => "invalid_request_error",
    };

    /// <summary>The error body.</summary>
    public static byte[] Body(int status, string message, string? param, string? code)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteStartObject("error");
            json.WriteString("message", message);
            json.WriteString("type", TypeOf(status));
            WriteNullable(json, "param", param);
            WriteNullable(json, "code", code);
            json.WriteEndObject();
            json.WriteEndObject();
        }

        return buffer.ToArray();
    }

    /// <summary>Answers <paramref name="context"/> with an error (unless the response has started).</summary>
    public static async Task Write(HttpContext context, int status, string message, string? param = null, string? code = null, TimeSpan? retryAfter = null)
    {
        if (context.Response.HasStarted)
        {
            return;
        }

        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        if (retryAfter is { } wait)
        {
            context.Response.Headers.RetryAfter = Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        await context.Response.Body.WriteAsync(Body(status, message, param, code), context.RequestAborted).ConfigureAwait(false);
    }

    private static void WriteNullable(Utf8JsonWriter json, string name, string? value)
    {
        if (value == null)
        {
            json.WriteNull(name);
        }
        else
        {
            json.WriteString(name, value);
        }
    }
}
