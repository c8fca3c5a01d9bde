using System.Text;
using System.Text.RegularExpressions;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Quantization;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Reading a bitsandbytes 4-bit weight rejects each kind of damaged or inconsistent state dict, naming the key.</summary>
public sealed class Bnb4bitStateDictCorruptionTests : IDisposable
{
    private const string W = "m.weight";
    private const string State = "'m.weight.quant_state.bitsandbytes__nf4'";

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    /// <summary>A corruption (see <see cref="Corrupt"/>) and a fragment the error must contain.</summary>
    public static TheoryData<string, string> Corruptions() => new()
    {
        { "json-truncated", $"{State} is not valid JSON" },
        { "json-not-utf8", $"{State} is not valid UTF-8" },
        { "json-not-object", $"{State} must hold a JSON object; got Array" },
        { "json-no-blocksize", $"{State} lacks the field(s) blocksize" },
        { "json-blocksize-string", $"{State} field 'blocksize' must be an integer; got \"64\"" },
        { "json-blocksize-fraction", $"{State} field 'blocksize' must be an integer; got 64.5" },
        { "json-blocksize-48", $"{State} has blocksize 48; expected a power of two in 32..4096" },
        { "json-shape-string", $"{State} field 'shape' must be an array of integers; got \"64x128\"" },
        { "json-shape-negative", $"{State} field 'shape' must hold integers in 0..2147483647; got [64, -128]" },
        { "json-quant-type-int4", $"{State} has quant_type \"int4\"; expected \"nf4\" or \"fp4\"" },
        { "json-quant-type-fp4", $"{State} says quant_type \"fp4\" but its key ends in __nf4" },
        { "json-dtype-float64", $"{State} has dtype \"float64\"; expected one of float32, bfloat16, float16" },
        { "json-unknown-field", $"{State} has the unknown field 'extra'" },
        { "json-nested-partial", $"{State} has only some double-quantization fields: nested_offset missing" },
        { "json-nested-blocksize", $"{State} has nested_blocksize 128; expected 256" },
        { "json-nested-dtype", $"{State} has nested_dtype \"float16\"; expected \"float32\"" },
        { "json-nested-offset-string", $"{State} field 'nested_offset' must be a finite fp32 number; got \"0.5\"" },
        { "json-nested-offset-overflow", $"{State} field 'nested_offset' must be a finite fp32 number; got 1e39" },
        { "state-missing", $"'m.weight' is not a bitsandbytes 4-bit weight: missing key {State} (or 'm.weight.quant_state.bitsandbytes__fp4')" },
        { "state-both", $"'m.weight' has both {State} and 'm.weight.quant_state.bitsandbytes__fp4'" },
        { "state-f32", $"{State} is F32; expected U8 (the UTF-8 bytes of a JSON object)" },
        { "json-shape-huge", $"{State} field 'shape' [65536, 65536, 65536] has more than 4294967182 elements" },
        { "missing-absmax", "the 4-bit weight 'm.weight' lacks the key(s) 'm.weight.absmax' (its quant state is double-quantized)" },
        { "missing-packed", "the 4-bit weight 'm.weight' lacks the key(s) 'm.weight'" },
        { "missing-nested", "lacks the key(s) 'm.weight.nested_absmax', 'm.weight.nested_quant_map'" },
        { "stray-nested", "has no nested_* fields but the file has 'm.weight.nested_absmax'; double-quantization keys are partly missing" },
        { "absmax-length", "'m.weight.absmax' is U8 shape [127]; expected U8 with 128 elements (ceil(8192 / blocksize 64))" },
        { "absmax-length-plain", "'m.weight.absmax' is F32 shape [129]; expected F32 with 128 elements" },
        { "absmax-dtype", "'m.weight.absmax' is F32 shape [128]; expected U8 with 128 elements" },
        { "packed-length", "'m.weight' is U8 shape [4095, 1]; expected U8 with 4096 elements ((prod(shape [64, 128]) + 1) / 2)" },
        { "json-shape-mismatch", "'m.weight' is U8 shape [4096, 1]; expected U8 with 4160 elements ((prod(shape [64, 130]) + 1) / 2)" },
        { "quant-map-tampered", "'m.weight.quant_map'[5] is 0.5; the NF4 table has -0.18477343" },
        { "quant-map-other-type", "'m.weight.quant_map'[0] is -1; the FP4 table has 0" },
        { "quant-map-length", "'m.weight.quant_map' is F32 shape [15]; expected F32 with 16 elements" },
        { "nested-absmax-length", "'m.weight.nested_absmax' is F32 shape [2]; expected F32 with 1 elements (ceil(128 blocks / 256))" },
        { "nested-quant-map-tampered", "'m.weight.nested_quant_map'[200] is 0; the dynamic table has 0.23359376" },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void CorruptionIsRejectedNamingTheKey(string corruption, string expected)
    {
        string path = folder.File($"{corruption}.safetensors");
        SafeTensorsWriter.Write(path, Corrupt(corruption));
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<InvalidDataException>(() => Bnb4bitStateDict.FromTensors(file, W));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void UncorruptedBasesRead()
    {
        foreach (bool nested in new[] { true, false })
        {
            string path = folder.File($"base-{nested}.safetensors");
            SafeTensorsWriter.Write(path, Base(nested));
            using var file = SafeTensorsFile.Open(path);
            var weight = Bnb4bitStateDict.FromTensors(file, W);
            Assert.Equal((nested, nested ? Quant4Type.Nf4 : Quant4Type.Fp4, 8192L), (weight.IsNested, weight.Type, weight.Count));
        }
    }

    /// <summary>The state dict of a [64, 128] weight, blocksize 64: nested NF4 (bfloat16) or plain FP4 (float32).</summary>
    private static List<SafeTensor> Base(bool nested)
    {
        var values = TestUtil.Random(64 * 128, seed: 7);
        var weight = nested
            ? QuantizedWeight.Quantize(values, [64, 128], Quant4Type.Nf4, 64, doubleQuant: true, "bfloat16")
            : QuantizedWeight.Quantize(values, [64, 128], Quant4Type.Fp4, 64, doubleQuant: false);
        return [.. Bnb4bitStateDict.ToTensors(W, weight)];
    }

    private static List<SafeTensor> Corrupt(string corruption)
    {
        var nested = Base(nested: true);
        return corruption switch
        {
            "json-truncated" => EditJson(nested, j => j[..^5]),
            "json-not-utf8" => Replace(nested, $"{W}.quant_state.bitsandbytes__nf4", SafeTensor.FromUInt8($"{W}.quant_state.bitsandbytes__nf4", [(byte)'{', 0xFF, (byte)'}'], 3)),
            "json-not-object" => EditJson(nested, _ => "[1, 2]"),
            "json-no-blocksize" => EditJson(nested, j => j.Replace("\"blocksize\": 64, ", "")),
            "json-blocksize-string" => EditJson(nested, j => j.Replace("\"blocksize\": 64", "\"blocksize\": \"64\"")),
            "json-blocksize-fraction" => EditJson(nested, j => j.Replace("\"blocksize\": 64", "\"blocksize\": 64.5")),
            "json-blocksize-48" => EditJson(nested, j => j.Replace("\"blocksize\": 64", "\"blocksize\": 48")),
            "json-shape-string" => EditJson(nested, j => j.Replace("[64, 128]", "\"64x128\"")),
            "json-shape-negative" => EditJson(nested, j => j.Replace("[64, 128]", "[64, -128]")),
            "json-shape-huge" => EditJson(nested, j => j.Replace("[64, 128]", "[65536, 65536, 65536]")),
            "json-shape-mismatch" => EditJson(nested, j => j.Replace("[64, 128]", "[64, 130]")),
            "json-quant-type-int4" => EditJson(nested, j => j.Replace("\"nf4\"", "\"int4\"")),
            "json-quant-type-fp4" => EditJson(nested, j => j.Replace("\"nf4\"", "\"fp4\"")),
            "json-dtype-float64" => EditJson(nested, j => j.Replace("\"bfloat16\"", "\"float64\"")),
            "json-unknown-field" => EditJson(nested, j => "{\"extra\": 1, " + j[1..]),
            "json-nested-partial" => EditJson(nested, j => Regex.Replace(j, ", \"nested_offset\": [^}]*", "")),
            "json-nested-blocksize" => EditJson(nested, j => j.Replace("\"nested_blocksize\": 256", "\"nested_blocksize\": 128")),
            "json-nested-dtype" => EditJson(nested, j => j.Replace("\"nested_dtype\": \"float32\"", "\"nested_dtype\": \"float16\"")),
            "json-nested-offset-string" => EditJson(nested, j => Regex.Replace(j, "\"nested_offset\": [^}]*", "\"nested_offset\": \"0.5\"")),
            "json-nested-offset-overflow" => EditJson(nested, j => Regex.Replace(j, "\"nested_offset\": [^}]*", "\"nested_offset\": 1e39")),
            "state-missing" => Replace(nested, $"{W}.quant_state.bitsandbytes__nf4", null),
            "state-both" => [.. nested, SafeTensor.FromUInt8($"{W}.quant_state.bitsandbytes__fp4", nested[^1].Data.ToArray(), nested[^1].Data.Length)],
            "state-f32" => Replace(nested, $"{W}.quant_state.bitsandbytes__nf4", SafeTensor.FromFloat32($"{W}.quant_state.bitsandbytes__nf4", [1f, 2f], 2)),
            "missing-absmax" => Replace(nested, $"{W}.absmax", null),
            "missing-packed" => Replace(nested, W, null),
            "missing-nested" => Replace(Replace(nested, $"{W}.nested_absmax", null), $"{W}.nested_quant_map", null),
            "stray-nested" => [.. Base(nested: false), SafeTensor.FromFloat32($"{W}.nested_absmax", [1f], 1)],
            "absmax-length" => Replace(nested, $"{W}.absmax", SafeTensor.FromUInt8($"{W}.absmax", new byte[127], 127)),
            "absmax-length-plain" => Replace(Base(nested: false), $"{W}.absmax", SafeTensor.FromFloat32($"{W}.absmax", new float[129], 129)),
            "absmax-dtype" => Replace(nested, $"{W}.absmax", SafeTensor.FromFloat32($"{W}.absmax", new float[128], 128)),
            "packed-length" => Replace(nested, W, SafeTensor.FromUInt8(W, new byte[4095], 4095, 1)),
            "quant-map-tampered" => ReplaceTable(nested, $"{W}.quant_map", Quant4Codes.Nf4, 5, 0.5f),
            "quant-map-other-type" => Replace(Base(nested: false), $"{W}.quant_map", SafeTensor.FromFloat32($"{W}.quant_map", Quant4Codes.Nf4, 16)),
            "quant-map-length" => Replace(nested, $"{W}.quant_map", SafeTensor.FromFloat32($"{W}.quant_map", Quant4Codes.Nf4[..15], 15)),
            "nested-absmax-length" => Replace(nested, $"{W}.nested_absmax", SafeTensor.FromFloat32($"{W}.nested_absmax", [1f, 1f], 2)),
            "nested-quant-map-tampered" => ReplaceTable(nested, $"{W}.nested_quant_map", Quant4Codes.Dynamic, 200, 0f),
            _ => throw new ArgumentException($"unknown corruption '{corruption}'", nameof(corruption)),
        };
    }

    private static List<SafeTensor> EditJson(List<SafeTensor> tensors, Func<string, string> edit)
    {
        string key = $"{W}.quant_state.bitsandbytes__nf4";
        string json = Encoding.UTF8.GetString(tensors.Single(t => t.Name == key).Data.Span);
        string edited = edit(json);
        Assert.NotEqual(json, edited);
        byte[] bytes = Encoding.UTF8.GetBytes(edited);
        return Replace(tensors, key, SafeTensor.FromUInt8(key, bytes, bytes.Length));
    }

    private static List<SafeTensor> ReplaceTable(List<SafeTensor> tensors, string key, ReadOnlySpan<float> table, int index, float value)
    {
        float[] tampered = table.ToArray();
        tampered[index] = value;
        return Replace(tensors, key, SafeTensor.FromFloat32(key, tampered, tampered.Length));
    }

    private static List<SafeTensor> Replace(List<SafeTensor> tensors, string key, SafeTensor? replacement)
    {
        int index = tensors.FindIndex(t => t.Name == key);
        Assert.True(index >= 0, $"no tensor '{key}' to replace");
        var result = new List<SafeTensor>(tensors);
        if (replacement == null)
        {
            result.RemoveAt(index);
        }
        else
        {
            result[index] = replacement;
        }

        return result;
    }
}
