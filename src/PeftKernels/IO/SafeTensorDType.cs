// safetensors element types: the exact header strings of the format ("F32", "BF16", "BOOL", …)
// and their sizes in bytes. Data is always little-endian, row-major, densely packed, so a
// tensor occupies prod(shape) × ElementSize bytes.
namespace PeftKernels.IO;

/// <summary>An element type of the safetensors format (header string in each member's summary).</summary>
public enum SafeTensorDType
{
    /// <summary>"F64": IEEE binary64.</summary>
    F64,

    /// <summary>"F32": IEEE binary32.</summary>
    F32,

    /// <summary>"F16": IEEE binary16.</summary>
    F16,

    /// <summary>"BF16": bfloat16 (upper 16 bits of an fp32).</summary>
    BF16,

    /// <summary>"F8_E4M3": 8-bit float, 4 exponent and 3 mantissa bits.</summary>
    F8E4M3,

    /// <summary>"F8_E5M2": 8-bit float, 5 exponent and 2 mantissa bits.</summary>
    F8E5M2,

    /// <summary>"I64": signed 64-bit integer.</summary>
    I64,

    /// <summary>"I32": signed 32-bit integer.</summary>
    I32,

    /// <summary>"I16": signed 16-bit integer.</summary>
    I16,

    /// <summary>"I8": signed 8-bit integer.</summary>
    I8,

    /// <summary>"U64": unsigned 64-bit integer.</summary>
    U64,

    /// <summary>"U32": unsigned 32-bit integer.</summary>
    U32,

    /// <summary>"U16": unsigned 16-bit integer.</summary>
    U16,

    /// <summary>"U8": unsigned 8-bit integer.</summary>
    U8,

    /// <summary>"BOOL": one byte per element, 0 or 1.</summary>
    Bool,
}

/// <summary>Header names and element sizes of <see cref="SafeTensorDType"/>.</summary>
public static class SafeTensorDTypes
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F64 or SafeTensorDType.I64 or SafeTensorDType.U64 => 8,
        SafeTensorDType.F32 or SafeTensorDType.I32 or SafeTensorDType.U32 => 4,
        SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.I16 or SafeTensorDType.U16 => 2,
        SafeTensorDType.F8E4M3 or SafeTensorDType.F8E5M2 or SafeTensorDType.I8 or SafeTensorDType.U8 or SafeTensorDType.Bool => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype."),
    };

    /// <summary>The string the header uses for this dtype, e.g. "F32", "BF16", "BOOL".</summary>
    public static string HeaderName(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F8E4M3 => "F8_E4M3",
        SafeTensorDType.F8E5M2 => "F8_E5M2",
        SafeTensorDType.Bool => "BOOL",
        _ when Enum.IsDefined(dtype) => dtype.ToString(),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype."),
    };

    /// <summary>Parses a header dtype string (exact, case-sensitive, as the format defines it).</summary>
    public static bool TryParse(string headerName, out SafeTensorDType dtype)
    {
        foreach (var candidate in Enum.GetValues<SafeTensorDType>())
        {
            if (candidate.HeaderName() == headerName)
            {
                dtype = candidate;
                return true;
            }
        }

        dtype = default;
        return false;
    }

    /// <summary>All header names, for error messages.</summary>
    internal static string KnownNames => string.Join(", ", Enum.GetValues<SafeTensorDType>().Select(d => d.HeaderName()));
}
