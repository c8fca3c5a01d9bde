// The JSON object bitsandbytes stores (as UTF-8 bytes in a U8 tensor) under
// "<weight>.quant_state.bitsandbytes__nf4|fp4": QuantState.as_dict(packed=True) keeps the
// non-tensor entries in insertion order and writes them with Python's json.dumps defaults:
//   {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096],
//    "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012299999594688416}
// (the last three only when double-quantized). nested_offset is the fp32 offset widened to a
// double and printed as Python's repr(float) does (shortest round-trip digits; exponent form
// "1e-05" when the decimal exponent is < -4 or >= 16), so reading it back as fp32 is exact.
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Quantization;

/// <summary>The non-tensor fields of a bitsandbytes 4-bit QuantState; <see cref="NestedOffset"/> is null when not double-quantized.</summary>
internal sealed record BnbQuantState(Quant4Type Type, int Blocksize, string DType, int[] Shape, float? NestedOffset)
{
    public const int NestedBlocksize = Quant4.NestedBlocksize;

    public const string NestedDType = "float32";

    public static readonly string[] DTypes = ["float32", "bfloat16", "float16"];

    private static readonly string[] Required = ["quant_type", "blocksize", "dtype", "shape"];

    private static readonly string[] Nested = ["nested_blocksize", "nested_dtype", "nested_offset"];

    public static string TypeName(Quant4Type type) => type == Quant4Type.Nf4 ? "nf4" : "fp4";

    public byte[] ToUtf8()
    {
        var json = new StringBuilder();
        json.Append(CultureInfo.InvariantCulture, $"{{\"quant_type\": \"{TypeName(Type)}\", \"blocksize\": {Blocksize}, ");
        json.Append(CultureInfo.InvariantCulture, $"\"dtype\": \"{DType}\", \"shape\": [{string.Join(", ", Shape)}]");
        if (NestedOffset is float offset)
        {
            json.Append(CultureInfo.InvariantCulture, $", \"nested_blocksize\": {NestedBlocksize}, \"nested_dtype\": \"{NestedDType}\", ");
            json.Append(CultureInfo.InvariantCulture, $"\"nested_offset\": {PythonRepr(offset)}");
        }

        json.Append('}');
        return Encoding.UTF8.GetBytes(json.ToString());
    }

