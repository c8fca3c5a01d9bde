// A 4-bit quantized tensor in bitsandbytes' layout: packed codes (two per byte, first element
// high nibble), per-block fp32 absmax or, with double quantization, 8-bit absmax codes plus
// fp32 nested absmax per 256 and an fp32 offset; the block size, quant type, original shape
// and dtype. Every CPU 4-bit kernel takes this type; the GPU ones its device upload (a Quant4View).
namespace PeftKernels.Kernels.Cpu;

/// <summary>A 4-bit (NF4/FP4) quantized weight, optionally with double-quantized scales.</summary>
public sealed class QuantizedWeight
{
    private float[]? absmaxCache;

    /// <summary>Creates a quantized weight from its parts, validating every length.</summary>
    public QuantizedWeight(byte[] packed, float[]? absmax, byte[]? nestedCodes, float[]? nestedAbsmax, float nestedOffset,
        int blocksize, Quant4Type type, int[] shape, string dtype)
    {
        ArgumentNullException.ThrowIfNull(packed);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(dtype);
        if (!Quant4.IsValidBlocksize(blocksize))
        {
            throw new ArgumentException($"blocksize must be a power of two in 32..4096, got {blocksize}.", nameof(blocksize));
        }

        if (shape.Any(d => d < 0))
        {
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] has a negative dimension.", nameof(shape));
        }

        long count = shape.Aggregate(1L, (a, d) => a * d);
        int blocks = Quant4.BlockCount(count, blocksize);
        Check.Length("packed", packed.Length, (count + 1) / 2, $"(elements + 1) / 2 for shape [{string.Join(", ", shape)}]");
        if (absmax != null)
        {
            if (nestedCodes != null || nestedAbsmax != null)
            {
                throw new ArgumentException("give either absmax or nestedCodes + nestedAbsmax, not both.", nameof(absmax));
            }

            Check.Length("absmax", absmax.Length, blocks, $"ceil({count} / {blocksize})");
        }
        else
        {
            if (nestedCodes == null || nestedAbsmax == null)
            {
                throw new ArgumentException("absmax is null, so nestedCodes and nestedAbsmax (double quantization) are required.", nameof(nestedCodes));
            }

            Check.Length("nestedCodes", nestedCodes.Length, blocks, $"ceil({count} / {blocksize})");
            Check.Length("nestedAbsmax", nestedAbsmax.Length, Quant4.BlockCount(blocks, Quant4.NestedBlocksize), "ceil(blocks / 256)");
        }

