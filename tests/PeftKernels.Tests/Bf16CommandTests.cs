// `--compute fp32|bf16` of peft score, generate, pretrain and train through the program's command root, and a
// training run at bf16 compute reaching the demo's accuracy margin (DemoRunner.RunMethods, LoRA row).
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Cli;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests;

public sealed class Bf16CommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public Bf16CommandTests()
    {
        ModelFolder = System.IO.Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
    }

    private string ModelFolder { get; }

    public void Dispose() => folder.Dispose();

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    private static double Loss(string output)
    {
        using var json = JsonDocument.Parse(output);
        return json.RootElement.GetProperty("loss").GetDouble();
    }

    [Fact]
    public void ScoreAtBf16ComputeIsCloseToFp32ButNotEqual()
    {
        string tokens = "1,2,3,40,200,7,9,11,13,17,19,23";
        var fp32 = Invoke("score", "--model", ModelFolder, "--tokens", tokens, "--threads", "1");
        var explicitFp32 = Invoke("score", "--model", ModelFolder, "--tokens", tokens, "--threads", "1", "--compute", "fp32");
        var bf16 = Invoke("score", "--model", ModelFolder, "--tokens", tokens, "--threads", "1", "--compute", "bf16");
        Assert.Equal((0, ""), (fp32.Code, fp32.Error));
        Assert.Equal((0, ""), (bf16.Code, bf16.Error));
        Assert.Equal(fp32.Output, explicitFp32.Output);
        Assert.NotEqual(Loss(fp32.Output), Loss(bf16.Output));
        Assert.InRange(Loss(bf16.Output), Loss(fp32.Output) * 0.98, Loss(fp32.Output) * 1.02);
    }

    [Fact]
    public void ComputeRejectsOtherValues()
    {
        var bad = Invoke("score", "--model", ModelFolder, "--tokens", "1,2", "--compute", "fp16");
        Assert.NotEqual(0, bad.Code);
        Assert.Contains("'fp16' not recognized", bad.Error);
    }

    [CudaFact]
    public void Bf16ComputeIsRefusedOnTheGpu()
    {
        var cuda = Invoke("score", "--model", ModelFolder, "--tokens", "1,2", "--compute", "bf16", "--device", "cuda");
        Assert.NotEqual(0, cuda.Code);
        Assert.Contains("--compute bf16 applies to the CPU kernels", cuda.Error);
    }

    [Theory]
    [InlineData("train")]
    [InlineData("pretrain")]
    [InlineData("generate")]
    [InlineData("score")]
    public void EveryVerbDocumentsCompute(string verb)
    {
        var (code, output, _) = Invoke(verb, "--help");
        Assert.Equal(0, code);
        Assert.Contains("--compute", output);
    }

    [Fact]
    public void GenerateAndPretrainRunAtBf16Compute()
    {
        var generated = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6,7,8,9,10", "--max-new-tokens", "4", "--compute", "bf16");
        Assert.Equal((0, ""), (generated.Code, generated.Error));
        Assert.Equal(4, generated.Output.Trim().Split(',').Length);

        string data = folder.File("data.txt");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat("the cat sat on the mat. the dog sat on the log.\n\n", 40)));
        string output = folder.File("pretrained");
        var pretrain = Invoke("pretrain", "--config", "tiny", "--data", data, "--steps", "20", "--batch", "4", "--seq", "24", "--lr", "1e-2", "--seed", "2",
            "--compute", "bf16", "--out", output);
        Assert.True(pretrain.Code == 0, pretrain.Error);
        Assert.True(File.Exists(Path.Combine(output, "config.json")));
    }

    [Fact]
    public void LoraTrainedAtBf16ComputeReachesTheDemoMargin()
    {
        var (console, live) = TrainingView.ConsoleFor(new StringWriter());
        var runner = new DemoRunner(new DemoOptions(folder.File("demo"), Fast: true, Seed: 0, Threads: 0, Device.Cpu) { Compute = ComputePrecision.Bf16 }, console, live);
        var rows = runner.RunMethods([DemoMethods.All.Single(m => m.Name == "lora")]);
        var lora = Assert.Single(rows);
        // The demo's margin (DemoMethodsTests): at least 30 points over the base on the held-out prompts.
        Assert.True(lora.AccuracyAfter >= lora.AccuracyBefore + 0.30, $"bf16 lora: accuracy {lora.AccuracyBefore:P0} → {lora.AccuracyAfter:P0}");
        Assert.True(double.IsFinite(lora.FinalLoss));
    }
}
