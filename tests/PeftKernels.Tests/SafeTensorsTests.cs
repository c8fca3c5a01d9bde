using System.Buffers;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using PeftKernels.IO;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>safetensors writer and reader: known bytes, round trips, conversions, writer checks, atomic writes.</summary>
public sealed class SafeTensorsTests : IDisposable
{
    // One F32 tensor x = [1, -2] with metadata {"format": "pt"}, exactly as the Python
    // safetensors library lays it out: u64 N = 88 (85 bytes of compact JSON + 3 spaces, so
    // that 8 + N = 96 is a multiple of 8), the header, then 1.0f and -2.0f little-endian.
    private static readonly byte[] KnownFile =
    [
        0x58, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        .. "{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}   "u8,
        0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0,
    ];

    private readonly TempFolder folder = new();

    public static TheoryData<SafeTensorDType> AllDTypes() => [.. Enum.GetValues<SafeTensorDType>()];

    public void Dispose() => folder.Dispose();

    [Fact]
    public void WriterProducesTheKnownBytes()
    {
        string path = folder.File("known.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloat32("x", [1f, -2f], 2)], new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(KnownFile, File.ReadAllBytes(path));
    }

    [Fact]
    public void ReaderReadsTheKnownBytes()
    {
        string path = folder.File("known.safetensors");
        File.WriteAllBytes(path, KnownFile);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(["x"], file.Names);
        Assert.Equal(new Dictionary<string, string> { ["format"] = "pt" }, file.Metadata);
        var info = file.GetInfo("x");
        Assert.Equal((SafeTensorDType.F32, 0L, 8L, 2L), (info.DType, info.Begin, info.ByteLength, info.ElementCount));
        Assert.Equal([2L], info.Shape);
        Assert.Equal([1f, -2f], file.ReadFloat32("x"));
        Assert.Equal(KnownFile[^8..], file.GetBytes("x").ToArray());
    }

    [Theory]
    [MemberData(nameof(AllDTypes))]
    public void EveryDTypeRoundTrips(SafeTensorDType dtype)
    {
        string path = folder.File("one.safetensors");
        var bytes = RandomBytes(2 * 3 * dtype.ElementSize(), seed: (int)dtype);
        SafeTensorsWriter.Write(path, [new SafeTensor("t", dtype, [2L, 3L], bytes)], null);
        using var file = SafeTensorsFile.Open(path);
        var info = file.GetInfo("t");
        Assert.Equal(dtype, info.DType);
        Assert.Equal([2L, 3L], info.Shape);
        Assert.Equal(bytes, file.ReadBytes("t"));
        Assert.Empty(file.Metadata);
        Assert.Equal(0, (8 + BitConverter.ToInt64(File.ReadAllBytes(path), 0)) % 8);
    }

    [Fact]
    public void HeaderStringsAreTheFormatNames()
    {
        string[] expected = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"];
        int[] sizes = [8, 4, 2, 2, 1, 1, 8, 4, 2, 1, 8, 4, 2, 1, 1];
        Assert.Equal(expected, Enum.GetValues<SafeTensorDType>().Select(d => d.HeaderName()));
        Assert.Equal(sizes, Enum.GetValues<SafeTensorDType>().Select(d => d.ElementSize()));
        Assert.All(expected, name => Assert.True(SafeTensorDTypes.TryParse(name, out var d) && d.HeaderName() == name));
        Assert.False(SafeTensorDTypes.TryParse("f32", out _));
    }

    [Fact]
    public void ManyTensorsScalarsEmptyTensorsAndMetadataRoundTrip()
    {
        string path = folder.File("many.safetensors");
        var metadata = new Dictionary<string, string> { ["z"] = "last", ["format"] = "pt", ["quote\"back\\slash\nnl"] = "é ✓ \u0001" };
        SafeTensor[] tensors =
        [
            SafeTensor.FromFloat32("b.weight", [1.5f, -0f, float.MaxValue, float.Epsilon], 2, 2),
            SafeTensor.FromBf16Bits("a.bf16", [0x3F80, 0xC000, 0x7F80], 3),
            SafeTensor.FromHalf("scalar", [(Half)0.5f]),
            SafeTensor.FromUInt8("empty", [], 0, 3),
            SafeTensor.FromUInt8("naïve \"name\"", [7, 8], 2),
        ];
        SafeTensorsWriter.Write(path, tensors, metadata);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(tensors.Select(t => t.Name), file.Names);
        Assert.Equal(metadata, file.Metadata);
        foreach (var tensor in tensors)
        {
            var info = file.GetInfo(tensor.Name);
            Assert.Equal(tensor.DType, info.DType);
            Assert.Equal(tensor.Shape, info.Shape);
            Assert.Equal(tensor.Data.ToArray(), file.ReadBytes(tensor.Name));
        }

        Assert.Equal([1.5f, -0f, float.MaxValue, float.Epsilon], file.ReadFloat32("b.weight"));
        Assert.Equal([(ushort)0x3F80, (ushort)0xC000, (ushort)0x7F80], file.ReadBf16Bits("a.bf16"));
        Assert.Equal([1f, -2f, float.PositiveInfinity], file.ReadFloat32("a.bf16"));
        Assert.Equal([0.5f], file.ReadFloat32("scalar"));
        Assert.Equal(0, file.GetBytes("empty").Length);
        Assert.Empty(file.GetInfo("scalar").Shape);

        // Metadata is written first with keys in ordinal order; JSON escapes only what serde_json escapes.
        string header = Encoding.UTF8.GetString(File.ReadAllBytes(path), 8, (int)BitConverter.ToInt64(File.ReadAllBytes(path), 0));
        Assert.StartsWith("{\"__metadata__\":{\"format\":\"pt\",\"quote\\\"back\\\\slash\\nnl\":\"é ✓ \\u0001\",\"z\":\"last\"},\"b.weight\":", header);
        Assert.Contains("\"naïve \\\"name\\\"\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[24,26]}}", header);
    }

    [Fact]
    public void PropertyRandomFilesRoundTrip()
    {
        var dtypes = Enum.GetValues<SafeTensorDType>();
        var gen = from count in Gen.Choose(0, 6)
                  from seed in Gen.Choose(0, int.MaxValue)
                  from withMetadata in Gen.Elements(true, false)
                  select (count, seed, withMetadata);
        string path = folder.File("property.safetensors");
        Prop.ForAll(gen.ToArbitrary(), t =>
        {
            var rng = new Random(t.seed);
            var tensors = new SafeTensor[t.count];
            for (int i = 0; i < t.count; i++)
            {
                var dtype = dtypes[rng.Next(dtypes.Length)];
                long[] shape = [.. Enumerable.Range(0, rng.Next(4)).Select(_ => (long)rng.Next(6))];
                tensors[i] = new SafeTensor($"t{i}", dtype, shape, RandomBytes((int)shape.Aggregate(1L, (a, d) => a * d) * dtype.ElementSize(), rng.Next()));
            }

            var metadata = t.withMetadata ? new Dictionary<string, string> { ["n"] = $"{t.count}" } : null;
            SafeTensorsWriter.Write(path, tensors, metadata);
            using var file = SafeTensorsFile.Open(path);
            Assert.Equal(tensors.Select(x => x.Name), file.Names);
            Assert.Equal(metadata ?? [], file.Metadata);
            foreach (var x in tensors)
            {
                Assert.Equal(x.DType, file.GetInfo(x.Name).DType);
                Assert.Equal(x.Shape, file.GetInfo(x.Name).Shape);
                Assert.Equal(x.Data.ToArray(), file.ReadBytes(x.Name));
            }

            Assert.Equal(0, (new FileInfo(path).Length - tensors.Sum(x => x.Data.Length)) % 8);
        }).Check(TestUtil.Seeded(40, 4));
    }

    [Fact]
    public void HalfAndBf16WidenExactlyForEveryBitPattern()
    {
        ushort[] all = [.. Enumerable.Range(0, 65536).Select(i => (ushort)i)];
        string path = folder.File("widen.safetensors");
        SafeTensorsWriter.Write(path,
            [SafeTensor.FromHalf("f16", all.Select(BitConverter.UInt16BitsToHalf).ToArray(), all.Length), SafeTensor.FromBf16Bits("bf16", all, all.Length)]);
        using var file = SafeTensorsFile.Open(path);
        float[] f16 = file.ReadFloat32("f16"), bf16 = file.ReadFloat32("bf16");
        for (int i = 0; i < all.Length; i++)
        {
            AssertSameFloat(Minifloat(i, exponentBits: 5, mantissaBits: 10), f16[i], $"F16 0x{i:X4}");
            AssertSameFloat(Minifloat(i, exponentBits: 8, mantissaBits: 7), bf16[i], $"BF16 0x{i:X4}");
        }

        Assert.Equal(all, file.ReadBf16Bits("bf16"));
        Assert.Equal((65504f, 5.9604645e-8f, 1f), (f16[0x7BFF], f16[0x0001], f16[0x3C00]));
        Assert.Equal((3.3895314e38f, 9.18355e-41f, -2f), (bf16[0x7F7F], bf16[0x0001], bf16[0xC000]));
    }

    [Fact]
    public void WrongDTypeForAConvenienceReaderNamesTheTensor()
    {
        string path = folder.File("dtypes.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensor.FromUInt8("codes", [1, 2], 2), SafeTensor.FromFloat32("w", [1f], 1)]);
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<InvalidDataException>(() => file.ReadFloat32("codes"));
        Assert.Contains("'codes' is U8; expected F32, F16 or BF16", e.Message);
        e = Assert.Throws<InvalidDataException>(() => file.ReadBf16Bits("w"));
        Assert.Contains("'w' is F32; expected BF16", e.Message);
    }

    [Fact]
    public void UnknownNameThrowsKeyNotFoundNamingKeyAndFile()
    {
        string path = folder.File("known.safetensors");
        File.WriteAllBytes(path, KnownFile);
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<KeyNotFoundException>(() => file.GetBytes("y.weight"));
        Assert.Contains("'y.weight'", e.Message);
        Assert.Contains(path, e.Message);
        Assert.Throws<KeyNotFoundException>(() => file.ReadFloat32("y.weight"));
        Assert.False(file.TryGetInfo("y.weight", out _));
        Assert.True(file.TryGetInfo("x", out var info) && info.ByteLength == 8);
    }

    [Fact]
    public void BytesAreNotReadableAfterDispose()
    {
        string path = folder.File("known.safetensors");
        File.WriteAllBytes(path, KnownFile);
        var file = SafeTensorsFile.Open(path);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("x").Length);
        file.Dispose();
    }

    [Fact]
    public void WriterRejectsBadTensors()
    {
        string path = folder.File("bad.safetensors");
        var e = Assert.Throws<ArgumentException>(() =>
            SafeTensorsWriter.Write(path, [SafeTensor.FromFloat32("a", [1f], 1), SafeTensor.FromUInt8("b", [1], 1), SafeTensor.FromFloat32("a", [2f], 1)]));
        Assert.Contains("'a' appears twice", e.Message);
        e = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [SafeTensor.FromUInt8("__metadata__", [1], 1)]));
        Assert.Contains("reserved", e.Message);
        e = Assert.Throws<ArgumentException>(() => SafeTensor.FromFloat32("", [1f], 1));
        Assert.Contains("empty", e.Message);
        e = Assert.Throws<ArgumentException>(() => SafeTensor.FromFloat32("w", [1f, 2f, 3f], 2, 2));
        Assert.Contains("'w' (F32, shape [2, 2]) needs 16 bytes (prod(shape) 4 × 4); got 12", e.Message);
        e = Assert.Throws<ArgumentException>(() => new SafeTensor("w", SafeTensorDType.U8, [-1L], Array.Empty<byte>()));
        Assert.Contains("negative dimension", e.Message);
        e = Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [SafeTensor.FromUInt8("bad\uD800", [1], 1)]));
        Assert.Contains("lone surrogate", e.Message);
        Assert.Empty(folder.Entries());
    }

    [Fact]
    public void FailingEnumeratorLeavesTheOldFileAndNoTemporary()
    {
        string path = folder.File("model.safetensors");
        File.WriteAllBytes(path, KnownFile);
        Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.Write(path, FailingTensors()));
        Assert.Equal(KnownFile, File.ReadAllBytes(path));
        Assert.Equal(["model.safetensors"], folder.Entries());

        static IEnumerable<SafeTensor> FailingTensors()
        {
            yield return SafeTensor.FromFloat32("a", [3f], 1);
            throw new InvalidOperationException("the producer failed");
        }
    }

    [Fact]
    public void FailureWhileWritingDataDeletesTheTemporaryAndKeepsTheOldFile()
    {
        string path = folder.File("model.safetensors");
        File.WriteAllBytes(path, KnownFile);
        string[] duringWrite = [];
        var failing = new FailingMemory(16, () => duringWrite = folder.Entries());
        var e = Assert.Throws<IOException>(() =>
            SafeTensorsWriter.Write(path, [SafeTensor.FromFloat32("a", [3f], 1), new SafeTensor("b", SafeTensorDType.F32, [4L], failing.Memory)]));
        Assert.Equal("simulated read failure", e.Message);

        // The failure struck while the temporary file (beside the target) was being written.
        Assert.Equal(2, duringWrite.Length);
        Assert.Matches(@"^\.model\.safetensors\.[0-9a-f]{32}\.tmp$", duringWrite[0]);
        Assert.Equal(KnownFile, File.ReadAllBytes(path));
        Assert.Equal(["model.safetensors"], folder.Entries());

        SafeTensorsWriter.Write(path, [SafeTensor.FromFloat32("a", [3f], 1)]);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal([3f], file.ReadFloat32("a"));
        Assert.Equal(["model.safetensors"], folder.Entries());
    }

    private static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Decodes an IEEE-style binary float (sign, exponent, mantissa fields) in double, independently of the library.</summary>
    private static double Minifloat(int bits, int exponentBits, int mantissaBits)
    {
        int maxExponent = (1 << exponentBits) - 1, bias = maxExponent >> 1;
        int exponent = (bits >> mantissaBits) & maxExponent, mantissa = bits & ((1 << mantissaBits) - 1);
        double magnitude = exponent == 0 ? Math.ScaleB(mantissa, 1 - bias - mantissaBits)
            : exponent == maxExponent ? (mantissa == 0 ? double.PositiveInfinity : double.NaN)
            : Math.ScaleB((1 << mantissaBits) + mantissa, exponent - bias - mantissaBits);
        return (bits >> (exponentBits + mantissaBits)) != 0 ? -magnitude : magnitude;
    }

    private static void AssertSameFloat(double expected, float actual, string what)
    {
        bool same = double.IsNaN(expected) ? float.IsNaN(actual) : BitConverter.SingleToInt32Bits((float)expected) == BitConverter.SingleToInt32Bits(actual);
        Assert.True(same, $"{what}: expected {expected:R}, got {actual:R}");
    }

    /// <summary>Memory whose bytes cannot be read: the writer fails only once it copies the data.</summary>
    private sealed class FailingMemory(int length, Action onRead) : MemoryManager<byte>
    {
        public override Memory<byte> Memory => CreateMemory(length);

        public override Span<byte> GetSpan()
        {
            onRead();
            throw new IOException("simulated read failure");
        }

        public override MemoryHandle Pin(int elementIndex = 0) => throw new NotSupportedException();

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
