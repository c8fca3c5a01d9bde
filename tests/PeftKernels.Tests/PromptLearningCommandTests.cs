// `peft train --method prompt|p-tuning|prefix` with their options, then `score`, `generate` and `adapters inspect` on the
// folder, and the refusals (merge, misplaced options), through the same System.CommandLine root the program builds.
using System.CommandLine;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class PromptLearningCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public PromptLearningCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 8 }, seed: 4, scale: 5f).Save(ModelFolder);
        Data = folder.File("data.txt");
        File.WriteAllText(Data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
    }

    private string ModelFolder { get; }

    private string Data { get; }

    public void Dispose() => folder.Dispose();

    [Theory]
    [InlineData("prompt", "--prompt-init|text|--prompt-init-text|abc xyz", "PROMPT_TUNING", 64)]
    [InlineData("prompt", "--prompt-init|sample-vocab", "PROMPT_TUNING", 64)]
    [InlineData("p-tuning", "--encoder-hidden-size|12", "P_TUNING", 64)]
    [InlineData("prefix", "", "PREFIX_TUNING", 2 * 2 * 16)]
    [InlineData("prefix", "--prefix-projection|--encoder-hidden-size|10", "PREFIX_TUNING", 2 * 2 * 16)]
    public void TrainThenScoreGenerateAndInspect(string method, string options, string peftType, int width)
    {
        string output = Path.Combine(folder.Path, method);
        string[] extra = options.Length == 0 ? [] : options.Split('|');
        var (code, text, error) = Invoke(["train", "--model", ModelFolder, "--data", Data, "--method", method, "--virtual-tokens", "5", .. extra,
            "--steps", "3", "--batch", "2", "--seq", "12", "--lr", "1e-2", "--seed", "1", "--out", output]);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains($"{method}: ", text, StringComparison.Ordinal);
        Assert.Contains("step 3/3", text, StringComparison.Ordinal);
        var config = PromptLearningConfig.Load(Path.Combine(output, Lora.ConfigFile));
        Assert.Equal((peftType, 5), (config.Type, config.NumVirtualTokens));
        using (var file = IO.SafeTensorsFile.Open(Path.Combine(output, Lora.WeightsFile)))
        {
            Assert.Equal([5L, width], file.GetInfo(PromptLearningAdapter.TensorName).Shape);
        }

        var scored = Invoke("score", "--model", ModelFolder, "--adapter", output, "--tokens", "97,98,99,97,98,99");
        Assert.Equal(0, scored.Code);
        Assert.NotEqual(Invoke("score", "--model", ModelFolder, "--tokens", "97,98,99,97,98,99").Output, scored.Output);

        // generate --adapter equals the library's greedy generation with the adapter attached.
        var generated = Invoke("generate", "--model", ModelFolder, "--adapter", output, "--prompt-tokens", "97,98,99", "--max-new-tokens", "4");
        Assert.Equal((0, ""), (generated.Code, generated.Error));
        var lm = LlamaForCausalLM.Load(ModelFolder);
        ModelAdapterFolders.Load(lm, output);
        Assert.Equal(string.Join(",", lm.Generate([97, 98, 99], 4)), generated.Output.Trim());

        var inspected = Invoke("adapters", "inspect", output);
        Assert.Equal((0, ""), (inspected.Code, inspected.Error));
        Assert.Contains("merge: not possible (CanMerge false)", inspected.Output, StringComparison.Ordinal);
        Assert.Contains($"prompt_embeddings  F32   [5, {width}]", inspected.Output, StringComparison.Ordinal);

        var merged = Invoke("merge", "--model", ModelFolder, "--adapter", output, "--out", folder.File("merged"));
        Assert.Equal(1, merged.Code);
        Assert.Contains("do not merge", merged.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--method|lora|--virtual-tokens|4", "--virtual-tokens apply to --method prompt, p-tuning or prefix, not lora")]
    [InlineData("--method|prompt|--r|4", "--r apply to the LoRA methods, not to --method prompt")]
    [InlineData("--method|prompt|--prompt-init|text", "--prompt-init text needs --prompt-init-text")]
    [InlineData("--method|prefix|--prompt-init|sample-vocab", "--prompt-init and --prompt-init-text apply to --method prompt, not prefix")]
    [InlineData("--method|prefix|--encoder-hidden-size|8", "--encoder-hidden-size applies to --method p-tuning, and to prefix with --prefix-projection")]
    [InlineData("--method|p-tuning|--prefix-projection", "--prefix-projection applies to --method prefix, not p-tuning")]
    [InlineData("--method|prompt|--virtual-tokens|0", "--virtual-tokens")]
    public void MisplacedOptionsAreRefused(string options, string message)
    {
        var (code, _, error) = Invoke(["train", "--model", ModelFolder, "--data", Data, .. options.Split('|'), "--steps", "1", "--out", folder.File("x")]);
        Assert.NotEqual(0, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
