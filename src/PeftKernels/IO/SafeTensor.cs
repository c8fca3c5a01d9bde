// One tensor to be written to a safetensors file: name, dtype, shape and its raw bytes,
// little-endian, row-major, exactly prod(shape) × ElementSize(dtype) long (a scalar has
// shape [] and one element; a zero-size dimension gives an empty tensor).
using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace PeftKernels.IO;

/// <summary>A named tensor in safetensors form: dtype, shape and raw little-endian bytes.</summary>
public sealed record SafeTensor
{
    /// <summary>Creates a tensor, checking that <paramref name="data"/> has exactly prod(shape) × element size bytes.</summary>
    /// <exception cref="ArgumentException">Empty name, negative dimension, or a byte length that does not match the shape.</exception>
    public SafeTensor(string name, SafeTensorDType dtype, ReadOnlySpan<long> shape, ReadOnlyMemory<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0)
        {
            throw new ArgumentException("tensor name must not be empty.", nameof(name));
        }

        int elementSize = dtype.ElementSize();
        long count = ElementCount(name, shape);
        long expected = count > long.MaxValue / elementSize
            ? throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape.ToArray())}] is too large.", nameof(shape))
            : count * elementSize;
        if (data.Length != expected)
        {
            throw new ArgumentException(
                $"tensor '{name}' ({dtype.HeaderName()}, shape [{string.Join(", ", shape.ToArray())}]) needs {expected} bytes "
                + $"(prod(shape) {count} × {elementSize}); got {data.Length}.", nameof(data));
        }

        Name = name;
        DType = dtype;
        Shape = shape.ToArray();
        Data = data;
    }

    /// <summary>Creates a tensor with an <see cref="int"/> shape.</summary>
    public SafeTensor(string name, SafeTensorDType dtype, ReadOnlySpan<int> shape, ReadOnlyMemory<byte> data)
        : this(name, dtype, Widen(shape), data)
    {
    }

    /// <summary>The key in the file.</summary>
    public string Name { get; }

    /// <summary>Element type.</summary>
    public SafeTensorDType DType { get; }

    /// <summary>Dimensions, outermost first ([] for a scalar).</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>Raw little-endian row-major bytes.</summary>
    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>An F32 tensor (values copied).</summary>
    public static SafeTensor FromFloat32(string name, ReadOnlySpan<float> values, params ReadOnlySpan<long> shape) =>
        new(name, SafeTensorDType.F32, shape, LittleEndianBytes(values));

    /// <summary>A BF16 tensor from bf16 bit patterns (values copied).</summary>
    public static SafeTensor FromBf16Bits(string name, ReadOnlySpan<ushort> bits, params ReadOnlySpan<long> shape) =>
        new(name, SafeTensorDType.BF16, shape, LittleEndianBytes(bits));

    /// <summary>An F16 tensor (values copied).</summary>
    public static SafeTensor FromHalf(string name, ReadOnlySpan<Half> values, params ReadOnlySpan<long> shape) =>
        new(name, SafeTensorDType.F16, shape, LittleEndianBytes(MemoryMarshal.Cast<Half, ushort>(values)));

    /// <summary>A U8 tensor over <paramref name="values"/> (not copied: the array must not change until written).</summary>
    public static SafeTensor FromUInt8(string name, byte[] values, params ReadOnlySpan<long> shape) =>
        new(name, SafeTensorDType.U8, shape, values);

    internal static long ElementCount(string name, ReadOnlySpan<long> shape)
    {
        long count = 1;
        foreach (long d in shape)
        {
            if (d < 0)
            {
                throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape.ToArray())}] has a negative dimension.", nameof(shape));
            }

            if (d != 0 && count > long.MaxValue / d)
            {
                throw new ArgumentException($"tensor '{name}': shape [{string.Join(", ", shape.ToArray())}] overflows 64 bits.", nameof(shape));
            }

            count *= d;
        }

        return count;
    }

    private static long[] Widen(ReadOnlySpan<int> shape)
    {
        var wide = new long[shape.Length];
        for (int i = 0; i < shape.Length; i++)
        {
            wide[i] = shape[i];
        }

        return wide;
    }

    private static byte[] LittleEndianBytes(ReadOnlySpan<float> values) =>
        LittleEndianBytes(MemoryMarshal.Cast<float, uint>(values));

    private static byte[] LittleEndianBytes(ReadOnlySpan<uint> values)
    {
        var bytes = new byte[values.Length * sizeof(uint)];
        var words = MemoryMarshal.Cast<byte, uint>(bytes.AsSpan());
        values.CopyTo(words);
        if (!BitConverter.IsLittleEndian)
        {
            BinaryPrimitives.ReverseEndianness(words, words);
        }

        return bytes;
    }

    private static byte[] LittleEndianBytes(ReadOnlySpan<ushort> values)
    {
        var bytes = new byte[values.Length * sizeof(ushort)];
        var halves = MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
        values.CopyTo(halves);
        if (!BitConverter.IsLittleEndian)
        {
            BinaryPrimitives.ReverseEndianness(halves, halves);
        }

        return bytes;
    }
}
