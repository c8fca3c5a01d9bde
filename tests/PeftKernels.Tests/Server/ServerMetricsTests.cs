using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using PeftKernels.Engine;
using PeftKernels.Server.Metrics;

namespace PeftKernels.Tests.Server;

public class ServerMetricsTests
{
    [Fact]
    public async Task RequestCountersAndDurationsMove()
    {
        var metrics = new ServerMetrics();
        metrics.RequestFinished("/v1/chat/completions", 200, "r8", TimeSpan.FromMilliseconds(30));
        metrics.RequestFinished("/v1/chat/completions", 200, "r8", TimeSpan.FromMilliseconds(300));
        metrics.RequestFinished("/v1/chat/completions", 404, null, TimeSpan.FromMilliseconds(1));
        metrics.RequestFinished("/v1/completions", 429, "r1", TimeSpan.FromMilliseconds(2));

        var text = Parse(await metrics.ScrapeAsync());
        Assert.Equal(2, text.Value("peft_requests_total", ("endpoint", "/v1/chat/completions"), ("status", "200"), ("model", "r8")));
        Assert.Equal(1, text.Value("peft_requests_total", ("endpoint", "/v1/chat/completions"), ("status", "404"), ("model", "")));
        Assert.Equal(1, text.Value("peft_requests_total", ("endpoint", "/v1/completions"), ("status", "429"), ("model", "r1")));
        Assert.Equal(2, text.Value("peft_request_duration_seconds_count", ("endpoint", "/v1/chat/completions"), ("model", "r8")));
        Assert.Equal(0.33, text.Value("peft_request_duration_seconds_sum", ("endpoint", "/v1/chat/completions"), ("model", "r8")), 6);
        Assert.Equal(1, text.Value("peft_request_duration_seconds_bucket", ("endpoint", "/v1/chat/completions"), ("model", "r8"), ("le", "0.05")));
        Assert.Equal(2, text.Value("peft_request_duration_seconds_bucket", ("endpoint", "/v1/chat/completions"), ("model", "r8"), ("le", "0.5")));
        Assert.Equal(2, text.Value("peft_request_duration_seconds_bucket", ("endpoint", "/v1/chat/completions"), ("model", "r8"), ("le", "+Inf")));
        Assert.Equal("counter", text.Types["peft_requests_total"]);
        Assert.Equal("histogram", text.Types["peft_request_duration_seconds"]);
    }

    [Fact]
    public async Task TokenCountersAndLatencyHistogramsMove()
    {
        var metrics = new ServerMetrics();
        metrics.Tokens("r8", 12, 5);
        metrics.Tokens("r8", 3, 7);
        metrics.Tokens("base", 4, 0);
        metrics.FirstToken("r8", TimeSpan.FromMilliseconds(30));
        metrics.FirstToken("r8", TimeSpan.FromSeconds(3));
        for (int i = 0; i < 10; i++)
        {
            metrics.InterToken("r8", TimeSpan.FromMilliseconds(4));
        }

        var text = Parse(await metrics.ScrapeAsync());
        Assert.Equal(15, text.Value("peft_prompt_tokens_total", ("model", "r8")));
        Assert.Equal(12, text.Value("peft_completion_tokens_total", ("model", "r8")));
        Assert.Equal(4, text.Value("peft_prompt_tokens_total", ("model", "base")));
        Assert.Equal(0, text.Value("peft_completion_tokens_total", ("model", "base")));

        Assert.Equal(0, text.Value("peft_time_to_first_token_seconds_bucket", ("model", "r8"), ("le", "0.02")));
        Assert.Equal(1, text.Value("peft_time_to_first_token_seconds_bucket", ("model", "r8"), ("le", "0.04")));
        Assert.Equal(1, text.Value("peft_time_to_first_token_seconds_bucket", ("model", "r8"), ("le", "2.5")));
        Assert.Equal(2, text.Value("peft_time_to_first_token_seconds_bucket", ("model", "r8"), ("le", "5")));
        Assert.Equal(2, text.Value("peft_time_to_first_token_seconds_count", ("model", "r8")));
        Assert.Equal(0, text.Value("peft_inter_token_latency_seconds_bucket", ("model", "r8"), ("le", "0.0025")));
        Assert.Equal(10, text.Value("peft_inter_token_latency_seconds_bucket", ("model", "r8"), ("le", "0.005")));
        Assert.Equal(0.04, text.Value("peft_inter_token_latency_seconds_sum", ("model", "r8")), 6);
    }

