// Parsing and validation of a safetensors header:
//   bytes [0, 8): N, little-endian u64; bytes [8, 8 + N): UTF-8 JSON object, optionally
//   padded with trailing spaces; bytes [8 + N, end): the data section.
//   {"__metadata__": {string: string}, "<name>": {"dtype": "F32", "shape": [d0, ..],
//    "data_offsets": [begin, end]}, ...}
// Offsets are relative to the data section; 0 <= begin <= end <= data length,
// end - begin = prod(shape) × element size, and no two tensors overlap.
using System.Text.Json;
using System.Text.Unicode;

namespace PeftKernels.IO;

/// <summary>Where one tensor lies in a safetensors file and what it holds.</summary>
/// <param name="Name">The key in the file.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, outermost first ([] for a scalar).</param>
/// <param name="Begin">Start of the bytes, relative to the data section.</param>
/// <param name="ByteLength">Number of bytes: prod(shape) × element size.</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, IReadOnlyList<long> Shape, long Begin, long ByteLength)
{
    /// <summary>Number of elements: prod(shape).</summary>
    public long ElementCount => ByteLength / DType.ElementSize();
}

internal static class SafeTensorsHeader
{
    /// <summary>The largest header the Python/Rust safetensors library accepts.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public const string MetadataKey = "__metadata__";

    public static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata) Parse(
        ReadOnlySpan<byte> header, long dataLength, string file)
    {
        if (!Utf8.IsValid(header))
        {
            throw Bad(file, "the header is not valid UTF-8.");
        }

        if (header[0] != (byte)'{')
        {
            throw Bad(file, $"the header must start with '{{' (a JSON object); it starts with byte 0x{header[0]:X2}.");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header.ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{file}: the header is not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            var tensors = new List<SafeTensorInfo>();
            Dictionary<string, string>? metadata = null;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                {
                    throw Bad(file, $"the header has the key '{property.Name}' twice.");
                }

                if (property.Name == MetadataKey)
                {
                    metadata = ParseMetadata(property.Value, file);
                }
                else
                {
                    tensors.Add(ParseTensor(property.Name, property.Value, dataLength, file));
                }
            }

            CheckOverlaps(tensors, file);
            return (tensors, metadata ?? []);
        }
    }

    private static Dictionary<string, string> ParseMetadata(JsonElement value, string file)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Bad(file, $"'{MetadataKey}' must be a JSON object of string → string; got {Kind(value)}.");
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw Bad(file, $"'{MetadataKey}' entry '{entry.Name}' must be a string; got {Kind(entry.Value)}.");
            }

            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
            {
                throw Bad(file, $"'{MetadataKey}' has the key '{entry.Name}' twice.");
            }
        }

        return metadata;
    }

    private static SafeTensorInfo ParseTensor(string name, JsonElement value, long dataLength, string file)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Bad(file, $"tensor '{name}': the entry must be a JSON object; got {Kind(value)}.");
        }

        var dtypeElement = Field(value, name, "dtype", file);
        var shapeElement = Field(value, name, "shape", file);
        var offsetsElement = Field(value, name, "data_offsets", file);
        if (dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw Bad(file, $"tensor '{name}': 'dtype' must be a string; got {Kind(dtypeElement)}.");
        }

        string dtypeName = dtypeElement.GetString()!;
        if (!SafeTensorDTypes.TryParse(dtypeName, out var dtype))
        {
            throw Bad(file, $"tensor '{name}': unknown dtype \"{dtypeName}\"; expected one of {SafeTensorDTypes.KnownNames}.");
        }

        long[] shape = Integers(shapeElement, name, "shape", file);
        if (shape.Any(d => d < 0))
        {
            throw Bad(file, $"tensor '{name}': shape [{string.Join(", ", shape)}] has a negative dimension.");
        }

        long[] offsets = Integers(offsetsElement, name, "data_offsets", file);
        if (offsets.Length != 2)
        {
            throw Bad(file, $"tensor '{name}': 'data_offsets' must be [begin, end]; got {offsets.Length} numbers.");
        }

        long begin = offsets[0], end = offsets[1];
        if (begin < 0 || begin > end || end > dataLength)
        {
            throw Bad(file, $"tensor '{name}': data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end <= {dataLength} (the data section length).");
        }

        long expected = ExpectedBytes(shape, dtype);
        if (end - begin != expected)
        {
            throw Bad(file, $"tensor '{name}': data_offsets [{begin}, {end}] hold {end - begin} bytes but {dtypeName} "
                + $"shape [{string.Join(", ", shape)}] needs {(expected < 0 ? "more than 2^63" : expected.ToString())} bytes.");
        }

        return new SafeTensorInfo(name, dtype, shape, begin, end - begin);
    }

    private static void CheckOverlaps(List<SafeTensorInfo> tensors, string file)
    {
        var ordered = tensors.OrderBy(t => t.Begin).ThenBy(t => t.ByteLength).ToList();
        for (int i = 1; i < ordered.Count; i++)
        {
            var previous = ordered[i - 1];
            var current = ordered[i];
            if (current.Begin < previous.Begin + previous.ByteLength)
            {
                throw Bad(file, $"tensors '{previous.Name}' [{previous.Begin}, {previous.Begin + previous.ByteLength}) and "
                    + $"'{current.Name}' [{current.Begin}, {current.Begin + current.ByteLength}) overlap.");
            }
        }
    }

    /// <summary>prod(shape) × element size, or −1 when it does not fit in 63 bits.</summary>
    private static long ExpectedBytes(long[] shape, SafeTensorDType dtype)
    {
        try
        {
            return checked(shape.Aggregate(1L, (a, d) => a * d) * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            return -1;
        }
    }

    private static JsonElement Field(JsonElement entry, string name, string field, string file) =>
        entry.TryGetProperty(field, out var value)
            ? value
            : throw Bad(file, $"tensor '{name}': the entry has no '{field}'.");

    private static long[] Integers(JsonElement value, string name, string field, string file)
    {
        if (value.ValueKind != JsonValueKind.Array)
        {
            throw Bad(file, $"tensor '{name}': '{field}' must be an array of integers; got {Kind(value)}.");
        }

        var result = new long[value.GetArrayLength()];
        int i = 0;
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out result[i]))
            {
                throw Bad(file, $"tensor '{name}': '{field}'[{i}] must be an integer; got {item.GetRawText()}.");
            }

            i++;
        }

        return result;
    }

    private static string Kind(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => value.ValueKind.ToString(),
    };

    private static InvalidDataException Bad(string file, string message) => new($"{file}: {message}");
}
