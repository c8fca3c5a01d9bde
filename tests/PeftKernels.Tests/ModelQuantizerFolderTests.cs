// ModelQuantizer on Hugging Face model folders (sharded with model.safetensors.index.json, or a
// single model.safetensors): shard names kept, new keys beside their weight, index and
// total_size rewritten, other files copied; and every bad input failing with a clear message
// before anything appears in the output folder.
using System.Text.Json;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Quantization;
using Xunit;
using static PeftKernels.Tests.ModelQuantizerFixtures;

namespace PeftKernels.Tests;

/// <summary>Sharded and single-file model folders, and the error cases of ModelQuantizer.</summary>
public sealed class ModelQuantizerFolderTests : IDisposable
{
    private const string Shard1 = "model-00001-of-00002.safetensors";
    private const string Shard2 = "model-00002-of-00002.safetensors";
    private const string Index = "model.safetensors.index.json";
    private const string Config = "{\"model_type\": \"llama\", \"torch_dtype\": \"bfloat16\"}\n";

    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public void ShardedFolderRoundTripKeepsShardsRewritesTheIndexAndCopiesOtherFiles()
    {
        string input = WriteSharded("in"), quantized = folder.File("q"), restored = folder.File("r");
        var log = new StringWriter();
        var forward = ModelQuantizer.Quantize(input, quantized, new QuantizeOptions { DoubleQuant = true }, log);

        Assert.Equal([Q, K, Up], forward.Converted.Select(r => r.Name));
        Assert.Equal(["config.json", Shard1, Shard2, Index, "tokenizer.json"], Entries(quantized));
        Assert.Contains("not copied: subfolder 'original'", log.ToString());
        Assert.Equal(File.ReadAllBytes(Path.Combine(input, "config.json")), File.ReadAllBytes(Path.Combine(quantized, "config.json")));
        var (map, total) = ReadIndex(quantized);
        using (var s1 = SafeTensorsFile.Open(Path.Combine(quantized, Shard1)))
        using (var s2 = SafeTensorsFile.Open(Path.Combine(quantized, Shard2)))
        {
            var expected = s1.Names.Select(n => (n, Shard1)).Concat(s2.Names.Select(n => (n, Shard2))).Order().ToArray();
            Assert.Equal(expected, map.Select(e => (e.Key, e.Value)).Order().ToArray());
            Assert.Contains($"{Q}.nested_absmax", s1.Names);
            Assert.Contains($"{Up}.quant_state.bitsandbytes__nf4", s2.Names);
            Assert.Equal(TotalBytes(s1) + TotalBytes(s2), total);
            Assert.Equal(total, forward.TotalBytesAfter);
            using var in1 = SafeTensorsFile.Open(Path.Combine(input, Shard1));
            AssertCopied(in1, s1, Embed);
            Assert.Equal(Metadata, s1.Metadata);
        }

        var back = ModelQuantizer.Dequantize(quantized, restored, new DequantizeOptions(), TextWriter.Null);
        Assert.Equal([Q, K, Up], back.Converted.Select(r => r.Name));
        var (originalMap, _) = ReadIndex(input);
        var (restoredMap, restoredTotal) = ReadIndex(restored);
        Assert.Equal(originalMap.OrderBy(e => e.Key, StringComparer.Ordinal), restoredMap.OrderBy(e => e.Key, StringComparer.Ordinal));
        Assert.Equal(back.TotalBytesAfter, restoredTotal);
        foreach (string shard in new[] { Shard1, Shard2 })
        {
            using var a = SafeTensorsFile.Open(Path.Combine(input, shard));
            using var r = SafeTensorsFile.Open(Path.Combine(restored, shard));
            Assert.Equal(a.Names, r.Names);
            foreach (string name in a.Names.Where(n => !back.Converted.Any(c => c.Name == n)))
            {
                AssertCopied(a, r, name);
            }

            foreach (string name in a.Names.Where(n => back.Converted.Any(c => c.Name == n)))
            {
                float[] exact = Expected(a, name, Quant4Type.Nf4, 64, doubleQuant: true).Dequantize();
                Assert.Equal(exact.Select(BitConverter.SingleToInt32Bits), r.ReadFloat32(name).Select(BitConverter.SingleToInt32Bits));
                Assert.Equal(a.GetInfo(name).Shape, r.GetInfo(name).Shape);
            }
        }
    }

    [Fact]
    public void FolderWithOneModelFileGivesAFolderWithoutAnIndex()
    {
        string input = folder.File("single");
        Directory.CreateDirectory(input);
        WriteMixed(Path.Combine(input, "model.safetensors"));
        File.WriteAllText(Path.Combine(input, "config.json"), Config);
        string output = folder.File("out");
        var report = ModelQuantizer.Quantize(input, output + Path.DirectorySeparatorChar, new QuantizeOptions(), TextWriter.Null);
        Assert.Equal(["config.json", "model.safetensors"], Entries(output));
        Assert.Equal(3, report.Converted.Count);
        Assert.Equal(Config, File.ReadAllText(Path.Combine(output, "config.json")));
    }

