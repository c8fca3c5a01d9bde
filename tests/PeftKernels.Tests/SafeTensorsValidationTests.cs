using System.Text;
using PeftKernels.IO;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Every structural check of the safetensors reader, on hand-made corrupt files.</summary>
public sealed class SafeTensorsValidationTests : IDisposable
{
    private const string Entry = "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>Header JSON (8 data bytes follow it) and a fragment the error message must contain.</summary>
    public static TheoryData<string, string> CorruptHeaders() => new()
    {
        { "[1, 2]", "must start with '{' (a JSON object); it starts with byte 0x5B" },
        { " {\"x\":" + Entry + "}", "must start with '{'" },
        { "{\"x\":" + Entry, "the header is not valid JSON" },
        { "{\"x\":" + Entry + "} x", "the header is not valid JSON" },
        { "{\"x\":[1]}", "tensor 'x': the entry must be a JSON object; got an array" },
        { "{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'x': the entry has no 'dtype'" },
        { "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", "tensor 'x': the entry has no 'shape'" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", "tensor 'x': the entry has no 'data_offsets'" },
        { "{\"x\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'x': 'dtype' must be a string; got a number" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", "tensor 'x': 'shape' must be an array of integers; got a string" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", "tensor 'x': 'shape'[0] must be an integer; got 2.5" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"begin\":0}}}", "tensor 'x': 'data_offsets' must be an array of integers; got an object" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", "tensor 'x': 'data_offsets'[1] must be an integer; got \"8\"" },
        { "{\"x\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'x': unknown dtype \"F128\"; expected one of F64, F32" },
        { "{\"x\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "unknown dtype \"f32\"" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "tensor 'x': shape [-2] has a negative dimension" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "tensor 'x': 'data_offsets' must be [begin, end]; got 1 numbers" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}", "'data_offsets' must be [begin, end]; got 3 numbers" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-8,-8]}}", "data_offsets [-8, -8] must satisfy 0 <= begin <= end <= 8" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "data_offsets [8, 0] must satisfy 0 <= begin <= end <= 8" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "data_offsets [0, 16] must satisfy 0 <= begin <= end <= 8 (the data section length)" },
        { "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "tensor 'x': data_offsets [0, 8] hold 8 bytes but F32 shape [3] needs 12 bytes" },
        { "{\"x\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", "hold 8 bytes but F64 shape [2] needs 16 bytes" },
        { "{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", "needs more than 2^63 bytes" },
        {
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
            "tensors 'a' [0, 4) and 'b' [2, 6) overlap"
        },
        {
            "{\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[3,3]}}",
            "tensors 'b' [0, 8) and 'a' [3, 3) overlap"
        },
        { "{\"x\":" + Entry + ",\"x\":" + Entry + "}", "the header has the key 'x' twice" },
        { "{\"__metadata__\":[\"pt\"],\"x\":" + Entry + "}", "'__metadata__' must be a JSON object of string → string; got an array" },
        { "{\"__metadata__\":{\"format\":1},\"x\":" + Entry + "}", "'__metadata__' entry 'format' must be a string; got a number" },
        { "{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", "'__metadata__' has the key 'a' twice" },
    };

    [Theory]
    [MemberData(nameof(CorruptHeaders))]
    public void CorruptHeaderIsRejectedWithItsReason(string header, string expected)
    {
        string path = Write(Layout(Encoding.UTF8.GetBytes(header), new byte[8]));
        AssertRejected(path, expected);
    }

    [Fact]
    public void ValidHeadersWithPaddingGapsAndEmptyTensorsAreAccepted()
    {
        // Spaces after the JSON (any count, not only up to a multiple of 8), a gap between
        // tensors, trailing unused bytes and two empty tensors at the same offset are all legal.
        const string header = "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
            + "\"e1\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[6,6]},\"e2\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[6,6]}}     ";
        string path = Write(Layout(Encoding.UTF8.GetBytes(header), [1, 2, 3, 4, 5, 6, 7]));
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(["b", "a", "e1", "e2"], file.Names);
        Assert.Equal([5, 6], file.ReadBytes("b"));
        Assert.Equal([1], file.ReadBytes("a"));
        Assert.Empty(file.ReadFloat32("e1"));
        Assert.Empty(file.Metadata);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    [InlineData(7)]
    public void FileShorterThanEightBytesIsRejected(int length)
    {
        AssertRejected(Write(new byte[length]), $"the file is {length} bytes long; a safetensors file needs at least 8");
    }

    [Fact]
    public void ZeroHeaderLengthIsRejected() =>
        AssertRejected(Write(new byte[16]), "the header length is 0");

    [Fact]
    public void HeaderLongerThanTheFileIsRejected()
    {
        byte[] bytes = Layout("{}"u8.ToArray(), []);
        bytes[0] = 3;
        AssertRejected(Write(bytes), "the header length is 3 but the file has only 2 bytes after the 8-byte length");
    }

    [Fact]
    public void AbsurdHeaderLengthIsRejected()
    {
        byte[] bytes = new byte[8];
        BitConverter.TryWriteBytes(bytes, 100_000_001UL);
        AssertRejected(Write(bytes), "the header length 100000001 exceeds the limit of 100000000 bytes");
        BitConverter.TryWriteBytes(bytes, ulong.MaxValue);
        AssertRejected(Write(bytes), "the header length 18446744073709551615 exceeds the limit");
    }

    [Fact]
    public void HeaderThatIsNotUtf8IsRejected()
    {
        byte[] header = Encoding.UTF8.GetBytes("{\"x?\":" + Entry + "}");
        header[3] = 0xFF;
        AssertRejected(Write(Layout(header, new byte[8])), "the header is not valid UTF-8");
    }

    [Fact]
    public void FailedOpenReleasesTheFile()
    {
        string path = Write(Layout("{\"x\":1}"u8.ToArray(), []));
        Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path));
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None))
        {
            Assert.Equal(15, stream.Length);
        }
    }

    private static void AssertRejected(string path, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    private static byte[] Layout(byte[] header, byte[] data)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BitConverter.TryWriteBytes(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    private string Write(byte[] bytes)
    {
        string path = folder.File($"corrupt-{Guid.NewGuid():N}.safetensors");
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
