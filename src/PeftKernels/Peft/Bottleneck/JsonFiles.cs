// Strict readers of the JSON fields in the AdapterHub files: each failure names the file and the
// field, and says what was expected and what was found (docs/formats/bottleneck-adapters.md#files).
using System.Text.Json;

namespace PeftKernels.Peft.Bottleneck;

internal static class JsonFiles
{
    public static JsonDocument Parse(string path)
    {
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"{path} is missing.");
        }

        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not valid JSON: {e.Message}", e);
        }
    }

    public static JsonElement? Property(JsonElement o, string name, string path, bool required = true)
    {
        if (o.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{path}: expected a JSON object holding '{name}', found {o.ValueKind}.");
        }

        if (o.TryGetProperty(name, out var e))
        {
            return e;
        }

        return required ? throw new InvalidDataException($"{path}: the field '{name}' is missing.") : null;
    }

    public static JsonElement Object(JsonElement o, string name, string path)
    {
        var e = Property(o, name, path)!.Value;
        return e.ValueKind == JsonValueKind.Object ? e : throw new InvalidDataException($"{path}: '{name}' must be an object; found {e.ValueKind}.");
    }

    public static bool Bool(JsonElement o, string name, string path, bool? fallback = null)
    {
        var e = Property(o, name, path, required: fallback == null);
        if (e == null)
        {
            return fallback!.Value;
        }

        return e.Value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new InvalidDataException($"{path}: '{name}' must be true or false; found {e.Value}."),
        };
    }

    public static double Number(JsonElement o, string name, string path)
    {
        var e = Property(o, name, path)!.Value;
        return e.ValueKind == JsonValueKind.Number ? e.GetDouble() : throw new InvalidDataException($"{path}: '{name}' must be a number; found {e}.");
    }

    public static string String(JsonElement o, string name, string path)
    {
        var e = Property(o, name, path)!.Value;
        return e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new InvalidDataException($"{path}: '{name}' must be a string; found {e}.");
    }

    public static void RequireValue(JsonElement o, string name, bool expected, string path)
    {
        if (o.TryGetProperty(name, out var e) && e.ValueKind is JsonValueKind.True or JsonValueKind.False && e.GetBoolean() != expected)
        {
            throw new InvalidDataException($"{path}: '{name}' is {e}; only {(expected ? "true" : "false")} is supported by this library.");
        }

        if (o.TryGetProperty(name, out e) && e.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
        {
            throw new InvalidDataException($"{path}: '{name}' is {e}; only {(expected ? "true" : "false")} is supported by this library.");
        }
    }

    public static void RequireNullOrAbsent(JsonElement o, string name, string path)
    {
        if (o.TryGetProperty(name, out var e) && e.ValueKind != JsonValueKind.Null)
        {
            throw new InvalidDataException($"{path}: '{name}' is {e}; this library supports only null (none).");
        }
    }

    public static void RequireZeroOrAbsent(JsonElement o, string name, string path)
    {
        if (o.TryGetProperty(name, out var e) && e.ValueKind != JsonValueKind.Null && !(e.ValueKind == JsonValueKind.Number && e.GetDouble() == 0))
        {
            throw new InvalidDataException($"{path}: '{name}' is {e}; this library supports only 0.");
        }
    }
}