    [Fact]
    public void MissingOrSameInputAndOutputAreRejected()
    {
        string file = folder.File("in.safetensors"), sharded = WriteSharded("in");
        WriteMixed(file);
        var options = new QuantizeOptions();
        var missing = Assert.Throws<FileNotFoundException>(() => ModelQuantizer.Quantize(folder.File("nope"), folder.File("o"), options, TextWriter.Null));
        Assert.Contains("nope", missing.Message);
        Assert.Contains("is the input", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(file, file, options, TextWriter.Null)).Message);
        Assert.Contains("is the input", Assert.Throws<ArgumentException>(
            () => ModelQuantizer.Dequantize(sharded, sharded + Path.DirectorySeparatorChar, new DequantizeOptions(), TextWriter.Null)).Message);
        Assert.Contains("is a folder", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(file, sharded, options, TextWriter.Null)).Message);
        Assert.Contains("is a file", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(sharded, file, options, TextWriter.Null)).Message);
        string empty = folder.File("empty");
        Directory.CreateDirectory(empty);
        Assert.Contains("neither", Assert.Throws<FileNotFoundException>(() => ModelQuantizer.Quantize(empty, folder.File("o"), options, TextWriter.Null)).Message);
    }

    [Fact]
    public void InconsistentIndexesAreRejectedNamingTheShardAndTensor()
    {
        string input = WriteSharded("in");
        string indexPath = Path.Combine(input, Index);
        string good = File.ReadAllText(indexPath);

        AssertIndexError<InvalidDataException>(input, good.Replace($"\"{Bias}\"", "\"ghost.weight\": \"" + Shard1 + "\", \"" + Bias + "\""),
            "'ghost.weight'", Shard1, "no tensor");
        AssertIndexError<InvalidDataException>(input, good.Replace($"\"{Bias}\": \"{Shard1}\"", $"\"{Bias}\": \"{Shard2}\""), $"'{Bias}'", Shard2, Shard1);
        AssertIndexError<InvalidDataException>(input, good.Replace($"\"{Bias}\": \"{Shard1}\",", ""), $"'{Bias}'", "does not list");
        AssertIndexError<InvalidDataException>(input, good.Replace($"\"{Bias}\": \"{Shard1}\"", $"\"{Bias}\": \"../{Shard1}\""), $"'{Bias}'", "file name");
        AssertIndexError<InvalidDataException>(input, "{\"weight_map\": [1, 2]}", Index, "weight_map");
        AssertIndexError<InvalidDataException>(input, "{\"weight_map\": {", Index, "JSON");

        File.WriteAllText(indexPath, good);
        File.Delete(Path.Combine(input, Shard2));
        var e = Assert.Throws<FileNotFoundException>(() => ModelQuantizer.Quantize(input, folder.File("o"), new QuantizeOptions(), TextWriter.Null));
        Assert.Contains(Shard2, e.Message);
        Assert.Contains(Index, e.Message);
        Assert.False(Directory.Exists(folder.File("o")));
    }

    [Theory]
    [InlineData("(", null, "--include")]
    [InlineData(null, "[a-", "--exclude")]
    public void BadRegexesNameTheirOption(string? include, string? exclude, string option)
    {
        string input = folder.File("in.safetensors");
        WriteMixed(input);
        var e = Assert.Throws<ArgumentException>(
            () => ModelQuantizer.Quantize(input, folder.File("o.safetensors"), new QuantizeOptions { Include = include, Exclude = exclude }, TextWriter.Null));
        Assert.Contains($"option {option}", e.Message);
        Assert.Contains(include ?? exclude!, e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(16)]
    [InlineData(100)]
    [InlineData(8192)]
    public void InvalidBlocksizesAreRejected(int blocksize)
    {
        string input = folder.File("in.safetensors");
        WriteMixed(input);
        var e = Assert.Throws<ArgumentException>(
            () => ModelQuantizer.Quantize(input, folder.File("o.safetensors"), new QuantizeOptions { Blocksize = blocksize }, TextWriter.Null));
        Assert.Contains($"option --blocksize: {blocksize} ", e.Message);
        Assert.Equal(["in.safetensors"], folder.Entries());
    }

    [Fact]
    public void UnknownTypeAndDTypeNamesAreRejected()
    {
        Assert.Equal((Quant4Type.Nf4, Quant4Type.Fp4), (QuantizeOptions.ParseType("nf4"), QuantizeOptions.ParseType("FP4")));
        Assert.Contains("\"nf5\"", Assert.Throws<ArgumentException>(() => QuantizeOptions.ParseType("nf5")).Message);
        Assert.Equal(SafeTensorDType.BF16, DequantizeOptions.ParseDType("bf16"));
        Assert.Contains("\"f64\"", Assert.Throws<ArgumentException>(() => DequantizeOptions.ParseDType("f64")).Message);
        string input = folder.File("in.safetensors");
        WriteMixed(input);
        Assert.Contains("--dtype", Assert.Throws<ArgumentException>(() => ModelQuantizer.Dequantize(
            input, folder.File("o.safetensors"), new DequantizeOptions { DType = SafeTensorDType.I8 }, TextWriter.Null)).Message);
    }

    [Fact]
    public void AFailureInALaterShardLeavesAnExistingOutputFolderAsItWas()
    {
        string input = WriteSharded("in"), output = folder.File("q");
        ModelQuantizer.Quantize(input, output, new QuantizeOptions(), TextWriter.Null);
        var before = Entries(output).ToDictionary(n => n, n => File.ReadAllBytes(Path.Combine(output, n)));

        var tensors = Mixed().Where(t => t.Name is Up or Experts or Positions or Norm or LmHead).ToList();
        var up = tensors.FindIndex(t => t.Name == Up);
        var values = Enumerable.Repeat((Half)1, 16 * 72).ToArray();
        values[77] = Half.PositiveInfinity;
        tensors[up] = SafeTensor.FromHalf(Up, values, 16, 72);
        SafeTensorsWriter.Write(Path.Combine(input, Shard2), tensors, Metadata);
        var e = Assert.Throws<InvalidDataException>(() => ModelQuantizer.Quantize(input, output, new QuantizeOptions { DoubleQuant = true }, TextWriter.Null));
        Assert.Contains($"'{Up}'", e.Message);
        Assert.Contains("index 77", e.Message);
        Assert.Equal(before.Keys.Order(), Entries(output));
        Assert.All(before, entry => Assert.Equal(entry.Value, File.ReadAllBytes(Path.Combine(output, entry.Key))));

        var fresh = folder.File("fresh");
        Assert.Throws<InvalidDataException>(() => ModelQuantizer.Quantize(input, fresh, new QuantizeOptions(), TextWriter.Null));
        Assert.False(Directory.Exists(fresh));
    }

    [Fact]
    public void KeysThatWouldBeOverwrittenOrPartsWithoutTheirWeightAreRejected()
    {
        string input = folder.File("in.safetensors");
        SafeTensorsWriter.Write(input, [.. Mixed(), SafeTensor.FromFloat32($"{Q}.absmax", [1f], 1)]);
        var e = Assert.Throws<InvalidDataException>(() => ModelQuantizer.Quantize(input, folder.File("o.safetensors"), new QuantizeOptions(), TextWriter.Null));
        Assert.Contains($"'{Q}.absmax'", e.Message);

        string quantized = folder.File("q.safetensors"), orphan = folder.File("orphan.safetensors");
        WriteMixed(input);
        ModelQuantizer.Quantize(input, quantized, new QuantizeOptions(), TextWriter.Null);
        using (var file = SafeTensorsFile.Open(quantized))
        {
            SafeTensorsWriter.Write(orphan, file.Names.Where(n => n != K).Select(n => new SafeTensor(n, file.GetInfo(n).DType, [.. file.GetInfo(n).Shape], file.ReadBytes(n))));
        }

        var missing = Assert.Throws<InvalidDataException>(() => ModelQuantizer.Dequantize(orphan, folder.File("r.safetensors"), new DequantizeOptions(), TextWriter.Null));
        Assert.Contains($"packed weight '{K}' is missing", missing.Message);
        Assert.Contains("orphan.safetensors", missing.Message);
    }

    /// <summary>The Mixed tensors in two shards with an index, config.json, tokenizer.json and a subfolder.</summary>
    private string WriteSharded(string name)
    {
        string path = folder.File(name);
        Directory.CreateDirectory(Path.Combine(path, "original"));
        File.WriteAllText(Path.Combine(path, "original", "params.json"), "{}");
        var tensors = Mixed();
        var first = tensors.Take(5).ToList();
        var second = tensors.Skip(5).ToList();
        SafeTensorsWriter.Write(Path.Combine(path, Shard1), first, Metadata);
        SafeTensorsWriter.Write(Path.Combine(path, Shard2), second, Metadata);
        var map = first.ToDictionary(t => t.Name, _ => Shard1).Concat(second.ToDictionary(t => t.Name, _ => Shard2)).ToDictionary();
        var index = new { metadata = new { total_size = tensors.Sum(t => t.Data.Length) }, weight_map = map };
        File.WriteAllText(Path.Combine(path, Index), JsonSerializer.Serialize(index, new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(path, "config.json"), Config);
        File.WriteAllText(Path.Combine(path, "tokenizer.json"), "{\"version\": \"1.0\"}");
        return path;
    }

    private void AssertIndexError<TException>(string input, string index, params string[] fragments)
        where TException : Exception
    {
        File.WriteAllText(Path.Combine(input, Index), index);
        var e = Assert.Throws<TException>(() => ModelQuantizer.Quantize(input, folder.File("o"), new QuantizeOptions(), TextWriter.Null));
        Assert.All(fragments, f => Assert.Contains(f, e.Message));
        Assert.False(Directory.Exists(folder.File("o")));
    }

    private static (Dictionary<string, string> Map, long Total) ReadIndex(string path)
    {
        using var json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(path, Index)));
        var map = json.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        return (map, json.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
    }

    private static string[] Entries(string path) =>
        [.. Directory.EnumerateFileSystemEntries(path).Select(p => Path.GetFileName(p)!).Order(StringComparer.Ordinal)];
}
