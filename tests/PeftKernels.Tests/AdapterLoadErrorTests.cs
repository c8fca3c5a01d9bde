using System.Text;
using PeftKernels.IO;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Loading a bad adapter folder: one clear error naming every problem, and the model left exactly as it was.</summary>
public sealed class AdapterLoadErrorTests : IDisposable
{
    private const string Q0 = "base_model.model.model.layers.0.self_attn.q_proj.";
    private const string V1 = "base_model.model.model.layers.1.self_attn.v_proj.";

    private readonly TempFolder folder = new();

    public AdapterLoadErrorTests()
    {
        var source = LlamaModelTests.TinyModel();
        new PeftModel(source, PeftModelTests.Config("q_proj,v_proj")).SaveAdapter(folder.Path);
    }

    public void Dispose() => folder.Dispose();

    private string Weights => folder.File(Lora.WeightsFile);

    private string ConfigPath => folder.File(Lora.ConfigFile);

    /// <summary>Rewrites the weights file with the tensors <paramref name="edit"/> returns (from the valid ones).</summary>
    private void Rewrite(Func<List<SafeTensor>, IEnumerable<SafeTensor>> edit)
    {
        List<SafeTensor> tensors;
        using (var file = SafeTensorsFile.Open(Weights))
        {
            tensors = [.. file.Names.Select(n => new SafeTensor(n, file.GetInfo(n).DType, [.. file.GetInfo(n).Shape], file.ReadBytes(n)))];
        }

        SafeTensorsWriter.Write(Weights, edit(tensors).ToList(), new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Loads the folder into a fresh model, expects <typeparamref name="T"/> with every fragment, and checks nothing changed.</summary>
    private static void AssertRefused<T>(string path, params string[] fragments)
        where T : Exception
    {
        var model = LlamaModelTests.TinyModel();
        var before = model.NamedParameters().Select(p => (p.Name, p.Parameter, Values: (float[])p.Parameter.Data.Clone())).ToList();
        var peft = new PeftModel(model);
        var e = Assert.Throws<T>(() => peft.LoadAdapter(path, "x"));
        foreach (string fragment in fragments)
        {
            Assert.Contains(fragment, e.Message);
        }

        Assert.Empty(peft.Adapters);
        var after = model.NamedParameters().ToList();
        Assert.Equal(before.Select(b => b.Name), after.Select(a => a.Name));
        for (int i = 0; i < before.Count; i++)
        {
            Assert.Same(before[i].Parameter, after[i].Parameter);
            Assert.Equal(before[i].Values, after[i].Parameter.Data);
            Assert.False(after[i].Parameter.Trainable && !before[i].Parameter.Trainable);
        }
    }

    [Fact]
    public void EveryMissingAndUnexpectedKeyIsListedInOneError()
    {
        Rewrite(t => t.Where(x => x.Name != Q0 + "lora_A.weight" && x.Name != V1 + "lora_B.weight")
            .Append(SafeTensor.FromFloat32("base_model.model.bogus.weight", [1f], 1)));
        AssertRefused<InvalidDataException>(folder.Path, "missing key '" + Q0 + "lora_A.weight'", "missing key '" + V1 + "lora_B.weight'",
            "unexpected key 'base_model.model.bogus.weight'");
    }

    [Fact]
    public void AShapeMismatchNamesTheModuleAndBothShapes()
    {
        Rewrite(t => t.Select(x => x.Name == V1 + "lora_B.weight" ? SafeTensor.FromFloat32(x.Name, new float[31 * 4], 31, 4) : x));
        AssertRefused<InvalidDataException>(folder.Path, "module 'model.layers.1.self_attn.v_proj' lora_B: expected shape [32, 4], found [31, 4]");
    }

    [Fact]
    public void ARankInTheConfigThatDisagreesWithTheTensorsSaysSo()
    {
        File.WriteAllText(ConfigPath, File.ReadAllText(ConfigPath).Replace("\"r\": 4", "\"r\": 8", StringComparison.Ordinal));
        AssertRefused<InvalidDataException>(folder.Path, "module 'model.layers.0.self_attn.q_proj' lora_A: expected shape [8, 64], found [4, 64] (the config's r = 8 disagrees with the tensor's rank 4)",
            "lora_B: expected shape [64, 8], found [64, 4] (the config's r = 8 disagrees with the tensor's rank 4)");
    }

    [Fact]
    public void ANonFloatTensorIsNamed()
    {
        Rewrite(t => t.Select(x => x.Name == Q0 + "lora_B.weight" ? new SafeTensor(x.Name, SafeTensorDType.I32, [64, 4], x.Data) : x));
        AssertRefused<InvalidDataException>(folder.Path, $"'{Q0}lora_B.weight' is I32; adapter tensors must be F32, F16 or BF16");
    }

    [Theory]
    [InlineData("ADALORA", "peft_type is \"ADALORA\"; expected \"LORA\" or \"IA3\"")]
    [InlineData("PREFIX_TUNING", "holds a whole-model adapter (prompt learning, bottleneck, X-LoRA or MixLoRA), not LoRA / DoRA / IA³: load it with ModelAdapterFolders.Load")]
    [InlineData("IA3", "feedforward_modules must be a subset of target_modules [q_proj, v_proj]; [down_proj] is not a target")]
    public void AnUnknownOrMismatchedPeftTypeIsRefused(string type, string expected)
    {
        File.WriteAllText(ConfigPath, File.ReadAllText(ConfigPath).Replace("\"LORA\"", $"\"{type}\"", StringComparison.Ordinal));
        AssertRefused<InvalidDataException>(folder.Path, expected);
    }

    [Fact]
    public void ATruncatedWeightsFileIsRefused()
    {
        var bytes = File.ReadAllBytes(Weights);
        File.WriteAllBytes(Weights, bytes[..^100]);
        AssertRefused<InvalidDataException>(folder.Path, Weights, "must satisfy 0 <= begin <= end <=");
        File.WriteAllBytes(Weights, bytes[..20]);
        AssertRefused<InvalidDataException>(folder.Path, "but the file has only 12 bytes after the 8-byte length");
    }

    [Theory]
    [InlineData("[0,1024]", "[1024,2048]", "data_offsets [1024, 2048] must satisfy 0 <= begin <= end <= 1536")]
    [InlineData("[0,1024]", "[512,1536]", "overlap")]
    public void HeaderOffsetsOutOfRangeOrOverlappingAreRefused(string first, string second, string expected)
    {
        // A hand-made file: q_proj of layer 0 only, 1536 data bytes ([4, 64] and [64, 4] F32 need 1024 each).
        string header = $"{{\"{Q0}lora_A.weight\":{{\"dtype\":\"F32\",\"shape\":[4,64],\"data_offsets\":{first}}},"
            + $"\"{Q0}lora_B.weight\":{{\"dtype\":\"F32\",\"shape\":[64,4],\"data_offsets\":{second}}}}}";
        var bytes = new List<byte>(BitConverter.GetBytes((ulong)header.Length));
        bytes.AddRange(Encoding.UTF8.GetBytes(header));
        bytes.AddRange(new byte[1536]);
        File.WriteAllBytes(Weights, [.. bytes]);
        AssertRefused<InvalidDataException>(folder.Path, expected);
    }

    [Fact]
    public void AFolderWithoutAdapterFilesOrWithATakenNameIsRefused()
    {
        File.Delete(ConfigPath);
        AssertRefused<FileNotFoundException>(folder.Path, "is not a PEFT adapter folder: it needs adapter_config.json and adapter_model.safetensors");

        var model = LlamaModelTests.TinyModel();
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj"), "x");
        new PeftModel(LlamaModelTests.TinyModel(), PeftModelTests.Config("q_proj")).SaveAdapter(folder.Path);
        Assert.Contains("already has an adapter named 'x'", Assert.Throws<ArgumentException>(() => peft.LoadAdapter(folder.Path, "x")).Message);
        Assert.Equal(new[] { "x" }, peft.Adapters.Keys);
    }
}