        Packed = packed;
        Absmax = absmax;
        NestedCodes = nestedCodes;
        NestedAbsmax = nestedAbsmax;
        NestedOffset = nestedOffset;
        Blocksize = blocksize;
        Type = type;
        Shape = shape;
        DType = dtype;
        Count = count;
    }

    /// <summary>Packed codes, (Count + 1) / 2 bytes.</summary>
    public byte[] Packed { get; }

    /// <summary>fp32 absmax per block, or null when double-quantized.</summary>
    public float[]? Absmax { get; }

    /// <summary>8-bit codes of the absmax (double quantization), else null.</summary>
    public byte[]? NestedCodes { get; }

    /// <summary>fp32 scale per 256 absmax codes (double quantization), else null.</summary>
    public float[]? NestedAbsmax { get; }

    /// <summary>The mean subtracted from the absmax before nested quantization.</summary>
    public float NestedOffset { get; }

    /// <summary>Elements per block.</summary>
    public int Blocksize { get; }

    /// <summary>NF4 or FP4.</summary>
    public Quant4Type Type { get; }

    /// <summary>The original shape, e.g. [out, in].</summary>
    public int[] Shape { get; }

    /// <summary>The original dtype name as bitsandbytes writes it: "float32", "bfloat16" or "float16".</summary>
    public string DType { get; }

    /// <summary>Number of elements.</summary>
    public long Count { get; }

    /// <summary>True when the scales are double-quantized.</summary>
    public bool IsNested => Absmax == null;

    /// <summary>Bytes of the quantized representation (codes + scales).</summary>
    public long ByteSize => Packed.Length + (Absmax?.Length * 4L ?? (NestedCodes!.Length + (NestedAbsmax!.Length * 4L) + 4));

    /// <summary>Quantizes fp32 values of the given shape.</summary>
    public static QuantizedWeight Quantize(ReadOnlySpan<float> values, int[] shape, Quant4Type type = Quant4Type.Nf4, int blocksize = 64,
        bool doubleQuant = true, string dtype = "float32", KernelOptions options = default)
    {
        var (packed, absmax) = Buffers(values.Length, shape, blocksize);
        Quant4.Quantize(values, packed, absmax, type, blocksize, options);
        return Build(packed, absmax, doubleQuant, blocksize, type, shape, dtype);
    }

    /// <summary>Quantizes bf16 values (bit patterns) of the given shape.</summary>
    public static QuantizedWeight Quantize(ReadOnlySpan<ushort> valuesBf16, int[] shape, Quant4Type type = Quant4Type.Nf4, int blocksize = 64,
        bool doubleQuant = true, KernelOptions options = default)
    {
        var (packed, absmax) = Buffers(valuesBf16.Length, shape, blocksize);
        Quant4.Quantize(valuesBf16, packed, absmax, type, blocksize, options);
        return Build(packed, absmax, doubleQuant, blocksize, type, shape, "bfloat16");
    }

    /// <summary>Quantizes fp16 values of the given shape.</summary>
    public static QuantizedWeight Quantize(ReadOnlySpan<Half> valuesF16, int[] shape, Quant4Type type = Quant4Type.Nf4, int blocksize = 64,
        bool doubleQuant = true, KernelOptions options = default)
    {
        var (packed, absmax) = Buffers(valuesF16.Length, shape, blocksize);
        Quant4.Quantize(valuesF16, packed, absmax, type, blocksize, options);
        return Build(packed, absmax, doubleQuant, blocksize, type, shape, "float16");
    }

    /// <summary>The fp32 absmax per block (reconstructed once from the nested codes when double-quantized).</summary>
    public float[] AbsmaxFp32()
    {
        if (Absmax != null)
        {
            return Absmax;
        }

        if (absmaxCache == null)
        {
            var values = new float[NestedCodes!.Length];
            Quant4.DequantizeNested(NestedCodes, NestedAbsmax, NestedOffset, values);
            absmaxCache = values;
        }

        return absmaxCache;
    }

    /// <summary>Dequantizes into fp32.</summary>
    public float[] Dequantize(KernelOptions options = default)
    {
        var result = new float[Count];
        Quant4.Dequantize(Packed, AbsmaxFp32(), Type, Blocksize, result, options);
        return result;
    }

    private static (byte[] Packed, float[] Absmax) Buffers(int count, int[] shape, int blocksize)
    {
        ArgumentNullException.ThrowIfNull(shape);
        long expected = shape.Aggregate(1L, (a, d) => a * d);
        if (expected != count)
        {
            throw new ArgumentException($"values has {count} elements but shape [{string.Join(", ", shape)}] needs {expected}.", nameof(shape));
        }

        if (!Quant4.IsValidBlocksize(blocksize))
        {
            throw new ArgumentException($"blocksize must be a power of two in 32..4096, got {blocksize}.", nameof(blocksize));
        }

        return (new byte[(count + 1) / 2], new float[Quant4.BlockCount(count, blocksize)]);
    }

    private static QuantizedWeight Build(byte[] packed, float[] absmax, bool doubleQuant, int blocksize, Quant4Type type, int[] shape, string dtype)
    {
        if (!doubleQuant)
        {
            return new QuantizedWeight(packed, absmax, null, null, 0f, blocksize, type, (int[])shape.Clone(), dtype);
        }

        var codes = new byte[absmax.Length];
        var nested = new float[Quant4.BlockCount(absmax.Length, Quant4.NestedBlocksize)];
        float offset = Quant4.QuantizeNested(absmax, codes, nested);
        return new QuantizedWeight(packed, null, codes, nested, offset, blocksize, type, (int[])shape.Clone(), dtype);
    }
}
