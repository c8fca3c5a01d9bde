// X-LoRA in the `peft` tool: train --method xlora with its options, score / generate --adapter, adapters inspect, the
// option checks, and generation on the engine (--adapter and a requests file), through the same System.CommandLine root the program builds.
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Peft.XLora;
using Xunit;

namespace PeftKernels.Tests;

public sealed class XLoraCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public XLoraCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        Data = folder.File("data.txt");
        File.WriteAllText(Data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
        Experts = [SaveExpert("e0", "q_proj,v_proj", 1), SaveExpert("e1", "v_proj,down_proj", 2)];
    }

    private string ModelFolder { get; }

    private string Data { get; }

    private string[] Experts { get; }

    public void Dispose() => folder.Dispose();

    private string SaveExpert(string name, string targets, int seed)
    {
        var model = LlamaForCausalLM.Load(ModelFolder);
        var peft = new PeftModel(model);
        peft.AddAdapter("default", PeftModelTests.Config(targets, 4), seed);
        PeftModelTests.Randomize(model, "default", seed * 10);
        string dir = Path.Combine(folder.Path, name);
        peft.SaveAdapter(dir);
        return dir;
    }

    private string Train(string output, params string[] extra) =>
        Assert.IsType<string>(Ok(["train", "--model", ModelFolder, "--data", Data, "--method", "xlora", "--experts", string.Join(",", Experts),
            "--steps", "3", "--batch", "2", "--seq", "16", "--lr", "1e-2", "--seed", "1", "--out", output, .. extra]));

    private static string Ok(string[] args)
    {
        var (code, text, error) = Invoke(args);
        Assert.True(code == 0, $"exit {code}: {error}");
        return text;
    }

    [Fact]
    public void TrainScoreGenerateAndInspectAnXLoraFolder()
    {
        string output = Path.Combine(folder.Path, "xlora");
        string text = Train(output, "--top-k-lora", "1", "--softmax-temperature", "0.5", "--layerwise", "--xlora-depth", "2", "--xlora-size", "8",
            "--xlora-dropout", "0", "--global-scaling-weight", "0.8");
        Assert.Contains("X-LoRA: 2 experts over 6 LoRA modules; trainable params: 628 ||", text, StringComparison.Ordinal);
        var config = XLoraConfig.Load(Path.Combine(output, Lora.ConfigFile));
        Assert.Equal((1, 0.5, true, 2, 8, 0.8, 0.0), (config.TopKLora, config.SoftmaxTemperature, config.LayerwiseScalings, config.XLoraDepth,
            config.XLoraSize, config.GlobalScalingWeight, config.XLoraDropoutP));
        Assert.True(File.Exists(Path.Combine(output, "1", Lora.WeightsFile)));

        // score and generate --adapter give what the library gives with the folder loaded.
        var model = LlamaForCausalLM.Load(ModelFolder);
        var xlora = XLoraModel.Load(model, output);
        int[] tokens = [97, 98, 99, 97, 120];
        double expected = model.Score(tokens);
        var scored = JsonDocument.Parse(Ok(["score", "--model", ModelFolder, "--adapter", output, "--tokens", string.Join(",", tokens)])).RootElement;
        Assert.Equal(expected, scored.GetProperty("loss").GetDouble(), 5);
        int[] generated;
        using (Tape.NoGrad())
        {
            generated = model.Generate([1, 97, 98], 5);
        }

        string line = Ok(["generate", "--model", ModelFolder, "--adapter", output, "--prompt-tokens", "1,97,98", "--max-new-tokens", "5"]).Trim();
        Assert.Equal(string.Join(",", generated), line);

        // --top-k is an engine-only option: accepted, so the X-LoRA folder runs on the engine (top-k 1 is greedy).
        Assert.Equal(line, Ok(["generate", "--model", ModelFolder, "--adapter", output, "--prompt-tokens", "1,97,98", "--max-new-tokens", "5", "--top-k", "1"]).Trim());

        string inspected = Ok(["adapters", "inspect", output]);
        Assert.Contains("method: X-LoRA (2 LoRA experts, classifier depth 2 × 8, layerwise scalings", inspected, StringComparison.Ordinal);
        Assert.Contains("base_model.internal_xlora_classifier.layers.2.weight", inspected, StringComparison.Ordinal);
        Assert.Contains("expert \"1\": LoRA r = 4", inspected, StringComparison.Ordinal);

        // The engine serves the folder per request (generate --adapter above ran on it; a requests file too), and refuses a
        // model with X-LoRA attached, whose base weights it would serve without the X-LoRA.
        Assert.True(InferenceEngine.Serves(output));
        Assert.Contains("would ignore the X-LoRA attached", Assert.Throws<NotSupportedException>(() => new InferenceEngine(model)).Message, StringComparison.Ordinal);
        string requests = folder.File("requests.jsonl");
        File.WriteAllText(requests, "{\"prompt_tokens\": [1, 97, 98], \"adapter\": \"" + output.Replace("\\", "\\\\", StringComparison.Ordinal) + "\", \"max_new_tokens\": 5}\n");
        string served = Ok(["generate", "--model", ModelFolder, "--requests", requests]);
        Assert.Contains("\"tokens\":[" + string.Join(",", generated) + "]", served, StringComparison.Ordinal);
        Assert.NotNull(xlora);

        // peft merge refuses it: per-token mixing has no static weight.
        var (mergeCode, _, mergeError) = Invoke("merge", "--model", ModelFolder, "--adapter", output, "--out", Path.Combine(folder.Path, "merged"));
        Assert.Equal(1, mergeCode);
        Assert.Contains("X-LoRA adapter, which cannot be merged", mergeError, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(folder.Path, "merged")));
    }

    [Theory]
    [InlineData("--method", "lora", "--experts", "x", "apply to --method xlora")]
    [InlineData("--method", "xlora", "--top-k-lora", "1", "needs --experts")]
    [InlineData("--method", "xlora", "--experts", "nowhere", "not a PEFT adapter folder")]
    public void BadXLoraOptionsAreRefused(string a, string b, string c, string d, string message)
    {
        var (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, a, b, c, d, "--steps", "1", "--out", Path.Combine(folder.Path, "bad"));
        Assert.NotEqual(0, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
    }

    [Fact]
    public void TopKAboveTheExpertCountIsRefused()
    {
        var (code, _, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "xlora", "--experts", string.Join(",", Experts),
            "--top-k-lora", "3", "--steps", "1", "--out", Path.Combine(folder.Path, "bad"));
        Assert.NotEqual(0, code);
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"--top-k-lora must be at most the number of --experts (2)"), error, StringComparison.Ordinal);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
