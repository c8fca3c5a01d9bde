// Bottleneck adapters in the `peft` tool on a tiny model: `train --method bottleneck` with its options,
// `score` / `generate --adapter` on a bottleneck folder and on a composition folder, `adapters inspect`,
// and the refusals (LoRA options with bottleneck, bottleneck options with LoRA).
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft.Bottleneck;
using Xunit;

namespace PeftKernels.Tests;

public sealed class BottleneckCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public BottleneckCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        Data = folder.File("data.txt");
        File.WriteAllText(Data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
    }

    private string ModelFolder { get; }

    private string Data { get; }

    public void Dispose() => folder.Dispose();

    [Theory]
    [InlineData("houlsby", "swish", 2320)]
    [InlineData("pfeiffer", "relu", 1160)]
    [InlineData("parallel", "relu", 8384)]
    public void TrainSavesAnAdapterHubFolderThatScoresAndGenerates(string variant, string activation, int parameters)
    {
        string output = Path.Combine(folder.Path, variant);
        var (code, text, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "bottleneck", "--bottleneck-config", variant,
            "--steps", "3", "--batch", "2", "--seq", "16", "--lr", "1e-2", "--out", output);
        Assert.Equal((0, ""), (code, error));

        // hidden 64, 2 layers; per site m·64 + m + 64·m + 64: houlsby m = 4 at 4 sites (4 × 580), pfeiffer at 2, parallel m = 32 at 2 (2 × 4192).
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"{parameters:N0} trainable parameters"), text);
        Assert.True(File.Exists(Path.Combine(output, "adapter.safetensors")));
        var (config, _) = BottleneckConfigJson.Read(Path.Combine(output, "adapter_config.json"));
        Assert.Equal(activation, config.NonLinearity);
        Assert.Equal("mam_adapter", config.InitWeights);

        var lm = LlamaForCausalLM.Load(ModelFolder);
        var set = BottleneckAdapters.Load(lm, output);
        double expected;
        using (Tape.NoGrad())
        {
            expected = lm.Score([5, 17, 200, 3, 3, 99, 42]);
        }

        (code, text, error) = Invoke("score", "--model", ModelFolder, "--adapter", output, "--tokens", "5,17,200,3,3,99,42");
        Assert.Equal((0, ""), (code, error));
        using (var json = JsonDocument.Parse(text))
        {
            Assert.Equal(expected, json.RootElement.GetProperty("loss").GetDouble(), 5);
        }

        (code, text, error) = Invoke("generate", "--model", ModelFolder, "--adapter", output, "--prompt-tokens", "5,17,200", "--max-new-tokens", "4");
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(string.Join(",", lm.Generate([5, 17, 200], 4)), text.Trim());
        Assert.Single(set.AdapterNames);
    }

    [Fact]
    public void TrainOptionsOverrideThePresetAndForeignOptionsAreRefused()
    {
        string output = Path.Combine(folder.Path, "custom");
        var (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "bottleneck", "--bottleneck-config", "pfeiffer",
            "--reduction-factor", "8", "--non-linearity", "tanh", "--scaling", "learned", "--adapter-init", "bert", "--steps", "1", "--batch", "1", "--seq", "8", "--out", output);
        Assert.Equal((0, ""), (code, error));
        var (config, _) = BottleneckConfigJson.Read(Path.Combine(output, "adapter_config.json"));
        Assert.Equal(BottleneckConfig.Pfeiffer() with { ReductionFactor = 8, NonLinearity = "tanh", ScalingKind = BottleneckScalingKind.Learned, InitWeights = "bert" }, config);

        (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "bottleneck", "--r", "4", "--out", Path.Combine(folder.Path, "x"));
        Assert.Equal(1, code);
        Assert.Contains("--r is a LoRA option", error);
        (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "lora", "--reduction-factor", "4", "--out", Path.Combine(folder.Path, "y"));
        Assert.Equal(1, code);
        Assert.Contains("--reduction-factor applies to --method bottleneck only", error);
        (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "bottleneck", "--scaling", "big", "--out", Path.Combine(folder.Path, "z"));
        Assert.Equal(1, code);
        Assert.Contains("--scaling must be a number, learned or channel", error);
    }

    [Fact]
    public void InspectAndScoreUnderstandACompositionFolder()
    {
        var lm = LlamaForCausalLM.Load(ModelFolder);
        var set = BottleneckAdapters.Of(lm);
        set.Add("a", BottleneckConfig.Houlsby(), seed: 1);
        set.Add("b", BottleneckConfig.Pfeiffer(), seed: 2);
        var fuse = AdapterSetup.Fuse("a", "b");
        set.AddFusion(fuse);
        set.ActiveSetup = fuse;
        string dir = Path.Combine(folder.Path, "fused");
        set.Save(dir);

        var (code, text, error) = Invoke("adapters", "inspect", dir);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("method: bottleneck composition Fuse[a, b]", text);
        Assert.Contains("method: bottleneck adapter 'a', Houlsby (double_seq_bn)", text);
        Assert.Contains("method: bottleneck adapter 'b', Pfeiffer (seq_bn)", text);
        Assert.Contains("fusion 'a,b'", text);
        Assert.Contains("model.layers.1.output_adapters.adapter_fusion_layer.a,b.value.weight", text);
        Assert.Contains("merge: not possible", text);

        (code, _, error) = Invoke("merge", "--model", ModelFolder, "--adapter", dir, "--out", Path.Combine(folder.Path, "merged"));
        Assert.Equal(1, code);
        Assert.Contains("cannot be merged into the base weights", error);

        (code, text, error) = Invoke("score", "--model", ModelFolder, "--adapter", dir, "--tokens", "5,17,200,3");
        Assert.Equal((0, ""), (code, error));
        double expected;
        using (Tape.NoGrad())
        {
            expected = lm.Score([5, 17, 200, 3]);
        }

        using var json = JsonDocument.Parse(text);
        Assert.Equal(expected, json.RootElement.GetProperty("loss").GetDouble(), 5);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
