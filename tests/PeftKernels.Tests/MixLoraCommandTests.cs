// MixLoRA in the `peft` tool, in-process on a tiny model: `train --method mixlora` with its options,
// `score --adapter`, `generate --adapter` and `--requests` (on the inference engine: equal to the
// library's cached generation), `adapters inspect`, and the refusals of bad option combinations.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class MixLoraCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public MixLoraCommandTests()
    {
        ModelFolder = Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
        Data = folder.File("data.txt");
        File.WriteAllText(Data, string.Concat(Enumerable.Repeat("abcabcabc xyz ", 20)));
    }

    private string ModelFolder { get; }

    private string Data { get; }

    public void Dispose() => folder.Dispose();

    [Fact]
    public void TrainScoreGenerateAndInspectAMixLoraAdapter()
    {
        string output = Path.Combine(folder.Path, "mixlora");
        var (code, text, error) = Invoke("train", "--model", ModelFolder, "--data", Data, "--method", "mixlora", "--num-experts", "3", "--top-k", "2",
            "--aux-loss-coef", "0.01", "--jitter", "0.02", "--r", "2", "--alpha", "4", "--targets", "q_proj,v_proj,gate_proj,up_proj,down_proj",
            "--steps", "3", "--batch", "2", "--seq", "16", "--lr", "5e-2", "--seed", "1", "--out", output);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("MixLoRA: 3 experts, top-2, 2 layers, 4 attention LoRA", text, StringComparison.Ordinal);

        var config = MixLoraConfig.Load(Path.Combine(output, MixLoraConfig.ConfigFile));
        Assert.Equal((3, 2, 2, 0.01, 0.02), (config.NumExperts, config.TopK, config.R, config.RouterAuxLossCoef, config.JitterNoise));
        Assert.Equal(["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], config.TargetModules);

        // merge: refused with the reason, nothing written.
        string merged = Path.Combine(folder.Path, "merged");
        var refused = Invoke("merge", "--model", ModelFolder, "--adapter", output, "--out", merged);
        Assert.Equal(1, refused.Code);
        Assert.Contains("is a MixLoRA adapter. MixLoRA does not merge", refused.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(merged));

        // score --adapter: the loss of the model with the trained adapter attached.
        var scored = Invoke("score", "--model", ModelFolder, "--adapter", output, "--tokens", "97,98,99,97,98");
        Assert.Equal(0, scored.Code);
        var model = LlamaForCausalLM.Load(ModelFolder);
        MixLoraAdapter.Load(model, output);
        double loss = model.Score([97, 98, 99, 97, 98]);
        Assert.Equal(loss, JsonDocument.Parse(scored.Output).RootElement.GetProperty("loss").GetDouble(), 5);

        // generate --adapter: greedy on the inference engine (--top-k is an engine-only sampling option), equals the library's generation.
        var generated = Invoke("generate", "--model", ModelFolder, "--adapter", output, "--prompt-tokens", "97,98,99", "--max-new-tokens", "4", "--threads", "1",
            "--top-k", "1");
        Assert.Equal(0, generated.Code);
        int[] expected;
        using (Tape.NoGrad())
        {
            expected = model.Generate([97, 98, 99], 4);
        }

        Assert.Equal(string.Join(",", expected), generated.Output.Trim());

        // generate --requests: a MixLoRA request and a base request in one engine batch; the MixLoRA one equals the library's generation.
        string requests = folder.File("requests.jsonl");
        File.WriteAllLines(requests,
        [
            $$"""{"prompt_tokens": [97, 98, 99], "adapter": {{JsonSerializer.Serialize(output)}}, "max_new_tokens": 4}""",
            """{"prompt_tokens": [97, 98, 99], "max_new_tokens": 4}""",
        ]);
        var batched = Invoke("generate", "--model", ModelFolder, "--requests", requests, "--threads", "1");
        Assert.Equal((0, ""), (batched.Code, batched.Error));
        var lines = batched.Output.TrimEnd('\n').Split('\n').Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(expected, lines[0].GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        Assert.Equal(2, lines.Count);

        var inspected = Invoke("adapters", "inspect", output);
        Assert.Equal(0, inspected.Code);
        Assert.Contains("method: MixLoRA (3 experts, top-2 renormalised, r = 2", inspected.Output, StringComparison.Ordinal);
        Assert.Contains("mixlora.layers.1.mlp.moe_gate.weight", inspected.Output, StringComparison.Ordinal);
        Assert.Contains("layers with a router: 2", inspected.Output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("mixlora", "--top-k", "4", "--top-k must be at most --num-experts (3)")]
    [InlineData("mixlora", "--targets", "q_proj", "at least one of gate_proj, up_proj, down_proj")]
    [InlineData("mixlora", "--jitter", "1", "--jitter")]
    [InlineData("lora", "--num-experts", "4", "--num-experts apply to --method mixlora, not to lora")]
    public void BadOptionsAreRefusedBeforeAnyWork(string method, string option, string value, string message)
    {
        string output = Path.Combine(folder.Path, "bad");
        string[] experts = method == "mixlora" ? ["--num-experts", "3"] : [];
        var (code, _, error) = Invoke(["train", "--model", ModelFolder, "--data", Data, "--method", method, .. experts, option, value, "--steps", "1", "--out", output]);
        Assert.NotEqual(0, code);
        Assert.Contains(message, error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(output));
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
