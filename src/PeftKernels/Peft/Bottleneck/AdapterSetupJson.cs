// adapter_setup.json (docs/formats/bottleneck-adapters.md#adapter_setup): {"adapter_setup": BLOCK}
// where a BLOCK is an adapter name (a JSON string) or {"type": "Stack" | "Parallel" | "Average" |
// "Fuse", "children": [BLOCK, …]} and Average adds "weights": [w, …]. A top-level single adapter is
// written as {"type": "Stack", "children": [name]} (AdapterHub reads a bare name as Stack(name)).
// Reading is strict: an unknown type, a missing field or a bad nesting names the file and the block.
using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace PeftKernels.Peft.Bottleneck;

/// <summary>Reads and writes adapter_setup.json.</summary>
public static class AdapterSetupJson
{
    /// <summary>The file name.</summary>
    public const string FileName = "adapter_setup.json";

    /// <summary>The JSON bytes of <paramref name="setup"/>.</summary>
    public static byte[] Write(AdapterSetup setup)
    {
        ArgumentNullException.ThrowIfNull(setup);
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WritePropertyName("adapter_setup");
            WriteBlock(w, setup.Kind == AdapterSetupKind.Single ? AdapterSetup.Stack(setup) : setup);
            w.WriteEndObject();
        }

        stream.WriteByte((byte)'\n');
        return stream.ToArray();
    }

    /// <summary>Reads the setup in <paramref name="path"/>; a Stack of one adapter comes back as that adapter.</summary>
    /// <exception cref="InvalidDataException">The file is malformed (named with the block).</exception>
    public static AdapterSetup Read(string path)
    {
        using var document = JsonFiles.Parse(path);
        var block = JsonFiles.Property(document.RootElement, "adapter_setup", path)!.Value;
        var setup = ReadBlock(block, path, "adapter_setup");
        return setup.Kind == AdapterSetupKind.Stack && setup.Children.Count == 1 && setup.Children[0].Kind == AdapterSetupKind.Single ? setup.Children[0] : setup;
    }

    private static void WriteBlock(Utf8JsonWriter w, AdapterSetup setup)
    {
        if (setup.Kind == AdapterSetupKind.Single)
        {
            w.WriteStringValue(setup.Name);
            return;
        }

        w.WriteStartObject();
        w.WriteString("type", setup.Kind.ToString());
        w.WritePropertyName("children");
        w.WriteStartArray();
        foreach (var child in setup.Children)
        {
            WriteBlock(w, child);
        }

        w.WriteEndArray();
        if (setup.Kind == AdapterSetupKind.Average)
        {
            w.WritePropertyName("weights");
            w.WriteStartArray();
            foreach (double x in setup.Weights)
            {
                w.WriteRawValue(x.ToString("R", CultureInfo.InvariantCulture));
            }

            w.WriteEndArray();
        }

        w.WriteEndObject();
    }

    private static AdapterSetup ReadBlock(JsonElement e, string path, string where)
    {
        if (e.ValueKind == JsonValueKind.String)
        {
            var name = e.GetString();
            return string.IsNullOrEmpty(name) ? throw new InvalidDataException($"{path}: {where} is an empty adapter name.") : AdapterSetup.Single(name);
        }

        if (e.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"{path}: {where} must be an adapter name or a block object; found {e.ValueKind}.");
        }

        var type = JsonFiles.String(e, "type", path);
        var childrenElement = JsonFiles.Property(e, "children", path)!.Value;
        if (childrenElement.ValueKind != JsonValueKind.Array)
        {
            throw new InvalidDataException($"{path}: {where}.children must be an array; found {childrenElement.ValueKind}.");
        }

        var children = childrenElement.EnumerateArray().Select((c, i) => ReadBlock(c, path, $"{where}.children[{i}]")).ToArray();
        try
        {
            return type switch
            {
                "Stack" => AdapterSetup.Stack(children),
                "Parallel" => AdapterSetup.Parallel(children),
                "Fuse" => AdapterSetup.Fuse(children),
                "Average" => AdapterSetup.Average(e.TryGetProperty("weights", out var ws) && ws.ValueKind == JsonValueKind.Array
                    ? [.. ws.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number ? x.GetDouble() : throw new InvalidDataException($"{path}: {where}.weights holds {x}, not a number."))]
                    : null, children),
                _ => throw new InvalidDataException($"{path}: {where}.type '{type}' is not supported; use Stack, Parallel, Average or Fuse."),
            };
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"{path}: {where}: {ex.Message}", ex);
        }
    }
}
