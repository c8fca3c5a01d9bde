// Error messages of the load paths stay readable and name what was wrong: a checkpoint or adapter
// that disagrees everywhere lists the first few problems and a count (not kilobytes), each naming
// the key and both shapes; `adapters inspect` warns when the tensors' rank disagrees with the config's
// r or the tensors disagree with each other; invalid UTF-8 training data is refused naming the line
// and byte offset.
using System.CommandLine;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Text;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>Long problem lists are cut to the first few and a count; inspect and data loading say what is wrong.</summary>
public sealed class LoadErrorMessageTests : IDisposable
{
    private const string Q0 = "base_model.model.model.layers.0.self_attn.q_proj.";
    private const string V1 = "base_model.model.model.layers.1.self_attn.v_proj.";

    private readonly TempFolder folder = new();

    public LoadErrorMessageTests()
    {
        ModelFolder = System.IO.Path.Combine(folder.Path, "model");
        AdapterFolder = System.IO.Path.Combine(folder.Path, "adapter");
        var model = LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f);
        model.Save(ModelFolder);
        new PeftModel(LlamaForCausalLM.Load(ModelFolder), PeftModelTests.Config("q_proj,v_proj")).SaveAdapter(AdapterFolder);
    }

    private string ModelFolder { get; }

    private string AdapterFolder { get; }

    private string AdapterConfig => System.IO.Path.Combine(AdapterFolder, Lora.ConfigFile);

    private string AdapterWeights => System.IO.Path.Combine(AdapterFolder, Lora.WeightsFile);

    public void Dispose() => folder.Dispose();

    private void RewriteAdapter(Func<List<SafeTensor>, IEnumerable<SafeTensor>> edit)
    {
        List<SafeTensor> tensors;
        using (var file = SafeTensorsFile.Open(AdapterWeights))
        {
            tensors = [.. file.Names.Select(n => new SafeTensor(n, file.GetInfo(n).DType, [.. file.GetInfo(n).Shape], file.ReadBytes(n)))];
        }

        SafeTensorsWriter.Write(AdapterWeights, edit(tensors).ToList(), new Dictionary<string, string> { ["format"] = "pt" });
    }

    [Fact]
    public void AnAdapterThatDisagreesEverywhereListsTheFirstFiveProblemsAndACount()
    {
        File.WriteAllText(AdapterConfig, File.ReadAllText(AdapterConfig).Replace("\"r\": 4", "\"r\": 8", StringComparison.Ordinal));
        var e = Assert.Throws<InvalidDataException>(() => new PeftModel(LlamaForCausalLM.Load(ModelFolder)).LoadAdapter(AdapterFolder));
        Assert.StartsWith($"{AdapterWeights} does not fit the model with {AdapterConfig}: 8 problems: '{Q0}lora_A.weight': module 'model.layers.0.self_attn.q_proj' lora_A: "
            + "expected shape [8, 64], found [4, 64] (the config's r = 8 disagrees with the tensor's rank 4); ", e.Message, StringComparison.Ordinal);
        Assert.EndsWith("; … and 3 more.", e.Message, StringComparison.Ordinal);
        Assert.Equal(5, e.Message.Split("': module '").Length - 1);
    }

    [Fact]
    public void MissingAndUnexpectedKeysNameTheirShapes()
    {
        RewriteAdapter(t => t.Where(x => x.Name != Q0 + "lora_A.weight").Append(SafeTensor.FromFloat32("base_model.model.bogus.weight", [1f, 2f], 2)));
        var e = Assert.Throws<InvalidDataException>(() => new PeftModel(LlamaForCausalLM.Load(ModelFolder)).LoadAdapter(AdapterFolder));
        Assert.Equal($"{AdapterWeights} does not fit the model with {AdapterConfig}: 2 problems: missing key '{Q0}lora_A.weight' "
            + "(module 'model.layers.0.self_attn.q_proj' lora_A, shape [4, 64]); unexpected key 'base_model.model.bogus.weight' [2].", e.Message);
    }

    [Fact]
    public void ACheckpointThatDisagreesWithItsConfigEverywhereListsAFewProblems()
    {
        string config = System.IO.Path.Combine(ModelFolder, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"hidden_size\": 64", "\"hidden_size\": 128", StringComparison.Ordinal));
        var e = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.Load(ModelFolder));
        Assert.StartsWith($"{ModelFolder}: the checkpoint does not match config.json: ", e.Message, StringComparison.Ordinal);
        Assert.Matches(@"\d+ problems: tensor 'model\.embed_tokens\.weight' has shape \[256, 64\], expected \[256, 128\]; ", e.Message);
        Assert.Matches(@"; … and \d+ more\.$", e.Message);
        Assert.True(e.Message.Length < 1000, e.Message);
    }

    [Fact]
    public void InspectWarnsWhenTheConfigsRankDisagreesWithTheTensors()
    {
        File.WriteAllText(AdapterConfig, File.ReadAllText(AdapterConfig).Replace("\"r\": 4", "\"r\": 8", StringComparison.Ordinal));
        var (code, output, error) = Invoke("adapters", "inspect", AdapterFolder);
        Assert.Equal(0, code);
        Assert.Contains("method: LoRA (r = 8,", output);
        Assert.Equal("warning: adapter_config.json says r = 8 but the tensors of 4 module(s) have rank 4 (loading refuses them): "
            + "'model.layers.0.self_attn.q_proj'; 'model.layers.0.self_attn.v_proj'; 'model.layers.1.self_attn.q_proj'; 'model.layers.1.self_attn.v_proj'\n", error);
    }

    [Fact]
    public void InspectWarnsWhenTheTensorsDisagreeWithEachOther()
    {
        RewriteAdapter(t => t.Select(x => x.Name == V1 + "lora_B.weight" ? SafeTensor.FromFloat32(x.Name, new float[32 * 3], 32, 3) : x));
        var (code, _, error) = Invoke("adapters", "inspect", AdapterFolder);
        Assert.Equal(0, code);
        Assert.Equal("warning: the LoRA tensors disagree with each other: 1 module: module 'model.layers.1.self_attn.v_proj': "
            + "lora_A [4, 64] has rank 4 but lora_B [32, 3] has rank 3\n", error);
    }

    [Fact]
    public void CleanAdapterInspectsWithoutWarnings()
    {
        var (code, _, error) = Invoke("adapters", "inspect", AdapterFolder);
        Assert.Equal((0, ""), (code, error));
    }

    [Fact]
    public void InvalidUtf8InTrainingDataIsRefusedNamingTheLineAndByteOffset()
    {
        string path = folder.File("bad.txt");
        File.WriteAllBytes(path, [.. "hello world\n\nsecond "u8, 0xFF, .. " doc\n"u8]);
        var e = Assert.Throws<InvalidDataException>(() => TextDataset.Load(path, new ByteTokenizer()));
        Assert.Equal($"{path}: line 3: invalid UTF-8 at byte offset 20 (byte 8 of the line, 0xFF); training data must be UTF-8 text.", e.Message);

        var (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", path, "--steps", "1", "--seq", "4", "--out", System.IO.Path.Combine(folder.Path, "out"));
        Assert.Equal(1, code);
        Assert.Equal($"error: {e.Message}\n", error);
    }

    [Fact]
    public void Utf8WithABomAndTruncatedSequencesAtTheEnd()
    {
        string bom = folder.File("bom.txt");
        File.WriteAllBytes(bom, [0xEF, 0xBB, 0xBF, .. "héllo\n\nworld"u8]);
        var data = TextDataset.Load(bom, new ByteTokenizer());
        Assert.Equal(2, data.DocumentCount);
        Assert.Equal("héllo"u8.Length + "world"u8.Length, data.Tokens.Length);

        string truncated = folder.File("cut.txt");
        File.WriteAllBytes(truncated, [.. "ok\nh"u8, 0xC3]);
        var e = Assert.Throws<InvalidDataException>(() => TextDataset.Load(truncated, new ByteTokenizer()));
        Assert.Equal($"{truncated}: line 2: invalid UTF-8 at byte offset 4 (byte 2 of the line, 0xC3); training data must be UTF-8 text.", e.Message);
    }

    [Fact]
    public void LibraryRangeErrorsNameTheValueWithoutTheRuntimesActualValueLine()
    {
        var lm = LlamaForCausalLM.Load(ModelFolder);
        var generate = Assert.Throws<ArgumentOutOfRangeException>(() => lm.Generate([1], -3));
        Assert.Equal("maxNewTokens must be >= 0; got -3. (Parameter 'maxNewTokens')", generate.Message);
        using var cache = lm.CreateCache(4);
        var truncate = Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(2));
        Assert.Equal("the cache can be truncated to [0, 0] positions (those stored); got 2. (Parameter 'length')", truncate.Message);
        var data = new TextDataset([1, 2, 3, 4, 5]);
        var windows = Assert.Throws<ArgumentOutOfRangeException>(() => data.Sequential(0, 2).ToList());
        Assert.Equal("batch and seq must be positive; got batch 0, seq 2. (Parameter 'batch')", windows.Message);
        var count = Assert.Throws<ArgumentOutOfRangeException>(() => new TextDataset([1], -1));
        Assert.Equal("documentCount must be >= 0; got -1. (Parameter 'documentCount')", count.Message);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
