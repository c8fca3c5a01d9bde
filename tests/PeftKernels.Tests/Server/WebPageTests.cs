// The web page at GET /: served without a key over plain HTTP, and driven in a real headless Chromium
// (the system browser, through Microsoft.Playwright) against a server with an API-key gate and metrics:
// the page lists the models once the key is typed, streams one prompt to two adapters side by side
// (each pane's text equal to the non-streaming completion of the same request), and shows the request
// count from /metrics.
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Playwright;
using PeftKernels.Server;
using PeftKernels.Server.Metrics;
using PeftKernels.Server.Tenants;
using PeftKernels.Serving;

namespace PeftKernels.Tests.Server;

public sealed class WebPageTests
{
    private const string Key = "web-key";
    private const string KeyFile = """{"tenants": {"web": {"adapters": ["*"]}}, "keys": {"web-key": "web"}}""";

    [Fact]
    public async Task Page_IsServedWithoutAKey_AsSelfContainedHtml()
    {
        await using var s = await KeyedServer.Start();
        using var http = new HttpClient { BaseAddress = s.Url, Timeout = TimeSpan.FromSeconds(30) };

        using var page = await http.GetAsync("/");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Equal("utf-8", page.Content.Headers.ContentType?.CharSet);
        string html = await page.Content.ReadAsStringAsync();
        Assert.StartsWith("<!DOCTYPE html>", html, StringComparison.Ordinal);
        Assert.Contains("<title>peft serve</title>", html, StringComparison.Ordinal);
        Assert.Equal(PeftServer.WebPageHtml, await page.Content.ReadAsByteArrayAsync());
        Assert.DoesNotContain("http://", html, StringComparison.Ordinal); // self-contained: nothing loaded from elsewhere
        Assert.DoesNotContain("https://", html, StringComparison.Ordinal);
        Assert.DoesNotContain(".innerHTML", html, StringComparison.Ordinal); // text goes in through textContent
        string policy = Assert.Single(page.Headers.GetValues("Content-Security-Policy"));
        Assert.Contains("script-src 'sha256-", policy, StringComparison.Ordinal);
        Assert.Contains("connect-src 'self'", policy, StringComparison.Ordinal);

        // The API behind it still wants the key.
        using var models = await http.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);
    }

    [Fact]
    public void BrowserTests_WithoutChromium_FailSayingHowToInstallIt_AndSkipOnlyWhenAsked()
    {
        using var empty = new TempFolder();
        var e = Assert.Throws<InvalidOperationException>(() => SystemChromium.Find(empty.Path));
        Assert.Contains("apt-get install chromium", e.Message, StringComparison.Ordinal);
        Assert.Contains(BrowserFactAttribute.SkipVariable, e.Message, StringComparison.Ordinal);

        File.WriteAllText(Path.Combine(empty.Path, "chromium"), "");
        Assert.Equal(Path.Combine(empty.Path, "chromium"), SystemChromium.Find(empty.Path + Path.PathSeparator + "/nonexistent"));

        Assert.Null(BrowserFactAttribute.SkipReason(null));
        Assert.Null(BrowserFactAttribute.SkipReason("0"));
        Assert.Null(BrowserFactAttribute.SkipReason("true"));
        Assert.Contains(BrowserFactAttribute.SkipVariable, BrowserFactAttribute.SkipReason("1"), StringComparison.Ordinal);
    }

    [BrowserFact]
    public async Task Playground_StreamsOnePromptToTwoAdapters_AndMetricsCountThem()
    {
        string chromium = SystemChromium.Find();
        await using var s = await KeyedServer.Start();
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = chromium,
            Headless = true,
            Args = ["--no-sandbox"],
            Timeout = 15_000,
        });
        var page = await browser.NewPageAsync();
        page.SetDefaultTimeout(10_000);
        var errors = new List<string>();
        page.PageError += (_, e) => errors.Add(e);
        page.Console += (_, m) =>
        {
            if (m.Type == "error" && !m.Text.Contains("401", StringComparison.Ordinal))
            {
                errors.Add(m.Text);
            }
        };

        await page.GotoAsync(s.Url.ToString());
        var expect = Assertions.Expect(page.Locator("#models-error"));
        await expect.ToContainTextAsync("401"); // no key yet

        await page.FillAsync("#key", Key);
        await page.Locator("#key").DispatchEventAsync("change");
        await Assertions.Expect(page.Locator("#models-body tr")).ToHaveCountAsync(2 + KeyedServer.Adapters.Length);
        await Assertions.Expect(page.Locator("#models-error")).ToBeHiddenAsync();
        var rows = await page.Locator("#models-body tr").AllInnerTextsAsync();
        Assert.Contains(rows, r => r.StartsWith(ServerFixture.BaseName, StringComparison.Ordinal) && r.Contains("(base)", StringComparison.Ordinal));
        foreach (string adapter in KeyedServer.Adapters)
        {
            Assert.Contains(rows, r => r.StartsWith(adapter, StringComparison.Ordinal) && r.Contains(ServerFixture.BaseName, StringComparison.Ordinal));
        }

        // A name made of markup is shown as text, in the table and at its checkbox, and never runs.
        Assert.Contains(rows, r => r.StartsWith(KeyedServer.HostileName, StringComparison.Ordinal));
        Assert.Contains(KeyedServer.HostileName, await page.Locator("#choices").InnerTextAsync(), StringComparison.Ordinal);
        Assert.Equal(0, await page.Locator("main img").CountAsync());
        Assert.True(await page.EvaluateAsync<bool>("window.pwned === undefined"));

        Assert.Equal(Key, await page.EvaluateAsync<string>("localStorage.getItem('peft.apiKey')"));

        const string prompt = "hello world";
        const int maxTokens = 12;
        await page.FillAsync("#prompt", prompt);
        await page.FillAsync("#max-tokens", maxTokens.ToString(System.Globalization.CultureInfo.InvariantCulture));
        await page.FillAsync("#temperature", "0");
        foreach (string adapter in KeyedServer.Adapters)
        {
            await page.CheckAsync($"#choices input[value='{adapter}']");
        }

        await page.ClickAsync("#send");
        var panes = page.Locator("#results .pane");
        await Assertions.Expect(panes).ToHaveCountAsync(KeyedServer.Adapters.Length);
        await Assertions.Expect(page.Locator("#results .pane[data-state='done']")).ToHaveCountAsync(KeyedServer.Adapters.Length, new() { Timeout = 15_000 });

        // The live metrics pick up the two completions (the page polls /metrics every 2 s and after each send).
        var requests = page.Locator("#m-requests");
        await Assertions.Expect(requests).ToHaveTextAsync("2", new() { Timeout = 10_000 });

        var texts = new HashSet<string>(StringComparer.Ordinal);
        foreach (string adapter in KeyedServer.Adapters)
        {
            var pane = page.Locator($"#results .pane[data-model='{adapter}']");
            string streamed = await pane.Locator("pre.text").TextContentAsync() ?? "";
            string status = await pane.Locator(".status").TextContentAsync() ?? "";
            var expected = await s.Complete(adapter, prompt, maxTokens);
            Assert.Equal(expected.Text, streamed);
            Assert.NotEmpty(streamed);
            Assert.Contains($"finish_reason: {expected.Finish}", status, StringComparison.Ordinal);
            Assert.Contains($"prompt {prompt.Length} + completion {maxTokens} tokens", status, StringComparison.Ordinal);
            texts.Add(streamed);
        }

        Assert.Equal(KeyedServer.Adapters.Length, texts.Count); // the two adapters answer differently: each pane got its own stream
        Assert.Empty(errors);
    }

    /// <summary>A server over the tiny model with two adapters, an API-key gate (one key, every model) and metrics at /metrics.</summary>
    private sealed class KeyedServer : IAsyncDisposable
    {
        /// <summary>A third adapter's name, made of markup (a valid adapter name): the page must show it as text.</summary>
        public const string HostileName = "<img src=x onerror=\"window.pwned=1\">&amp;";

        public static readonly string[] Adapters = ["r1", "r8"];

        private readonly EngineFixture engine;
        private readonly TenantGate gate;
        private readonly PeftServer server;

        private KeyedServer(EngineFixture engine, TenantGate gate, PeftServer server, Uri url)
        {
            this.engine = engine;
            this.gate = gate;
            this.server = server;
            Url = url;
        }

        public Uri Url { get; }

        public static async Task<KeyedServer> Start()
        {
            var engine = new EngineFixture();
            var model = new ServedModel(ServerFixture.BaseName, engine.NewModel(), ServerFixture.Tokenizer, [], ServerFixture.Render);
            var options = new ServeOptions
            {
                ModelFolder = "unused",
                Host = "127.0.0.1",
                Port = 0,
                Threads = 1,
                Adapters = [.. Adapters.Select(a => KeyValuePair.Create(a, engine.Folder(a))), KeyValuePair.Create(HostileName, engine.Folder("r32"))],
                ShutdownTimeout = TimeSpan.FromSeconds(5),
            };
            var gate = new TenantGate(TenantKeyFile.Parse(KeyFile, "keys.json"), ServerFixture.BaseName);
            var metrics = new ServerMetrics();
            var server = new PeftServer(model, options, gate, metrics, logging => logging.SetMinimumLevel(LogLevel.None), (app, built) =>
            {
                metrics.Attach(built.Engine);
                app.MapPeftMetrics(metrics);
            });
            var url = await server.StartAsync();
            return new KeyedServer(engine, gate, server, url);
        }

        /// <summary>The non-streaming completion of the same request the page sends (temperature 0).</summary>
        public async Task<(string Text, string Finish)> Complete(string model, string prompt, int maxTokens)
        {
            using var http = new HttpClient { BaseAddress = Url, Timeout = TimeSpan.FromSeconds(30) };
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
            using var response = await http.PostAsJsonAsync("/v1/completions", new { model, prompt, max_tokens = maxTokens, temperature = 0 });
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
            var choice = body.RootElement.GetProperty("choices")[0];
            return (choice.GetProperty("text").GetString()!, choice.GetProperty("finish_reason").GetString()!);
        }

        public async ValueTask DisposeAsync()
        {
            await server.StopAsync();
            gate.Dispose();
            engine.Dispose();
        }
    }
}
