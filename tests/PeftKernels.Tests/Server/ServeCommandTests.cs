// `peft serve` on the command line: option errors exit 1 with one clear line; a real run on a saved model
// folder prints its URL, serves the base by the folder's name and its --adapters-dir adapters, and
// stops cleanly with exit code 0.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Models;
using PeftKernels.Server;
using PeftKernels.Testing;

namespace PeftKernels.Tests.Server;

public sealed class ServeCommandTests
{
    private static (int Code, string Output, string Error) Invoke(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Theory]
    [InlineData("--device", "tpu", "unknown device 'tpu'")]
    [InlineData("--adapter", "noequals", "expected NAME=DIR")]
    [InlineData("--port", "70000", "--port must be in [0, 65535]")]
    [InlineData("--adapters-dir", "/no/such/dir", "--adapters-dir")]
    [InlineData("--max-loaded-adapters", "-1", "--max-loaded-adapters")]
    [InlineData("--api-keys", "/no/such/keys.json", "--api-keys")]
    public void BadOptions_ExitWithOneErrorLine(string option, string value, string expected)
    {
        using var folder = new TempFolder();
        var (code, _, error) = Invoke("serve", "--model", folder.Path, option, value);
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", error, StringComparison.Ordinal);
        Assert.Contains(expected, error, StringComparison.Ordinal);
    }

    [Fact]
    public void DeviceCudaIsAcceptedAndNeedsOnlyACudaDevice()
    {
        // The engine runs its forward on the GPU now: without a CUDA device the only complaint is that there is none.
        using var folder = new TempFolder();
        var (code, _, error) = Invoke("serve", "--model", folder.Path, "--device", "cuda");
        Assert.Equal(1, code);
        Assert.DoesNotContain("CPU-only", error, StringComparison.Ordinal);
        if (CudaProbe.Reason != null)
        {
            Assert.StartsWith("error: --device cuda: no CUDA device is available", error, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Run_PrintsTheUrl_ServesTheFolderAndItsAdapters_AndStopsWithExitCode0()
    {
        using var engine = new EngineFixture();
        using var root = new TempFolder();
        string modelFolder = Path.Combine(root.Path, "my-base");
        TinyLlama.Model(LlamaConfig.Tiny(256) with { HeadDim = 16 }).Save(modelFolder);
        using var stop = new CancellationTokenSource();
        var log = new StringWriter();
        var options = new ServeOptions { ModelFolder = modelFolder, AdaptersDir = Path.GetDirectoryName(engine.Folder("r1")), Port = 0, Threads = 1 };
        var run = Task.Run(() => Cli.ServeCommand.Run(options, TextWriter.Synchronized(log), stop.Token));
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!log.ToString().Contains("http://", StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline && !run.IsCompleted, $"no URL printed: {log}");
            await Task.Delay(20);
        }

        string url = log.ToString()[log.ToString().IndexOf("http://", StringComparison.Ordinal)..].Trim().Split('\n')[0].Trim();
        Assert.Contains("my-base with 5 adapters", log.ToString(), StringComparison.Ordinal);
        using var http = new HttpClient { BaseAddress = new Uri(url) };
        var models = JsonDocument.Parse(await http.GetStringAsync("/v1/models")).RootElement.GetProperty("data");
        Assert.Equal("my-base", models[0].GetProperty("id").GetString());
        Assert.Equal(6, models.GetArrayLength());
        using var completion = await http.PostAsync("/v1/completions", new StringContent("{\"model\": \"my-base\", \"prompt\": \"hi\", \"max_tokens\": 3}"));
        Assert.Equal(System.Net.HttpStatusCode.OK, completion.StatusCode);
        await stop.CancelAsync();
        Assert.Equal(0, await run);
        Assert.Contains("peft serve: stopped", log.ToString(), StringComparison.Ordinal);
    }
}
