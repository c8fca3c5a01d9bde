// Read access to a safetensors file (layout: see SafeTensorsHeader.cs), memory-mapped
// read-only: the header is parsed and validated once on open, tensor bytes are spans over
// the mapping (no copy) that stay valid until the file is disposed. Conversions to fp32
// are exact: F16 → fp32 by IEEE widening, BF16 → fp32 by bits << 16.
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace PeftKernels.IO;

/// <summary>A safetensors file opened memory-mapped for reading.</summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    private readonly MemoryMappedFile mapping;
    private readonly MemoryMappedViewAccessor view;
    private readonly Dictionary<string, SafeTensorInfo> byName;
    private readonly long dataStart;
    private byte* basePointer;

    private SafeTensorsFile(string path, MemoryMappedFile mapping, MemoryMappedViewAccessor view, byte* basePointer,
        List<SafeTensorInfo> tensors, Dictionary<string, string> metadata, long dataStart)
    {
        Path = path;
        this.mapping = mapping;
        this.view = view;
        this.basePointer = basePointer;
        this.dataStart = dataStart;
        Names = [.. tensors.Select(t => t.Name)];
        byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        Metadata = metadata;
    }

    /// <summary>The path the file was opened from.</summary>
    public string Path { get; }

    /// <summary>Tensor names in header order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>The "__metadata__" entries (empty when the header has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <exception cref="InvalidDataException">The file is not a valid safetensors file; the message says why.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        MemoryMappedFile? mapping = null;
        MemoryMappedViewAccessor? view = null;
        byte* pointer = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
            {
                throw new InvalidDataException($"{path}: the file is {length} bytes long; a safetensors file needs at least 8 (the header length).");
            }

            mapping = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = mapping.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            pointer += view.PointerOffset;
            var (tensors, metadata, dataStart) = ParseLayout(pointer, length, path);
            return new SafeTensorsFile(path, mapping, view, pointer, tensors, metadata, dataStart);
        }
        catch
        {
            if (pointer != null)
            {
                view!.SafeMemoryMappedViewHandle.ReleasePointer();
            }

            view?.Dispose();
            mapping?.Dispose();
            stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads and validates the header of the <paramref name="length"/>-byte file at <paramref name="file"/>:
    /// the tensors, the metadata and where the data section starts. The header length is checked
    /// against <see cref="SafeTensorsHeader.MaxHeaderBytes"/> and the file length before any byte of it is read.
    /// </summary>
    internal static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata, long DataStart) ParseLayout(byte* file, long length, string path)
    {
        if (length < 8)
        {
            throw new InvalidDataException($"{path}: the file is {length} bytes long; a safetensors file needs at least 8 (the header length).");
        }

        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(file, 8));
        if (headerLength == 0)
        {
            throw new InvalidDataException($"{path}: the header length is 0; expected a JSON object of at least 2 bytes.");
        }

        if (headerLength > SafeTensorsHeader.MaxHeaderBytes)
        {
            throw new InvalidDataException($"{path}: the header length {headerLength} exceeds the limit of {SafeTensorsHeader.MaxHeaderBytes} bytes.");
        }

        if (8 + (long)headerLength > length)
        {
            throw new InvalidDataException($"{path}: the header length is {headerLength} but the file has only {length - 8} bytes after the 8-byte length.");
        }

        long dataStart = 8 + (long)headerLength;
        var (tensors, metadata) = SafeTensorsHeader.Parse(new ReadOnlySpan<byte>(file + 8, (int)headerLength), length - dataStart, path);
        return (tensors, metadata, dataStart);
    }

    /// <summary>True when the file has a tensor of this name.</summary>
    public bool Contains(string name) => byName.ContainsKey(name);

    /// <summary>The dtype, shape and location of a tensor, or false when the file has none of this name.</summary>
    public bool TryGetInfo(string name, [NotNullWhen(true)] out SafeTensorInfo? info) =>
        byName.TryGetValue(name, out info);

    /// <summary>The dtype, shape and location of a tensor.</summary>
    /// <exception cref="KeyNotFoundException">No tensor of this name.</exception>
    public SafeTensorInfo GetInfo(string name) =>
        byName.TryGetValue(name, out var info)
            ? info
            : throw new KeyNotFoundException($"{Path}: no tensor '{name}' (the file has {byName.Count} tensors).");

    /// <summary>The raw little-endian bytes of a tensor, without copying; valid until the file is disposed.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var info = GetInfo(name);
        ObjectDisposedException.ThrowIf(basePointer == null, this);
        if (info.ByteLength > int.MaxValue)
        {
            throw new NotSupportedException($"{Path}: tensor '{name}' is {info.ByteLength} bytes; a span holds at most {int.MaxValue}.");
        }

        return new ReadOnlySpan<byte>(basePointer + dataStart + info.Begin, (int)info.ByteLength);
    }

    /// <summary>A copy of the raw bytes of a tensor (any dtype).</summary>
    public byte[] ReadBytes(string name) => GetBytes(name).ToArray();

    /// <summary>A BF16 tensor as bf16 bit patterns.</summary>
    /// <exception cref="InvalidDataException">The tensor is not BF16.</exception>
    public ushort[] ReadBf16Bits(string name)
    {
        RequireDType(name, SafeTensorDType.BF16);
        return ReadUInt16(GetBytes(name));
    }

    /// <summary>An F16 tensor as fp16 values.</summary>
    /// <exception cref="InvalidDataException">The tensor is not F16.</exception>
    public Half[] ReadHalf(string name)
    {
        RequireDType(name, SafeTensorDType.F16);
        return Array.ConvertAll(ReadUInt16(GetBytes(name)), BitConverter.UInt16BitsToHalf);
    }

    /// <summary>An F32, F16 or BF16 tensor converted (exactly) to fp32.</summary>
    /// <exception cref="InvalidDataException">The tensor has another dtype.</exception>
    public float[] ReadFloat32(string name)
    {
        var info = GetInfo(name);
        var bytes = GetBytes(name);
        switch (info.DType)
        {
            case SafeTensorDType.F32:
                var floats = new float[bytes.Length / sizeof(float)];
                bytes.CopyTo(MemoryMarshal.AsBytes(floats.AsSpan()));
                if (!BitConverter.IsLittleEndian)
                {
                    var words = MemoryMarshal.Cast<float, uint>(floats.AsSpan());
                    BinaryPrimitives.ReverseEndianness(words, words);
                }

                return floats;
            case SafeTensorDType.F16:
                return Array.ConvertAll(ReadUInt16(bytes), h => (float)BitConverter.UInt16BitsToHalf(h));
            case SafeTensorDType.BF16:
                return Array.ConvertAll(ReadUInt16(bytes), b => BitConverter.UInt32BitsToSingle((uint)b << 16));
            default:
                throw new InvalidDataException($"{Path}: tensor '{name}' is {info.DType.HeaderName()}; expected F32, F16 or BF16 to read as fp32.");
        }
    }

    /// <summary>Unmaps the file; spans from <see cref="GetBytes"/> must not be used afterwards.</summary>
    public void Dispose()
    {
        if (basePointer != null)
        {
            basePointer = null;
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            mapping.Dispose();
        }
    }

    private void RequireDType(string name, SafeTensorDType expected)
    {
        var actual = GetInfo(name).DType;
        if (actual != expected)
        {
            throw new InvalidDataException($"{Path}: tensor '{name}' is {actual.HeaderName()}; expected {expected.HeaderName()}.");
        }
    }

    private static ushort[] ReadUInt16(ReadOnlySpan<byte> bytes)
    {
        var values = new ushort[bytes.Length / sizeof(ushort)];
        bytes.CopyTo(MemoryMarshal.AsBytes(values.AsSpan()));
        if (!BitConverter.IsLittleEndian)
        {
            BinaryPrimitives.ReverseEndianness(values, values);
        }

        return values;
    }
}