    /// <summary>Parses and validates the JSON; <paramref name="where"/> ("file: 'key'") prefixes every error.</summary>
    public static BnbQuantState Parse(ReadOnlySpan<byte> utf8, string where)
    {
        if (!Utf8.IsValid(utf8))
        {
            throw Bad(where, "is not valid UTF-8.");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(utf8.ToArray());
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{where} is not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw Bad(where, $"must hold a JSON object; got {root.ValueKind}.");
            }

            var fields = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            foreach (var property in root.EnumerateObject())
            {
                if (!Required.Contains(property.Name) && !Nested.Contains(property.Name))
                {
                    throw Bad(where, $"has the unknown field '{property.Name}'; expected {string.Join(", ", Required.Concat(Nested))}.");
                }

                if (!fields.TryAdd(property.Name, property.Value.Clone()))
                {
                    throw Bad(where, $"has the field '{property.Name}' twice.");
                }
            }

            string[] missing = [.. Required.Where(f => !fields.ContainsKey(f))];
            if (missing.Length > 0)
            {
                throw Bad(where, $"lacks the field(s) {string.Join(", ", missing)}.");
            }

            string[] nestedMissing = [.. Nested.Where(f => !fields.ContainsKey(f))];
            if (nestedMissing.Length is > 0 and < 3)
            {
                throw Bad(where, $"has only some double-quantization fields: {string.Join(", ", nestedMissing)} missing.");
            }

            string quantType = ReadString(fields, "quant_type", where);
            var type = quantType switch
            {
                "nf4" => Quant4Type.Nf4,
                "fp4" => Quant4Type.Fp4,
                _ => throw Bad(where, $"has quant_type \"{quantType}\"; expected \"nf4\" or \"fp4\"."),
            };
            int blocksize = ReadInteger(fields, "blocksize", where);
            if (!Quant4.IsValidBlocksize(blocksize))
            {
                throw Bad(where, $"has blocksize {blocksize}; expected a power of two in 32..4096.");
            }

            string dtype = ReadString(fields, "dtype", where);
            if (!DTypes.Contains(dtype))
            {
                throw Bad(where, $"has dtype \"{dtype}\"; expected one of {string.Join(", ", DTypes)}.");
            }

            return new BnbQuantState(type, blocksize, dtype, ParseShape(fields["shape"], where), nestedMissing.Length == 0 ? Offset(fields, where) : null);
        }
    }

    /// <summary>Python's repr() of a float (shortest round-trip digits, Python's choice of fixed or exponent form).</summary>
    internal static string PythonRepr(double value)
    {
        if (!double.IsFinite(value))
        {
            throw new ArgumentException($"nested_offset must be finite, got {value}.", nameof(value));
        }

        if (value == 0)
        {
            return double.IsNegative(value) ? "-0.0" : "0.0";
        }

        string shortest = Math.Abs(value).ToString("R", CultureInfo.InvariantCulture);
        int e = shortest.IndexOf('E');
        string mantissa = e < 0 ? shortest : shortest[..e];
        int exponent = e < 0 ? 0 : int.Parse(shortest[(e + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        int dot = mantissa.IndexOf('.');
        string digits = dot < 0 ? mantissa : mantissa.Remove(dot, 1);
        int point = (dot < 0 ? mantissa.Length : dot) + exponent;
        int leadingZeros = digits.Length - digits.TrimStart('0').Length;
        digits = digits.Trim('0');
        point -= leadingZeros;

        string body;
        if (point is > -4 and <= 16)
        {
            body = point <= 0 ? "0." + new string('0', -point) + digits
                : point >= digits.Length ? digits + new string('0', point - digits.Length) + ".0"
                : digits[..point] + "." + digits[point..];
        }
        else
        {
            int exp = point - 1;
            body = digits[..1] + (digits.Length > 1 ? "." + digits[1..] : "")
                + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00", CultureInfo.InvariantCulture);
        }

        return value < 0 ? "-" + body : body;
    }

    private static float Offset(Dictionary<string, JsonElement> fields, string where)
    {
        int nestedBlocksize = ReadInteger(fields, "nested_blocksize", where);
        if (nestedBlocksize != NestedBlocksize)
        {
            throw Bad(where, $"has nested_blocksize {nestedBlocksize}; expected {NestedBlocksize}.");
        }

        string nestedDType = ReadString(fields, "nested_dtype", where);
        if (nestedDType != NestedDType)
        {
            throw Bad(where, $"has nested_dtype \"{nestedDType}\"; expected \"{NestedDType}\".");
        }

        var element = fields["nested_offset"];
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetDouble(out double wide) || !float.IsFinite((float)wide))
        {
            throw Bad(where, $"field 'nested_offset' must be a finite fp32 number; got {element.GetRawText()}.");
        }

        return (float)wide;
    }

    private static int[] ParseShape(JsonElement element, string where)
    {
        if (element.ValueKind != JsonValueKind.Array)
        {
            throw Bad(where, $"field 'shape' must be an array of integers; got {element.GetRawText()}.");
        }

        var shape = new List<int>();
        foreach (var dim in element.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt32(out int d) || d < 0)
            {
                throw Bad(where, $"field 'shape' must hold integers in 0..{int.MaxValue}; got {element.GetRawText()}.");
            }

            shape.Add(d);
        }

        // Two codes per byte, and the packed codes must fit in one array.
        long maxElements = 2L * Array.MaxLength, count = 1;
        foreach (int d in shape)
        {
            count = count == 0 || d <= maxElements / count
                ? count * d
                : throw Bad(where, $"field 'shape' {element.GetRawText()} has more than {maxElements} elements.");
        }

        return [.. shape];
    }

    private static string ReadString(Dictionary<string, JsonElement> fields, string name, string where) =>
        fields[name].ValueKind == JsonValueKind.String
            ? fields[name].GetString()!
            : throw Bad(where, $"field '{name}' must be a string; got {fields[name].GetRawText()}.");

    private static int ReadInteger(Dictionary<string, JsonElement> fields, string name, string where) =>
        fields[name].ValueKind == JsonValueKind.Number && fields[name].TryGetInt32(out int value)
            ? value
            : throw Bad(where, $"field '{name}' must be an integer; got {fields[name].GetRawText()}.");

    private static InvalidDataException Bad(string where, string message) => new($"{where} {message}");
}
