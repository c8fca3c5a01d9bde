// Writes the safetensors layout (see SafeTensorsHeader.cs) the way the Python/Rust library
// does: compact JSON header, "__metadata__" first, then each tensor as
// {"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}; offsets contiguous from 0; the header
// padded with spaces so that 8 + N is a multiple of 8. Tensors are written in the order
// given (deterministic; the Rust library instead sorts by dtype then name, so the bytes match
// its output when the caller passes tensors in that order); metadata keys in ordinal order.
using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace PeftKernels.IO;

/// <summary>Writes safetensors files atomically.</summary>
public static class SafeTensorsWriter
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>
    /// Writes <paramref name="tensors"/> (in the order given) and optional string metadata to
    /// <paramref name="path"/>, replacing any existing file only once the new one is complete.
    /// </summary>
    /// <exception cref="ArgumentException">A duplicate or reserved name, or a null tensor or metadata value.</exception>
    public static void Write(string path, IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        byte[] header = Header(list, metadata);
        AtomicFile.Write(path, stream =>
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            stream.Write(length);
            stream.Write(header);
            foreach (var tensor in list)
            {
                stream.Write(tensor.Data.Span);
            }
        });
    }

    /// <summary>The padded UTF-8 header for these tensors, without the 8-byte length.</summary>
    internal static byte[] Header(IReadOnlyList<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var json = new StringBuilder("{");
        if (metadata != null)
        {
            json.Append($"\"{SafeTensorsHeader.MetadataKey}\":{{");
            bool first = true;
            foreach (var (key, value) in metadata.OrderBy(e => e.Key, StringComparer.Ordinal))
            {
                if (value == null)
                {
                    throw new ArgumentException($"metadata '{key}' has a null value; safetensors metadata is string → string.", nameof(metadata));
                }

                json.Append(first ? "" : ",");
                AppendString(json, key);
                json.Append(':');
                AppendString(json, value);
                first = false;
            }

            json.Append('}');
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        long offset = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var tensor = tensors[i] ?? throw new ArgumentException($"tensor {i} is null.", nameof(tensors));
            if (tensor.Name == SafeTensorsHeader.MetadataKey)
            {
                throw new ArgumentException($"tensor {i} is named '{SafeTensorsHeader.MetadataKey}', which is reserved for metadata.", nameof(tensors));
            }

            if (!names.Add(tensor.Name))
            {
                throw new ArgumentException($"tensor name '{tensor.Name}' appears twice (second time at position {i}).", nameof(tensors));
            }

            json.Append(json.Length == 1 ? "" : ",");
            AppendString(json, tensor.Name);
            json.Append(":{\"dtype\":\"").Append(tensor.DType.HeaderName()).Append("\",\"shape\":[");
            json.AppendJoin(',', tensor.Shape.Select(d => d.ToString(CultureInfo.InvariantCulture)));
            long end = offset + tensor.Data.Length;
            json.Append(CultureInfo.InvariantCulture, $"],\"data_offsets\":[{offset},{end}]}}");
            offset = end;
        }

        json.Append('}');
        byte[] utf8;
        try
        {
            utf8 = StrictUtf8.GetBytes(json.ToString());
        }
        catch (EncoderFallbackException e)
        {
            throw new ArgumentException($"a tensor name or metadata string is not valid Unicode (lone surrogate): {e.Message}", nameof(tensors), e);
        }

        int padded = utf8.Length + ((8 - ((utf8.Length + 8) % 8)) % 8);
        var header = new byte[padded];
        utf8.CopyTo(header, 0);
        header.AsSpan(utf8.Length).Fill((byte)' ');
        return header;
    }

    /// <summary>A JSON string escaped as serde_json does: quote, backslash and control characters only.</summary>
    private static void AppendString(StringBuilder json, string value)
    {
        json.Append('"');
        foreach (char c in value)
        {
            switch (c)
            {
                case '"': json.Append("\\\""); break;
                case '\\': json.Append("\\\\"); break;
                case '\b': json.Append("\\b"); break;
                case '\f': json.Append("\\f"); break;
                case '\n': json.Append("\\n"); break;
                case '\r': json.Append("\\r"); break;
                case '\t': json.Append("\\t"); break;
                case < ' ': json.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}"); break;
                default: json.Append(c); break;
            }
        }

        json.Append('"');
    }
}
