// ModelQuantizer on single .safetensors files: which tensors get quantized, the stored keys
// against the kernel's own quantization, the report's numbers and error bound, filters,
// double quantization and FP4, and quantize → dequantize round trips to every output dtype.
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Quantization;
using Xunit;
using static PeftKernels.Tests.ModelQuantizerFixtures;

namespace PeftKernels.Tests;

/// <summary>Whole-file quantize and dequantize: selection, stored bytes, report, round trips.</summary>
public sealed class ModelQuantizerTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void DefaultSelectionQuantizesTheProjectionsOnlyAndCopiesTheRestByteForByte()
    {
        string input = folder.File("in.safetensors"), output = folder.File("out.safetensors");
        WriteMixed(input);
        var log = new StringWriter();
        var report = ModelQuantizer.Quantize(input, output, new QuantizeOptions(), log);

        Assert.Equal([Q, K, Up], report.Converted.Select(r => r.Name));
        using var a = SafeTensorsFile.Open(input);
        using var b = SafeTensorsFile.Open(output);
        string[] copiedNames = [Embed, LayerNorm, Bias, Experts, Positions, Norm, LmHead];
        foreach (string name in copiedNames)
        {
            AssertCopied(a, b, name);
        }

        foreach (string name in new[] { Q, K, Up })
        {
            Assert.Equal(
                [(name, SafeTensorDType.U8), ($"{name}.absmax", SafeTensorDType.F32), ($"{name}.quant_map", SafeTensorDType.F32),
                    ($"{name}.quant_state.bitsandbytes__nf4", SafeTensorDType.U8)],
                b.Names.Where(n => n.StartsWith(name, StringComparison.Ordinal)).Select(n => (n, b.GetInfo(n).DType)));
            var stored = Bnb4bitStateDict.FromTensors(b, name);
            var expected = Expected(a, name, Quant4Type.Nf4, 64, doubleQuant: false);
            Assert.Equal(DTypeName(a.GetInfo(name).DType), stored.DType);
            Assert.Equal(expected.Shape, stored.Shape);
            Assert.Equal(expected.Packed, stored.Packed);
            Assert.Equal(expected.Absmax, stored.Absmax);
        }

        // bf16 input is quantized from its exact widening: the same bytes as the kernel's bf16 entry point.
        var fromBits = QuantizedWeight.Quantize(a.ReadBf16Bits(K), [33, 65], Quant4Type.Nf4, 64, doubleQuant: false);
        Assert.Equal(fromBits.Packed, b.ReadBytes(K));
        Assert.Equal(fromBits.Absmax, b.ReadFloat32($"{K}.absmax"));
        Assert.Equal(copiedNames.Length + (3 * 4), b.Names.Count);
        Assert.Equal(Metadata, b.Metadata);
        Assert.Equal(copiedNames.Length, report.CopiedTensors);
        Assert.Equal(TotalBytes(a), report.TotalBytesBefore);
        Assert.Equal(TotalBytes(b), report.TotalBytesAfter);
        Assert.Equal((double)TotalBytes(b) / TotalBytes(a), report.Ratio);
        Assert.Equal([Path.GetFullPath(output)], report.OutputFiles);
        Assert.Equal(["in.safetensors", "out.safetensors"], folder.Entries());
        string printed = log.ToString();
        Assert.All(report.Converted, r => Assert.Contains(r.Name, printed));
        Assert.Contains($"{report.TotalBytesBefore} -> {report.TotalBytesAfter} bytes", printed);
    }

    [Fact]
    public void ReportRowsMatchTheFilesAndStayWithinTheFourBitBound()
    {
        string input = folder.File("in.safetensors"), output = folder.File("out.safetensors");
        WriteMixed(input);
        var report = ModelQuantizer.Quantize(input, output, new QuantizeOptions(), TextWriter.Null);
        using var a = SafeTensorsFile.Open(input);
        using var b = SafeTensorsFile.Open(output);
        double sum = 0;
        foreach (var row in report.Converted)
        {
            var info = a.GetInfo(row.Name);
            Assert.Equal(info.Shape, row.Shape);
            Assert.Equal((info.DType.HeaderName(), "nf4"), (row.From, row.To));
            Assert.Equal(info.ByteLength, row.BytesBefore);
            Assert.Equal(b.Names.Where(n => n.StartsWith(row.Name, StringComparison.Ordinal)).Sum(n => b.GetInfo(n).ByteLength), row.BytesAfter);
            Assert.True(row.BytesAfter < row.BytesBefore, $"{row.Name}: {row.BytesAfter} >= {row.BytesBefore}");

            float[] original = a.ReadFloat32(row.Name);
            var stored = Bnb4bitStateDict.FromTensors(b, row.Name);
            float[] restored = stored.Dequantize();
            double largest = AssertWithinBound(original, restored, stored);
            double mean = original.Zip(restored, (x, y) => Math.Abs((double)y - x)).Average();
            Assert.Equal(largest, row.MaxAbsError);
            Assert.Equal(mean, row.MeanAbsError, 1e-12);
            Assert.True(row.MaxAbsError > 0);
            sum += mean * original.Length;
        }

        Assert.Equal(report.Converted.Max(r => r.MaxAbsError), report.MaxAbsError);
        Assert.Equal(report.Converted.Sum(r => r.ElementCount), report.ConvertedElements);
        Assert.Equal(sum / report.ConvertedElements, report.MeanAbsError, 1e-12);
    }

    [Theory]
    [InlineData(Quant4Type.Nf4, false, 64, "f32")]
    [InlineData(Quant4Type.Nf4, true, 64, "bf16")]
    [InlineData(Quant4Type.Fp4, true, 128, "f16")]
    [InlineData(Quant4Type.Fp4, false, 32, "f32")]
    [InlineData(Quant4Type.Nf4, true, 4096, "f32")]
    public void DequantizeRestoresNamesShapesAndTheKernelsDequantization(Quant4Type type, bool doubleQuant, int blocksize, string dtypeName)
    {
        string input = folder.File("in.safetensors"), quantized = folder.File("q.safetensors"), restored = folder.File("r.safetensors");
        WriteMixed(input, seed: blocksize);
        var options = new QuantizeOptions { Type = type, DoubleQuant = doubleQuant, Blocksize = blocksize };
        var forward = ModelQuantizer.Quantize(input, quantized, options, TextWriter.Null);
        var dtype = DequantizeOptions.ParseDType(dtypeName);
        var back = ModelQuantizer.Dequantize(quantized, restored, new DequantizeOptions { DType = dtype }, TextWriter.Null);

        using var a = SafeTensorsFile.Open(input);
        using var r = SafeTensorsFile.Open(restored);
        Assert.Equal(a.Names, r.Names);
        Assert.Equal(Metadata, r.Metadata);
        Assert.Equal(forward.Converted.Select(c => (c.Name, c.BytesAfter)), back.Converted.Select(c => (c.Name, c.BytesBefore)));
        foreach (string name in a.Names)
        {
            if (!forward.Converted.Any(c => c.Name == name))
            {
                AssertCopied(a, r, name);
                continue;
            }

            Assert.Equal(dtype, r.GetInfo(name).DType);
            Assert.Equal(a.GetInfo(name).Shape, r.GetInfo(name).Shape);
            float[] exact = Expected(a, name, type, blocksize, doubleQuant).Dequantize();
            byte[] expectedBytes = dtype switch
            {
                SafeTensorDType.BF16 => SafeTensor.FromBf16Bits(name, [.. exact.Select(Bf16.FromSingle)], exact.Length).Data.ToArray(),
                SafeTensorDType.F16 => SafeTensor.FromHalf(name, [.. exact.Select(v => (Half)v)], exact.Length).Data.ToArray(),
                _ => SafeTensor.FromFloat32(name, exact, exact.Length).Data.ToArray(),
            };
            Assert.Equal(expectedBytes, r.GetBytes(name).ToArray());
            var row = back.Converted.Single(c => c.Name == name);
            float[] cast = r.ReadFloat32(name);
            Assert.Equal(exact.Zip(cast, (x, y) => Math.Abs((double)y - x)).Max(), row.MaxAbsError);
            Assert.Equal(r.GetInfo(name).ByteLength, row.BytesAfter);
        }

        Assert.Equal(TotalBytes(r), back.TotalBytesAfter);
        Assert.Equal(forward.TotalBytesAfter, back.TotalBytesBefore);
        if (dtype == SafeTensorDType.F32)
        {
            Assert.Equal(0, back.MaxAbsError);
        }
    }

    [Fact]
    public void DoubleQuantAndFp4StoreTheirKeys()
    {
        string input = folder.File("in.safetensors"), output = folder.File("out.safetensors");
        WriteMixed(input);
        var report = ModelQuantizer.Quantize(input, output, new QuantizeOptions { Type = Quant4Type.Fp4, DoubleQuant = true }, TextWriter.Null);
        using var a = SafeTensorsFile.Open(input);
        using var b = SafeTensorsFile.Open(output);
        Assert.All(report.Converted, r => Assert.Equal("fp4+dq", r.To));
        Assert.Equal(
            [(K, "U8", "1073,1"), ($"{K}.absmax", "U8", "34"), ($"{K}.quant_map", "F32", "16"), ($"{K}.nested_absmax", "F32", "1"),
                ($"{K}.nested_quant_map", "F32", "256"), ($"{K}.quant_state.bitsandbytes__fp4", "U8", $"{b.GetInfo($"{K}.quant_state.bitsandbytes__fp4").Shape[0]}")],
            b.Names.Where(n => n.StartsWith(K, StringComparison.Ordinal)).Select(n => (n, b.GetInfo(n).DType.HeaderName(), string.Join(",", b.GetInfo(n).Shape))));
        Assert.Equal(Quant4Codes.Fp4.ToArray(), b.ReadFloat32($"{Q}.quant_map"));
        foreach (var row in report.Converted)
        {
            var stored = Bnb4bitStateDict.FromTensors(b, row.Name);
            var expected = Expected(a, row.Name, Quant4Type.Fp4, 64, doubleQuant: true);
            Assert.True(stored.IsNested);
            Assert.Equal(expected.Packed, stored.Packed);
            Assert.Equal(expected.NestedCodes, stored.NestedCodes);
            Assert.Equal(expected.NestedAbsmax, stored.NestedAbsmax);
            Assert.Equal(expected.NestedOffset, stored.NestedOffset);
            Assert.Equal(row.MaxAbsError, AssertWithinBound(a.ReadFloat32(row.Name), stored.Dequantize(), stored));
        }
    }

    [Theory]
    [InlineData("q_proj|lm_head", null, new[] { Q, LmHead })]
    [InlineData("embed|norm", null, new[] { Embed, Norm })]
    [InlineData(null, "k_proj", new[] { Q, Up })]
    [InlineData("proj", "^model\\.layers\\.0\\.mlp\\.", new[] { Q, K })]
    [InlineData("bias|experts|position|layernorm", null, new string[0])]
    [InlineData(null, ".", new string[0])]
    public void IncludeReplacesTheDefaultSelectionAndExcludeRemovesMatches(string? include, string? exclude, string[] expected)
    {
        string input = folder.File("in.safetensors"), output = folder.File("out.safetensors");
        WriteMixed(input);
        var report = ModelQuantizer.Quantize(input, output, new QuantizeOptions { Include = include, Exclude = exclude }, TextWriter.Null);
        Assert.Equal(expected.Order(StringComparer.Ordinal), report.Converted.Select(r => r.Name).Order(StringComparer.Ordinal));
        using var a = SafeTensorsFile.Open(input);
        using var b = SafeTensorsFile.Open(output);
        foreach (string name in a.Names)
        {
            if (expected.Contains(name))
            {
                Assert.True(Bnb4bitStateDict.IsQuantized(b, name), name);
            }
            else
            {
                AssertCopied(a, b, name);
            }
        }

        Assert.Equal(a.Names.Count - expected.Length, report.CopiedTensors);
    }

    [Fact]
    public void QuantizingAQuantizedFileCopiesItAndDequantizingAPlainFileChangesNothing()
    {
        string input = folder.File("in.safetensors"), once = folder.File("once.safetensors"), twice = folder.File("twice.safetensors");
        string plain = folder.File("plain.safetensors");
        WriteMixed(input);
        ModelQuantizer.Quantize(input, once, new QuantizeOptions { DoubleQuant = true }, TextWriter.Null);
        var again = ModelQuantizer.Quantize(once, twice, new QuantizeOptions(), TextWriter.Null);
        Assert.Empty(again.Converted);
        Assert.Equal(File.ReadAllBytes(once), File.ReadAllBytes(twice));

        var none = ModelQuantizer.Dequantize(input, plain, new DequantizeOptions(), TextWriter.Null);
        Assert.Empty(none.Converted);
        Assert.Equal(File.ReadAllBytes(input), File.ReadAllBytes(plain));
        Assert.Equal((1.0, 0.0, 0.0), (none.Ratio, none.MeanAbsError, none.MaxAbsError));
    }
}
