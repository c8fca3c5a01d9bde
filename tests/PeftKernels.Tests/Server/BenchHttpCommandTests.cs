// `peft bench http` (issue 16, item 9): refuses hosts that are not loopback and out-of-bounds options
// before sending anything; against a running server (ServerFixture's tiny model) and with --self (a
// tiny model folder, a server started in-process, then the same requests on the engine) a short run
// has zero errors and zero lost requests, and the JSON carries every figure.
using System.CommandLine;
using System.Text.Json;
using PeftKernels.Models;
using Xunit;

namespace PeftKernels.Tests.Server;

public sealed class BenchHttpCommandTests : IDisposable
{
    private readonly TempFolder folder = new();

    private static readonly string[] JsonFields =
        ["url", "clients", "seconds", "adapters", "max_tokens", "prompt_tokens", "requests", "completion_tokens", "wall_seconds",
         "tokens_per_second", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "errors", "lost"];

    [Theory]
    [InlineData("http://example.com:8000")]
    [InlineData("http://10.0.0.1:8000")]
    [InlineData("http://192.168.1.5/")]
    [InlineData("http://[::2]:8000")]
    [InlineData("http://localhost.example.com:8000")]
    public void AHostThatIsNotLoopbackIsRefusedBeforeAnyRequest(string url)
    {
        var (code, output, error) = Invoke(["bench", "http", "--url", url, "--seconds", "1", "--clients", "1", "--adapters", "1"]);
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.StartsWith("error: --url must point at a loopback host", error);
        Assert.Contains($"got host '{new Uri(url).Host}'", error);
    }

    [Theory]
    [InlineData("ftp://127.0.0.1/", "--url must be an absolute http:// or https:// URL")]
    [InlineData("127.0.0.1:8000", "--url must be an absolute http:// or https:// URL")]
    public void AUrlThatIsNotHttpIsRefused(string url, string message)
    {
        var (code, _, error) = Invoke(["bench", "http", "--url", url, "--seconds", "1"]);
        Assert.Equal(1, code);
        Assert.StartsWith($"error: {message}", error);
    }

    [Theory]
    [InlineData("--seconds", "0", "--seconds must be > 0 and <= 3600; got 0.")]
    [InlineData("--seconds", "3601", "--seconds must be > 0 and <= 3600; got 3601.")]
    [InlineData("--seconds", "NaN", "--seconds must be > 0 and <= 3600; got NaN.")]
    [InlineData("--clients", "0", "--clients must be >= 1 and <= 1024; got 0.")]
    [InlineData("--clients", "1025", "--clients must be >= 1 and <= 1024; got 1025.")]
    [InlineData("--adapters", "0", "--adapters must be >= 1; got 0.")]
    [InlineData("--max-tokens", "0", "--max-tokens must be >= 1; got 0.")]
    [InlineData("--prompt-tokens", "-1", "--prompt-tokens must be >= 1; got -1.")]
    public void AnOptionOutOfBoundsIsRefused(string option, string value, string message)
    {
        var (code, output, error) = Invoke(["bench", "http", "--url", "http://127.0.0.1:9/", option, value]);
        Assert.Equal(1, code);
        Assert.Equal("", output);
        Assert.Equal($"error: {message}\n", error);
    }

    [Theory]
    [InlineData(new[] { "--seconds", "1" }, "give exactly one of --url URL")]
    [InlineData(new[] { "--self", "--url", "http://127.0.0.1:9/" }, "give exactly one of --url URL")]
    [InlineData(new[] { "--self" }, "--self needs exactly one of --model DIR and --random125m")]
    [InlineData(new[] { "--url", "http://127.0.0.1:9/", "--random125m" }, "--model and --random125m go with --self")]
    public void TheModesExcludeEachOther(string[] args, string message)
    {
        var (code, _, error) = Invoke(["bench", "http", .. args]);
        Assert.Equal(1, code);
        Assert.StartsWith($"error: {message}", error);
    }

    [Fact]
    public void NoServerAtTheUrlIsOneClearError()
    {
        var (code, _, error) = Invoke(["bench", "http", "--url", "http://127.0.0.1:9/", "--seconds", "1", "--clients", "1", "--adapters", "1"]);
        Assert.Equal(1, code);
        Assert.StartsWith("error: GET http://127.0.0.1:9/v1/models failed", error);
    }

