using System.Text;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Quantization;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>bitsandbytes Linear4bit state-dict keys: exact layout and JSON, round trips, and every corruption check.</summary>
public sealed class Bnb4bitStateDictTests : IDisposable
{
    private const string Key = "model.layers.0.mlp.down_proj.weight";

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Theory]
    [InlineData(Quant4Type.Nf4, true, 64, "bfloat16", new[] { 40, 520 })]
    [InlineData(Quant4Type.Nf4, false, 64, "float32", new[] { 40, 520 })]
    [InlineData(Quant4Type.Fp4, true, 128, "float16", new[] { 3, 67 })]
    [InlineData(Quant4Type.Fp4, false, 32, "float32", new[] { 3, 67 })]
    [InlineData(Quant4Type.Nf4, true, 4096, "float32", new[] { 5 })]
    public void RoundTripThroughAFileIsIdentical(Quant4Type type, bool nested, int blocksize, string dtype, int[] shape)
    {
        var values = TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed: shape.Sum() + blocksize, range: 3f);
        var weight = QuantizedWeight.Quantize(values, shape, type, blocksize, nested, dtype);
        string path = folder.File("model.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensor.FromFloat32("other.bias", [1f], 1), .. Bnb4bitStateDict.ToTensors(Key, weight)],
            new Dictionary<string, string> { ["format"] = "pt" });

        using var file = SafeTensorsFile.Open(path);
        Assert.True(Bnb4bitStateDict.IsQuantized(file, Key));
        Assert.False(Bnb4bitStateDict.IsQuantized(file, "other.bias"));
        var read = Bnb4bitStateDict.FromTensors(file, Key);
        Assert.Equal((type, blocksize, dtype, nested, weight.Count), (read.Type, read.Blocksize, read.DType, read.IsNested, read.Count));
        Assert.Equal(shape, read.Shape);
        Assert.Equal(weight.Packed, read.Packed);
        Assert.Equal(weight.Absmax, read.Absmax);
        Assert.Equal(weight.NestedCodes, read.NestedCodes);
        Assert.Equal(weight.NestedAbsmax, read.NestedAbsmax);
        Assert.Equal(BitConverter.SingleToInt32Bits(weight.NestedOffset), BitConverter.SingleToInt32Bits(read.NestedOffset));
        Assert.Equal(weight.Dequantize().Select(BitConverter.SingleToInt32Bits), read.Dequantize().Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void NestedKeysDTypesAndShapesAreBitsandbytesLayout()
    {
        // [40, 520] = 20800 elements: 10400 packed bytes, 325 blocks of 64, ceil(325 / 256) = 2 nested scales.
        var weight = QuantizedWeight.Quantize(TestUtil.Random(20800, 1), [40, 520], Quant4Type.Nf4, 64, doubleQuant: true, "bfloat16");
        var tensors = Bnb4bitStateDict.ToTensors("m.weight", weight);
        Assert.Equal(
            [
                ("m.weight", SafeTensorDType.U8, "10400,1"),
                ("m.weight.absmax", SafeTensorDType.U8, "325"),
                ("m.weight.quant_map", SafeTensorDType.F32, "16"),
                ("m.weight.nested_absmax", SafeTensorDType.F32, "2"),
                ("m.weight.nested_quant_map", SafeTensorDType.F32, "256"),
                ("m.weight.quant_state.bitsandbytes__nf4", SafeTensorDType.U8, $"{tensors[^1].Data.Length}"),
            ],
            tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))));
        Assert.Equal(weight.Packed, tensors[0].Data.ToArray());
        Assert.Equal(weight.NestedCodes, tensors[1].Data.ToArray());
        Assert.Equal(Quant4Codes.Nf4.ToArray(), Floats(tensors[2]));
        Assert.Equal(weight.NestedAbsmax, Floats(tensors[3]));
        Assert.Equal(Quant4Codes.Dynamic.ToArray(), Floats(tensors[4]));
    }

    [Fact]
    public void PlainKeysDTypesAndShapesAreBitsandbytesLayout()
    {
        // [3, 67] = 201 elements (odd: the last byte holds one code and padding), 7 blocks of 32.
        var weight = QuantizedWeight.Quantize(TestUtil.Random(201, 2), [3, 67], Quant4Type.Fp4, 32, doubleQuant: false);
        var tensors = Bnb4bitStateDict.ToTensors("m.weight", weight);
        Assert.Equal(
            [
                ("m.weight", SafeTensorDType.U8, "101,1"),
                ("m.weight.absmax", SafeTensorDType.F32, "7"),
                ("m.weight.quant_map", SafeTensorDType.F32, "16"),
                ("m.weight.quant_state.bitsandbytes__fp4", SafeTensorDType.U8, $"{tensors[^1].Data.Length}"),
            ],
            tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape))));
        Assert.Equal(weight.Absmax, Floats(tensors[1]));
        Assert.Equal(Quant4Codes.Fp4.ToArray(), Floats(tensors[2]));
        Assert.Equal("{\"quant_type\": \"fp4\", \"blocksize\": 32, \"dtype\": \"float32\", \"shape\": [3, 67]}", Encoding.UTF8.GetString(tensors[3].Data.Span));
    }

    [Fact]
    public void QuantStateJsonIsWhatPythonJsonDumpsWrites()
    {
        // bitsandbytes: json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": (64, 128),
        //   "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(np.float32(0.0123))}).
        var weight = new QuantizedWeight(new byte[4096], null, new byte[128], new float[1], 0.0123f, 64, Quant4Type.Nf4, [64, 128], "bfloat16");
        const string expected = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [64, 128], "
            + "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.012299999594688416}";
        Assert.Equal(Encoding.UTF8.GetBytes(expected), Bnb4bitStateDict.ToTensors("w", weight)[^1].Data.ToArray());
        Assert.Equal("w.quant_state.bitsandbytes__nf4", Bnb4bitStateDict.QuantStateKey("w", Quant4Type.Nf4));
    }

    // Expected strings are Python's repr(float(np.float32(x))): shortest round-trip digits,
    // exponent form when the decimal exponent is below -4 or at least 16.
    [Theory]
    [InlineData(0.0123f, "0.012299999594688416")]
    [InlineData(1e-5f, "9.999999747378752e-06")]
    [InlineData(1e-4f, "9.999999747378752e-05")]
    [InlineData(0.001f, "0.0010000000474974513")]
    [InlineData(5e15f, "5000000136282112.0")]
    [InlineData(1e16f, "1.0000000272564224e+16")]
    [InlineData(-2.5e20f, "-2.5000000501021934e+20")]
    [InlineData(123456.78f, "123456.78125")]
    [InlineData(float.Epsilon, "1.401298464324817e-45")]
    [InlineData(-0.5f, "-0.5")]
    [InlineData(3f, "3.0")]
    [InlineData(0f, "0.0")]
    [InlineData(-0f, "-0.0")]
    public void NestedOffsetIsPrintedLikePythonAndReadBackExactly(float offset, string expected)
    {
        var weight = new QuantizedWeight(new byte[32], null, new byte[1], [0.5f], offset, 64, Quant4Type.Nf4, [64], "float32");
        var tensors = Bnb4bitStateDict.ToTensors("w", weight);
        Assert.EndsWith($"\"nested_offset\": {expected}}}", Encoding.UTF8.GetString(tensors[^1].Data.Span));
        string path = folder.File("offset.safetensors");
        SafeTensorsWriter.Write(path, tensors);
        using var file = SafeTensorsFile.Open(path);
        Assert.Equal(BitConverter.SingleToInt32Bits(offset), BitConverter.SingleToInt32Bits(Bnb4bitStateDict.FromTensors(file, "w").NestedOffset));
    }

    [Fact]
    public void NonFiniteOffsetOrUnknownDTypeCannotBeWritten()
    {
        var nan = new QuantizedWeight(new byte[32], null, new byte[1], [0.5f], float.NaN, 64, Quant4Type.Nf4, [64], "float32");
        Assert.Contains("nested_offset must be finite", Assert.Throws<ArgumentException>(() => Bnb4bitStateDict.ToTensors("w", nan)).Message);
        var f64 = new QuantizedWeight(new byte[32], [1f], null, null, 0f, 64, Quant4Type.Nf4, [64], "float64");
        Assert.Contains("'w' has dtype \"float64\"", Assert.Throws<ArgumentException>(() => Bnb4bitStateDict.ToTensors("w", f64)).Message);
    }

    private static float[] Floats(SafeTensor tensor)
    {
        Assert.Equal(SafeTensorDType.F32, tensor.DType);
        byte[] bytes = tensor.Data.ToArray();
        return [.. Enumerable.Range(0, bytes.Length / 4).Select(i => BitConverter.ToSingle(bytes, 4 * i))];
    }
}
