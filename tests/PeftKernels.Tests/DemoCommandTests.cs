// `peft demo --fast` end to end: the fine-tuned adapter must beat the base on its task by the
// stated margin, and every promised output (base folder, two PEFT adapter folders, loss.png,
// metrics.json) must exist and parse; the same on a CUDA GPU (--device cuda); a bad --device is a usage error.
// Then the README's serving walkthrough on that output: `peft serve --model DEMO/base --adapters-dir DEMO/adapters`
// (PeftServer.CreateWithTenantsAndMetrics) answers the official OpenAI chat client on both adapters, and the demo's
// chat template (tokenizer_config.json) pads the prompt as the adapters were trained: the chat answer equals the
// completion of the padded prompt.
using System.ClientModel;
using System.CommandLine;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using PeftKernels.Cli.Demo;
using PeftKernels.Models;
using PeftKernels.Peft;
using Xunit;

namespace PeftKernels.Tests;

public sealed class DemoCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    public void Dispose() => folder.Dispose();

    [Fact]
    public async Task FastDemoFineTunesBeyondTheBaseAndWritesEveryOutput_AndPeftServeAnswersOnIt()
    {
        AssertFastDemo("cpu", "cpu", overOldOutput: true);
        await AssertServesTheDemo(Path.Combine(folder.Path, "demo"));
    }

    private static async Task AssertServesTheDemo(string output)
    {
        var options = new PeftKernels.Server.ServeOptions { ModelFolder = Path.Combine(output, "base"), AdaptersDir = Path.Combine(output, "adapters"), Port = 0, Threads = 2 };
        await using var server = PeftKernels.Server.PeftServer.CreateWithTenantsAndMetrics(options, logging => { });
        var url = await server.StartAsync();
        var client = new OpenAIClient(new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri(url, "v1") });
        using var http = new HttpClient { BaseAddress = url };
        foreach (var (adapter, task) in new[] { ("sentiment", DemoTask.Sentiment), ("topic", DemoTask.Topic) })
        {
            var example = task.Examples(1, seed: 7)[0];
            ChatCompletion chat = await client.GetChatClient(adapter).CompleteChatAsync([new UserChatMessage(example.Prompt)],
                new ChatCompletionOptions { MaxOutputTokenCount = 4, Temperature = 0 });
            string body = JsonSerializer.Serialize(new { model = adapter, prompt = example.PaddedPrompt, max_tokens = 4, temperature = 0 });
            using var response = await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
            string completion = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
            Assert.Equal(completion, chat.Content[0].Text);
            Assert.False(string.IsNullOrEmpty(completion), $"{adapter}: an empty answer");
        }
    }

    [CudaFact]
    public void FastDemoOnCudaFineTunesBeyondTheBaseAndWritesEveryOutput() => AssertFastDemo("cuda", Device.Cuda().Name);

    [Fact]
    public void AnUnknownDeviceIsAUsageError()
    {
        string output = Path.Combine(folder.Path, "never");
        var (code, log, error) = Invoke("demo", "--fast", "--device", "tpu", "--out", output);
        Assert.Equal((1, ""), (code, log));
        Assert.Equal("error: unknown device 'tpu'; expected cpu or cuda.", error.Trim());
        Assert.False(Directory.Exists(output), "nothing is written before the options are checked");
        if (Device.CudaUnavailableReason != null)
        {
            var cuda = Invoke("demo", "--fast", "--device", "cuda", "--out", output);
            Assert.Equal(1, cuda.Code);
            Assert.StartsWith("error: --device cuda: no CUDA device is available", cuda.Error);
            Assert.False(Directory.Exists(output));
        }
    }

    /// <summary>Checks the files a demo run leaves in <paramref name="output"/>: loss.png, the base folder and both adapters load.</summary>
    internal static void AssertOutputFiles(string output)
    {
        var png = File.ReadAllBytes(Path.Combine(output, "loss.png"));
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        Assert.True(png.Length > 10_000, $"loss.png is only {png.Length} bytes");

        var model = LlamaForCausalLM.Load(Path.Combine(output, "base"));
        var peft = new PeftModel(model);
        foreach (string name in new[] { "sentiment", "topic" })
        {
            var config = peft.LoadAdapter(Lora.AdapterFolder(Path.Combine(output, "adapters"), name), name);
            Assert.True(Assert.IsType<LoraConfig>(config).R > 0);
        }

        Assert.Equal(2, peft.Adapters.Count);
    }

    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        var writer = new StringWriter { NewLine = "\n" };
        var error = new StringWriter();
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = writer, Error = error });
        return (code, writer.ToString(), error.ToString());
    }

    /// <summary>A fast demo run; <paramref name="overOldOutput"/>: with --overwrite over an older output whose base was sharded.</summary>
    private void AssertFastDemo(string device, string deviceName, bool overOldOutput = false)
    {
        string output = Path.Combine(folder.Path, "demo"), oldBase = Path.Combine(output, "base");
        if (overOldOutput)
        {
            Directory.CreateDirectory(oldBase);
            File.WriteAllText(Path.Combine(oldBase, "model.safetensors.index.json"), "{}");
            File.WriteAllText(Path.Combine(oldBase, "model-00001-of-00002.safetensors"), "old");
        }

        string[] args = device == "cpu" ? ["demo", "--fast", "--out", output] : ["demo", "--fast", "--device", device, "--out", output];
        var (code, log, error) = Invoke(overOldOutput ? [.. args, "--overwrite"] : args);
        Assert.Equal((0, ""), (code, error));
        Assert.Equal(["config.json", "model.safetensors", "tokenizer_config.json"], Directory.EnumerateFiles(oldBase).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (string step in new[] { "1 Pre-train", "2 The base model", "3 QLoRA", "4 Save the adapter", "5 Merge", "6 A second adapter", "7 Serve both", "8 Summary" })
        {
            Assert.Contains(step, log);
        }

        Assert.Contains($"150 steps on {deviceName}, final loss", log);
        Assert.Contains($"device {deviceName}; base:", log);
        var metrics = DemoOutputs.ReadMetrics(Path.Combine(output, "metrics.json"));
        Assert.Equal(deviceName, metrics.Device);
        var sentiment = metrics.Tasks.Single(t => t.Task == "sentiment");

        // Stated margin: the QLoRA adapter answers at least 30 points more held-out prompts correctly than the base.
        Assert.True(sentiment.AccuracyAfter >= sentiment.AccuracyBefore + 0.30, $"sentiment accuracy {sentiment.AccuracyBefore:P0} → {sentiment.AccuracyAfter:P0}");
        Assert.All(metrics.Tasks, t => Assert.True(t.TrainableParameters > 0 && t.AdapterBytes > 0 && double.IsFinite(t.FinalLoss)));
        Assert.True(metrics.Merge.SameAnswers);
        Assert.True(metrics.Merge.MaxAbsLogitDifference < 1e-3 * Math.Max(1, metrics.Merge.MaxAbsLogit), $"merge changed logits by {metrics.Merge.MaxAbsLogitDifference}");
        Assert.True(metrics.Serving.MatchesSeparate);

        AssertOutputFiles(output);
    }
}