    [Fact]
    public async Task AgainstARunningServerAShortRunLosesNothing()
    {
        await using var server = await ServerFixture.Start();
        string json = folder.File("url.json");
        var (code, output, error) = await Task.Run(() => Invoke(["bench", "http", "--url", server.Url.ToString(), "--clients", "3", "--adapters", "2",
            "--seconds", "1", "--max-tokens", "4", "--prompt-tokens", "5", "--vocab", "40", "--json", json]));
        Assert.True(code == 0, error + output);
        var root = Fields(json);
        Assert.True(root.GetProperty("requests").GetInt32() > 0);
        Assert.Equal(0, root.GetProperty("errors").GetInt32());
        Assert.Equal(0, root.GetProperty("lost").GetInt32());
        Assert.Equal(2, root.GetProperty("adapters").GetInt32());
        Assert.True(root.GetProperty("ttft_p50_ms").GetDouble() > 0);
        // Inter-token gaps exist only when a request's tokens arrive in several events; on a busy machine the server may
        // coalesce a short generation into one event, and then there is no gap to report (null).
        var itl = root.GetProperty("itl_p50_ms");
        Assert.True(itl.ValueKind == JsonValueKind.Null || itl.GetDouble() >= 0, $"itl_p50_ms {itl}");
        Assert.False(root.TryGetProperty("engine", out _)); // only --self measures the engine

        var (tooMany, _, message) = await Task.Run(() => Invoke(["bench", "http", "--url", server.Url.ToString(), "--adapters", "99", "--seconds", "1"]));
        Assert.Equal(1, tooMany);
        Assert.Contains("--adapters 99: the server at", message);
        Assert.Contains("adapters in /v1/models", message);
    }

    [Fact]
    public void SelfServesATinyModelAndComparesWithTheEngine()
    {
        string model = folder.File("model");
        LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f).Save(model);
        string json = folder.File("self.json");
        var (code, output, error) = Invoke(["bench", "http", "--self", "--model", model, "--clients", "4", "--adapters", "2", "--seconds", "2",
            "--max-tokens", "8", "--prompt-tokens", "8", "--threads", "1", "--json", json]);
        Assert.True(code == 0, error + output);
        Assert.Contains("HTTP / engine = ", output);
        var root = Fields(json);
        int requests = root.GetProperty("requests").GetInt32();
        Assert.True(requests >= 4, $"{requests} requests");
        Assert.Equal(0, root.GetProperty("errors").GetInt32());
        Assert.Equal(0, root.GetProperty("lost").GetInt32());
        Assert.True(root.GetProperty("completion_tokens").GetInt64() > 0);
        Assert.True(root.GetProperty("ttft_p50_ms").GetDouble() > 0);
        var engine = root.GetProperty("engine");
        Assert.Equal(requests, engine.GetProperty("requests").GetInt32());
        Assert.Equal(root.GetProperty("completion_tokens").GetInt64(), engine.GetProperty("completion_tokens").GetInt64()); // greedy: the same tokens
        Assert.True(engine.GetProperty("tokens_per_second").GetDouble() > 0);
        Assert.True(root.GetProperty("http_over_engine").GetDouble() > 0);
        Assert.Contains("processors", root.GetProperty("machine").GetString());
    }

    [Fact]
    public void ThePrintableHeadMakesGreedyDecodingEmitPrintableAsciiOnly()
    {
        var model = Cli.HttpLoadSelf.PrintableHead(LlamaModelTests.TinyModel(LlamaConfig.Tiny(256) with { HeadDim = 16 }, seed: 4, scale: 5f));
        using var engine = new PeftKernels.Engine.InferenceEngine(model, new PeftKernels.Engine.EngineOptions { MaxSequenceLength = 64, Threads = 1 });
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 5).Select(j => ((i * 37) + (j * 101)) % 256).ToArray());
        var results = engine.Run(prompts.Select(p => new PeftKernels.Engine.EngineRequest(p, null, new PeftKernels.Engine.SamplingParams(MaxTokens: 12))));
        var tokens = results.SelectMany(r => r.Tokens).ToArray();
        Assert.Equal(6 * 12, tokens.Length);
        Assert.All(tokens, t => Assert.InRange(t, 32, 126));
    }

    public void Dispose() => folder.Dispose();

    private static JsonElement Fields(string path)
    {
        var root = JsonDocument.Parse(File.ReadAllText(path)).RootElement.Clone();
        foreach (string field in JsonFields)
        {
            Assert.True(root.TryGetProperty(field, out _), $"the JSON lacks '{field}'");
        }

        return root;
    }

    private static (int Code, string Output, string Error) Invoke(string[] args)
    {
        var output = new StringWriter { NewLine = "\n" };
        var error = new StringWriter { NewLine = "\n" };
        int code = Cli.Cli.Build().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }
}
