// The output rules of the writing verbs (merge, quantize, dequantize, demo) through the same
// System.CommandLine root the program builds, and of the library writers under them
// (LlamaForCausalLM.Save, ModelQuantizer): an existing output is replaced only with --overwrite,
// nothing is ever written inside an input folder or into a folder holding an input, and a
// replaced model folder keeps no model file of the old output (old shards and index, a
// tokenizer the new source lacks) that would change what it holds.
using System.CommandLine;
using PeftKernels.IO;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Quantization;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>--overwrite, input folders and stale files, verb by verb.</summary>
public sealed class OutputCommandTests : IDisposable
{
    private const string Shard1 = "model-00001-of-00002.safetensors";
    private const string Shard2 = "model-00002-of-00002.safetensors";
    private const string Index = "model.safetensors.index.json";

    private readonly TempFolder folder = new();

    public OutputCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        AdapterFolder = Path.Combine(folder.Path, "adapter");
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj", 2));
        PeftModelTests.Randomize(model, "default", 3);
        peft.SaveAdapter(AdapterFolder);
    }

    private string ModelFolder { get; }

    private string AdapterFolder { get; }

    public void Dispose() => folder.Dispose();

    /// <summary>An old sharded output: two shards, their index, a tokenizer and a note of the user's.</summary>
    private string OldShardedOutput(string name)
    {
        string dir = folder.File(name);
        Directory.CreateDirectory(dir);
        foreach (string file in new[] { Shard1, Shard2, Index, "tokenizer.json", "config.json", "notes.txt" })
        {
            File.WriteAllText(Path.Combine(dir, file), "old");
        }

        return dir;
    }

    private static string[] Entries(string dir) =>
        [.. Directory.EnumerateFileSystemEntries(dir).Select(p => Path.GetFileName(p)!).Order(StringComparer.Ordinal)];

    [Fact]
    public void QuantizeRefusesAnExistingOutputFileUnlessOverwrite()
    {
        string input = folder.File("in.safetensors"), output = folder.File("q.safetensors");
        ModelQuantizerFixtures.WriteMixed(input);
        File.WriteAllText(output, "precious");
        var (code, text, error) = Invoke("quantize", input, output);
        Assert.Equal((1, ""), (code, text));
        Assert.Equal($"error: output {output} already exists; give --overwrite to replace it.", error.Trim());
        Assert.Equal("precious", File.ReadAllText(output));

        Assert.Equal(0, Invoke("quantize", input, output, "--overwrite").Code);
        using var file = SafeTensorsFile.Open(output);
        Assert.True(Bnb4bitStateDict.IsQuantized(file, ModelQuantizerFixtures.Q));
    }

    [Theory]
    [InlineData("quantize")]
    [InlineData("dequantize")]
    public void QuantizeVerbsNeverWriteInsideOrAroundTheInputFolder(string verb)
    {
        var before = Entries(ModelFolder);
        string inside = Path.Combine(ModelFolder, "q");
        var (code, _, error) = Invoke(verb, ModelFolder, inside, "--overwrite");
        Assert.Equal(1, code);
        Assert.Contains($"output {inside} is inside the input folder input {ModelFolder}", error);
        (code, _, error) = Invoke(verb, ModelFolder, folder.Path, "--overwrite");
        Assert.Equal(1, code);
        Assert.Contains($"contains the input input {ModelFolder}", error);
        Assert.Equal(before, Entries(ModelFolder));

        // The library refuses the same, for callers that skip the CLI.
        var e = Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(ModelFolder, inside, new QuantizeOptions(), TextWriter.Null));
        Assert.Contains("is inside the input folder", e.Message);
        e = Assert.Throws<ArgumentException>(() => ModelQuantizer.Dequantize(ModelFolder, folder.Path, new DequantizeOptions(), TextWriter.Null));
        Assert.Contains("contains the input folder", e.Message);
        Assert.Equal(before, Entries(ModelFolder));
    }

    [Fact]
    public void QuantizeOverwriteOfAFolderKeepsNoStaleShardOrIndex()
    {
        string output = OldShardedOutput("q");
        var (code, _, error) = Invoke("quantize", ModelFolder, output);
        Assert.Equal(1, code);
        Assert.Contains($"output {output} already exists and holds 6 entries; give --overwrite", error);

        (code, _, error) = Invoke("quantize", ModelFolder, output, "--overwrite");
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(["config.json", "model.safetensors", "notes.txt"], Entries(output));
        Assert.Equal(File.ReadAllBytes(Path.Combine(ModelFolder, "config.json")), File.ReadAllBytes(Path.Combine(output, "config.json")));
        Assert.Contains(LlamaForCausalLM.Load(output).NamedParameters(), p => p.Parameter.DType == TensorDType.Q4);

        string restored = OldShardedOutput("r");
        Assert.Equal(0, Invoke("dequantize", output, restored, "--overwrite").Code);
        Assert.Equal(["config.json", "model.safetensors", "notes.txt"], Entries(restored));
    }

    [Fact]
    public void MergeRefusesAnExistingOutputAndOutputsInsideAnyInput()
    {
        string output = OldShardedOutput("merged");
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--out", output);
        Assert.Equal(1, code);
        Assert.Contains($"--out {output} already exists and holds 6 entries; give --overwrite", error);
        foreach (var (inside, input) in new[] { (Path.Combine(ModelFolder, "m"), $"--model {ModelFolder}"), (Path.Combine(AdapterFolder, "m"), $"--adapter {AdapterFolder}") })
        {
            (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--out", inside, "--overwrite");
            Assert.Equal(1, code);
            Assert.Contains($"--out {inside} is inside the input folder {input}", error);
            Assert.False(Directory.Exists(inside));
        }

        (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--out", folder.Path, "--overwrite");
        Assert.Equal(1, code);
        Assert.Contains($"--out {folder.Path} contains the input --model {ModelFolder}", error);
    }

    [Fact]
    public void MergeOverwriteReplacesAnOldShardedModelWithNoStaleFileLeft()
    {
        string output = OldShardedOutput("merged");
        var (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", AdapterFolder, "--out", output, "--overwrite");
        Assert.Equal((0, ""), (code, error));

        // The old index would make loaders read the old shards; the old tokenizer is not the source's (it has none).
        Assert.Equal(["config.json", "model.safetensors", "notes.txt"], Entries(output));
        Assert.Equal("old", File.ReadAllText(Path.Combine(output, "notes.txt")));
        Assert.Equal(LlamaForCausalLM.Load(ModelFolder).Config, LlamaForCausalLM.Load(output).Config);
    }

    [Fact]
    public void SaveRefusesTheFolderTheModelWasLoadedFrom()
    {
        var model = LlamaForCausalLM.Load(ModelFolder);
        var before = Entries(ModelFolder).Select(f => File.ReadAllBytes(Path.Combine(ModelFolder, f))).ToList();
        Assert.Contains("is the input folder", Assert.Throws<ArgumentException>(() => model.Save(ModelFolder + Path.DirectorySeparatorChar)).Message);
        Assert.Contains("is inside the input folder", Assert.Throws<ArgumentException>(() => model.Save(Path.Combine(ModelFolder, "copy"))).Message);
        Assert.Equal(before, Entries(ModelFolder).Select(f => File.ReadAllBytes(Path.Combine(ModelFolder, f))).ToList());
    }

    [Fact]
    public void DemoRefusesAFolderWithFilesUnlessOverwrite()
    {
        string output = folder.File("demo");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "metrics.json"), "precious");
        var (code, text, error) = Invoke("demo", "--fast", "--out", output);
        Assert.Equal((1, ""), (code, text));
        Assert.Equal($"error: --out {output} already exists and holds 1 entry; give --overwrite to replace its files, or choose a new folder.", error.Trim());
        Assert.Equal(["metrics.json"], Entries(output));
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