    [Fact]
    public async Task TwoServersInOneProcessDoNotShareMetrics()
    {
        var a = new ServerMetrics();
        var b = new ServerMetrics();
        a.Tokens("m", 1, 1);
        b.Tokens("m", 5, 5);
        b.Tokens("m", 5, 5);
        Assert.Equal(1, Parse(await a.ScrapeAsync()).Value("peft_prompt_tokens_total", ("model", "m")));
        Assert.Equal(10, Parse(await b.ScrapeAsync()).Value("peft_prompt_tokens_total", ("model", "m")));
    }

    [Theory]
    [InlineData("quote\"d")]
    [InlineData("back\\slash")]
    [InlineData("new\nline")]
    [InlineData("all \\\" \n of=them,}{")]
    [InlineData("ünïcødé-适配器")]
    public async Task OddAdapterNamesAreEscapedInLabels(string name)
    {
        var metrics = new ServerMetrics();
        metrics.Tokens(name, 2, 3);
        metrics.RequestFinished("/v1/completions", 200, name, TimeSpan.FromMilliseconds(5));
        string raw = await metrics.ScrapeAsync();
        var text = Parse(raw);
        Assert.Equal(2, text.Value("peft_prompt_tokens_total", ("model", name)));
        Assert.Equal(1, text.Value("peft_requests_total", ("endpoint", "/v1/completions"), ("status", "200"), ("model", name)));
        Assert.DoesNotContain(raw.Split('\n'), line => line.Length > 0 && !line.StartsWith('#') && !line.StartsWith("peft_", StringComparison.Ordinal));
    }

    [Fact]
    public async Task EngineFiguresAreReadAtScrapeTime()
    {
        using var fixture = new EngineFixture();
        var model = fixture.NewModel();
        var registry = new AdapterRegistry(model, new AdapterRegistryOptions { MaxLoaded = 1 });
        registry.Register("r1", fixture.Folder("r1"));
        registry.Register("odd\"name", fixture.Folder("r8"));
        using var engine = new InferenceEngine(model, null, registry);
        var metrics = new ServerMetrics(engine);
        int[] prompt = [1, 2, 3, 4, 5];

        var idle = Parse(await metrics.ScrapeAsync());
        Assert.Equal(0, idle.Value("peft_queue_length"));
        Assert.Equal(0, idle.Value("peft_engine_steps_total"));
        Assert.Equal(0, idle.Value("peft_batch_size"));
        Assert.Equal(0, idle.Value("peft_adapter_loads_total", ("adapter", "r1")));
        Assert.Equal("gauge", idle.Types["peft_queue_length"]);

        engine.Submit(new EngineRequest(prompt, "r1", new SamplingParams(MaxTokens: 4)));
        engine.Submit(new EngineRequest(prompt, "r1", new SamplingParams(MaxTokens: 4)));
        engine.Submit(new EngineRequest(prompt, null, new SamplingParams(MaxTokens: 4)));
        Assert.Equal(3, Parse(await metrics.ScrapeAsync()).Value("peft_queue_length"));

        engine.RunUntilIdle();
        var afterR1 = Parse(await metrics.ScrapeAsync());
        Assert.Equal(0, afterR1.Value("peft_queue_length"));
        Assert.Equal(0, afterR1.Value("peft_running_sequences"));
        Assert.Equal(engine.Stats.Steps, afterR1.Value("peft_engine_steps_total"));
        Assert.Equal(12, afterR1.Value("peft_engine_generated_tokens_total"));
        Assert.Equal(3, afterR1.Value("peft_engine_finished_sequences_total"));
        Assert.Equal((double)engine.Stats.RowsComputed / engine.Stats.Steps, afterR1.Value("peft_batch_size"), 9);
        Assert.True(afterR1.Value("peft_batch_size") > 1, "three sequences were batched together");
        Assert.Equal(1, afterR1.Value("peft_adapter_loads_total", ("adapter", "r1")));
        Assert.Equal(2, afterR1.Value("peft_adapter_acquisitions_total", ("adapter", "r1")));
        long r1Bytes = registry.Snapshot().Single().Bytes;
        Assert.True(r1Bytes > 0);
        Assert.Equal(r1Bytes, afterR1.Value("peft_adapter_resident_bytes", ("adapter", "r1")));
        Assert.Equal(r1Bytes, afterR1.Value("peft_adapters_resident_bytes"));
        Assert.Equal(1, afterR1.Value("peft_adapter_resident_versions", ("adapter", "r1")));
        Assert.Equal(0, afterR1.Value("peft_adapter_leases", ("adapter", "r1")));
        Assert.True(afterR1.Value("peft_kv_blocks_total") > 0);
        Assert.Equal(0, Parse(await metrics.ScrapeAsync()).Value("peft_batch_size")); // no step since the previous scrape

        // The count limit is one: running on the second adapter evicts r1, whose gauges go while its counters stay.
        engine.Submit(new EngineRequest(prompt, "odd\"name", new SamplingParams(MaxTokens: 2)));
        engine.RunUntilIdle();
        var afterEviction = Parse(await metrics.ScrapeAsync());
        Assert.Equal(1, afterEviction.Value("peft_adapter_evictions_total", ("adapter", "r1")));
        Assert.Equal(1, afterEviction.Value("peft_adapter_loads_total", ("adapter", "r1")));
        Assert.Equal(1, afterEviction.Value("peft_adapter_loads_total", ("adapter", "odd\"name")));
        Assert.Equal(1, afterEviction.Value("peft_adapter_resident_versions", ("adapter", "odd\"name")));
        Assert.False(afterEviction.Has("peft_adapter_resident_bytes", ("adapter", "r1")));
    }

