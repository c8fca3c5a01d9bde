// `peft score`, `peft generate` and `peft train` through the same System.CommandLine root the
// program builds, on a tiny model saved to a temporary folder (byte-level tokenizer: no
// tokenizer files, vocab 256 + BOS/EOS ids are not needed).
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class ModelCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public ModelCommandTests()
    {
        ModelFolder = System.IO.Path.Combine(folder.Path, "model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(ModelFolder);
    }

    private string ModelFolder { get; }

    public void Dispose() => folder.Dispose();

    [Fact]
    public void ScorePrintsTheLossOfTheModelAsOneJsonLine()
    {
        var (code, output, error) = Invoke("score", "--model", ModelFolder, "--tokens", "1, 2,3,40,200", "--threads", "1");
        Assert.Equal((0, ""), (code, error));
        using var json = JsonDocument.Parse(output);
        double expected = LlamaForCausalLM.Load(ModelFolder).Score([1, 2, 3, 40, 200]);
        Assert.Equal(5, json.RootElement.GetProperty("tokens").GetInt32());
        Assert.Equal(expected, json.RootElement.GetProperty("loss").GetDouble(), 6);
        Assert.Equal(Math.Exp(expected), json.RootElement.GetProperty("perplexity").GetDouble(), 4);
        Assert.Single(output.Trim().Split('\n'));
    }

    [Fact]
    public void GenerateFromTokensIsGreedyByDefaultAndSeededWhenSampling()
    {
        var (code, output, error) = Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "5,6,7", "--max-new-tokens", "5");
        Assert.Equal((0, ""), (code, error));
        var expected = LlamaForCausalLM.Load(ModelFolder).Generate([5, 6, 7], 5);
        Assert.Equal(string.Join(",", expected), output.Trim());

        var a = Invoke("generate", "--model", ModelFolder, "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "1.2", "--top-p", "0.9", "--seed", "3");
        var b = Invoke("generate", "--model", ModelFolder, "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "1.2", "--top-p", "0.9", "--seed", "3");
        Assert.Equal(0, a.Code);
        Assert.Equal(a.Output, b.Output);
        Assert.StartsWith("hi", a.Output);
    }

    [Fact]
    public void TrainWritesAPeftAdapterThatScoreAndGenerateLoad()
    {
        string data = folder.File("data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 30).Select(i => JsonSerializer.Serialize(new { text = $"abcabcabc {i} abcabcabcabc" })));
        string adapter = System.IO.Path.Combine(folder.Path, "adapter");
        var (code, output, error) = Invoke("train", "--model", ModelFolder, "--data", data, "--method", "qlora", "--r", "4", "--alpha", "8",
            "--targets", "all-linear", "--lr", "5e-3", "--steps", "8", "--batch", "2", "--seq", "16", "--seed", "1", "--out", adapter);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("quantized base Linear weights to NF4", output);
        Assert.Contains("trainable params: ", output);
        Assert.Contains("step 8/8", output);
        Assert.True(File.Exists(System.IO.Path.Combine(adapter, Lora.ConfigFile)));
        var config = LoraConfig.Load(System.IO.Path.Combine(adapter, Lora.ConfigFile));
        Assert.Equal((4, 8.0, true), (config.R, config.LoraAlpha, config.EffectiveTargets.IsAllLinear));

        var scored = Invoke("score", "--model", ModelFolder, "--adapter", adapter, "--tokens", "97,98,99,97,98,99");
        Assert.Equal(0, scored.Code);
        var plain = Invoke("score", "--model", ModelFolder, "--tokens", "97,98,99,97,98,99");
        Assert.NotEqual(plain.Output, scored.Output);
        Assert.Equal(0, Invoke("generate", "--model", ModelFolder, "--adapter", adapter, "--prompt", "abc", "--max-new-tokens", "3").Code);
    }

    [Fact]
    public void PretrainIsDeterministicAndLowersTheLoss()
    {
        string data = folder.File("corpus.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 40).Select(i => $"the cat sat on the mat {i % 5}. the dog ran.")));
        string a = System.IO.Path.Combine(folder.Path, "a"), b = System.IO.Path.Combine(folder.Path, "b");
        string[] args = ["pretrain", "--config", "tiny", "--data", data, "--steps", "30", "--batch", "4", "--seq", "24", "--lr", "1e-2", "--seed", "2"];
        var (code, output, error) = Invoke([.. args, "--out", a]);
        Assert.Equal((0, ""), (code, error));
        Assert.Contains("step 30/30", output);
        Assert.Equal(0, Invoke([.. args, "--threads", "1", "--device", "cpu", "--out", b]).Code);
        Assert.Equal(File.ReadAllBytes(System.IO.Path.Combine(a, "model.safetensors")), File.ReadAllBytes(System.IO.Path.Combine(b, "model.safetensors")));

        var model = LlamaForCausalLM.Load(a);
        var text = new Text.ByteTokenizer().Encode("the cat sat on the mat 3. the dog ran.");
        double trained = model.Score(text);
        double untrained = LlamaForCausalLM.Create(model.Config, 2).Score(text);
        Assert.True(trained < untrained - 1, $"pre-training did not lower the loss: {untrained:F3} → {trained:F3}");
    }

    [Fact]
    public void PretrainTakesADevice()
    {
        string data = folder.File("device-corpus.txt");
        File.WriteAllText(data, string.Join("\n\n", Enumerable.Range(0, 10).Select(i => $"the cat sat on the mat {i}.")));
        var cuda = Invoke("pretrain", "--data", data, "--steps", "2", "--batch", "2", "--seq", "16", "--device", "cuda", "--out", folder.File("cuda-model"));
        if (Device.CudaUnavailableReason != null)
        {
            Assert.NotEqual(0, cuda.Code);
            Assert.Contains("--device cuda: no CUDA device is available", cuda.Error);
        }
        else
        {
            Assert.Equal((0, ""), (cuda.Code, cuda.Error));
            Assert.Contains("step 2/2", cuda.Output);
            Assert.True(File.Exists(System.IO.Path.Combine(folder.File("cuda-model"), "model.safetensors")));
        }
    }

    [Fact]
    public void ScoreAndGenerateTakeADevice()
    {
        var plain = Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3");
        Assert.Equal(plain, Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3", "--device", "cpu"));
        Assert.Equal(0, Invoke("generate", "--model", ModelFolder, "--prompt-tokens", "1,2", "--max-new-tokens", "2", "--device", "cpu").Code);
        var cuda = Invoke("score", "--model", ModelFolder, "--tokens", "1,2,3", "--device", "cuda");
        if (Device.CudaUnavailableReason != null)
        {
            Assert.NotEqual(0, cuda.Code);
            Assert.Contains("--device cuda: no CUDA device is available", cuda.Error);
        }
        else
        {
            Assert.Equal(0, cuda.Code);
        }
    }

    [CudaFact]
    public void TrainRunsDoraAndIa3OnCuda()
    {
        string data = folder.File("data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 10).Select(i => JsonSerializer.Serialize(new { text = $"abcabcabc {i} abcabc" })));
        foreach (string method in new[] { "dora", "ia3" })
        {
            string adapter = System.IO.Path.Combine(folder.Path, method);
            var (code, output, error) = Invoke("train", "--model", ModelFolder, "--data", data, "--method", method, "--steps", "2", "--batch", "1",
                "--seq", "8", "--seed", "1", "--device", "cuda", "--out", adapter);
            Assert.Equal((0, ""), (code, error));
            Assert.Contains("step 2/2", output);
        }
    }

    [Theory]
    [InlineData("score|--model|MODEL|--tokens|1,2|--device|tpu", "unknown device 'tpu'")]
    [InlineData("generate|--model|MODEL|--prompt-tokens|1|--max-new-tokens|1|--device|tpu", "unknown device 'tpu'")]
    [InlineData("train|--model|MODEL|--data|DATA|--out|x|--device|tpu", "unknown device 'tpu'")]
    [InlineData("pretrain|--data|DATA|--out|x|--device|tpu", "unknown device 'tpu'")]
    [InlineData("score|--model|MODEL|--tokens|1,x", "'x' (item 2) is not a non-negative integer token id")]
    [InlineData("score|--model|MODEL|--tokens|7", "at least 2 tokens")]
    [InlineData("score|--model|MODEL|--tokens|1,999", "token id 999 at position 1 is outside the vocabulary [0, 256)")]
    [InlineData("score|--model|nowhere|--tokens|1,2", "nowhere")]
    [InlineData("generate|--model|MODEL|--max-new-tokens|3", "give exactly one of --prompt, --prompt-tokens and --requests")]
    [InlineData("train|--model|MODEL|--data|DATA|--method|vera|--out|x", "vera")]
    [InlineData("train|--model|MODEL|--data|DATA|--seq|500|--out|x", "needs at least 501")]
    public void BadArgumentsExitNonZeroWithAClearMessage(string args, string expected)
    {
        string data = folder.File("small.txt");
        File.WriteAllText(data, "hello world\n\nsecond document");
        var (code, _, error) = Invoke([.. args.Split('|').Select(a => a == "MODEL" ? ModelFolder : a == "DATA" ? data : a)]);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, error);
    }

    [Theory]
    [InlineData("score", "--tokens <ids>")]
    [InlineData("generate", "--top-p <p>")]
    [InlineData("train", "--targets <names>")]
    public void HelpDescribesEveryVerb(string verb, string fragment)
    {
        var (code, output, _) = Invoke(verb, "--help");
        Assert.Equal(0, code);
        Assert.Contains(fragment, output);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