    [Fact]
    public async Task MapPeftMetricsServesTheTextFormatOverHttp()
    {
        var metrics = new ServerMetrics();
        metrics.Tokens("r8", 1, 2);
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        await using var app = builder.Build();
        app.MapPeftMetrics(metrics);
        await app.StartAsync();
        try
        {
            string address = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
            using var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(10) };
            using var response = await client.GetAsync("/metrics");
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("text/plain", response.Content.Headers.ContentType!.MediaType);
            Assert.Equal("0.0.4", response.Content.Headers.ContentType.Parameters.Single(p => p.Name == "version").Value);
            var text = Parse(await response.Content.ReadAsStringAsync());
            Assert.Equal(2, text.Value("peft_completion_tokens_total", ("model", "r8")));
            Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync("/metricsx")).StatusCode);
        }
        finally
        {
            await app.StopAsync();
        }
    }

    /// <summary>A strict parser of the Prometheus text format: every sample line must parse.</summary>
    private static Exposition Parse(string text)
    {
        var samples = new Dictionary<string, double>(StringComparer.Ordinal);
        var types = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                types[parts[2]] = parts[3];
                continue;
            }

            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            int i = 0;
            while (i < line.Length && line[i] != '{' && line[i] != ' ')
            {
                i++;
            }

            string name = line[..i];
            var labels = new List<(string, string)>();
            if (line[i] == '{')
            {
                i++;
                while (line[i] != '}')
                {
                    int eq = line.IndexOf('=', i);
                    string label = line[i..eq];
                    Assert.Equal('"', line[eq + 1]);
                    var value = new StringBuilder();
                    int j = eq + 2;
                    for (; line[j] != '"'; j++)
                    {
                        if (line[j] == '\\')
                        {
                            j++;
                            value.Append(line[j] switch { 'n' => '\n', '\\' => '\\', '"' => '"', var c => throw new FormatException($"bad escape \\{c} in {line}") });
                        }
                        else
                        {
                            value.Append(line[j]);
                        }
                    }

                    labels.Add((label, value.ToString()));
                    i = j + 1;
                    if (line[i] == ',')
                    {
                        i++;
                    }
                }

                i++;
            }

            Assert.Equal(' ', line[i]);
            double v = double.Parse(line[(i + 1)..].Split(' ')[0], NumberStyles.Float, CultureInfo.InvariantCulture);
            samples[Exposition.Key(name, [.. labels])] = v;
        }

        return new Exposition(samples, types);
    }

    private sealed record Exposition(Dictionary<string, double> Samples, Dictionary<string, string> Types)
    {
        public static string Key(string name, (string Label, string Value)[] labels) =>
            name + "{" + string.Join(",", labels.OrderBy(l => l.Label, StringComparer.Ordinal).Select(l => $"{l.Label}={l.Value}")) + "}";

        public bool Has(string name, params (string, string)[] labels) => Samples.ContainsKey(Key(name, labels));

        public double Value(string name, params (string, string)[] labels) =>
            Samples.TryGetValue(Key(name, labels), out double v) ? v : throw new KeyNotFoundException($"no sample {Key(name, labels)}; have: {string.Join(" ", Samples.Keys.Where(k => k.StartsWith(name, StringComparison.Ordinal)))}");
    }
}
