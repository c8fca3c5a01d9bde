// The server's Prometheus metrics (prometheus-net), one CollectorRegistry per instance so that two servers
// in one process never share or collide. Per-request figures come through IServerObserver as requests
// finish; engine-wide figures (queue, running sequences, batch size, KV blocks, per-adapter counters) are
// read from the engine and its adapter registry when /metrics is scraped (ServerMetrics.Engine.cs).
// Label values are escaped by prometheus-net (\\, \" and \n), so any adapter name is safe in a label.
// Buckets follow what LLM servers use (vLLM's time-to-first-token and time-per-output-token buckets),
// extended downwards because a CPU engine on a small model produces tokens in well under 10 ms.
using PeftKernels.Engine;
using Prometheus;

namespace PeftKernels.Server.Metrics;

/// <summary>
/// <see cref="IServerObserver"/> recording Prometheus metrics in a registry of its own; with an engine, its queue, batch and
/// per-adapter figures are read at each scrape. Write the text exposition with <see cref="WriteAsync"/> or serve it with
/// <see cref="MetricsEndpoint.MapPeftMetrics"/>. Thread-safe.
/// </summary>
public sealed partial class ServerMetrics : IServerObserver
{
    /// <summary>The Content-Type of the Prometheus text exposition format.</summary>
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Time-to-first-token buckets (seconds).</summary>
    public static readonly double[] FirstTokenBuckets =
        [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];

    /// <summary>Inter-token latency buckets (seconds).</summary>
    public static readonly double[] InterTokenBuckets =
        [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10];

    /// <summary>Request duration buckets (seconds).</summary>
    public static readonly double[] DurationBuckets =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600];

    private readonly IMetricFactory factory;
    private readonly Counter requests;
    private readonly Histogram duration;
    private readonly Counter promptTokens;
    private readonly Counter completionTokens;
    private readonly Histogram firstToken;
    private readonly Histogram interToken;

    /// <summary>Metrics for a server; <paramref name="engine"/> (optional) adds its gauges and per-adapter counters, read at scrape time.</summary>
    public ServerMetrics(InferenceEngine? engine = null)
    {
        Registry = Prometheus.Metrics.NewCustomRegistry();
        var factory = Prometheus.Metrics.WithCustomRegistry(Registry);
        requests = factory.CreateCounter("peft_requests_total", "HTTP requests finished, by endpoint, status code and model.",
            new CounterConfiguration { LabelNames = ["endpoint", "status", "model"] });
        duration = factory.CreateHistogram("peft_request_duration_seconds", "Time from a request's arrival to its last byte, by endpoint and model.",
            new HistogramConfiguration { LabelNames = ["endpoint", "model"], Buckets = DurationBuckets });
        promptTokens = factory.CreateCounter("peft_prompt_tokens_total", "Prompt tokens submitted, by model.",
            new CounterConfiguration { LabelNames = ["model"] });
        completionTokens = factory.CreateCounter("peft_completion_tokens_total", "Completion tokens generated for clients, by model.",
            new CounterConfiguration { LabelNames = ["model"] });
        firstToken = factory.CreateHistogram("peft_time_to_first_token_seconds", "Time from a request's arrival to its first generated token, by model.",
            new HistogramConfiguration { LabelNames = ["model"], Buckets = FirstTokenBuckets });
        interToken = factory.CreateHistogram("peft_inter_token_latency_seconds", "Time between consecutive generated tokens of one request, by model.",
            new HistogramConfiguration { LabelNames = ["model"], Buckets = InterTokenBuckets });
        this.factory = factory;
        if (engine != null)
        {
            Attach(engine);
        }
    }

    /// <summary>Adds <paramref name="engine"/>'s gauges and per-adapter counters (read at scrape time), for a server that creates its engine after its metrics.</summary>
    /// <exception cref="InvalidOperationException">An engine is already attached.</exception>
    public void Attach(InferenceEngine engine)
    {
        ArgumentNullException.ThrowIfNull(engine);
        if (Engine != null)
        {
            throw new InvalidOperationException("these metrics already read an engine.");
        }

        Engine = engine;
        engineGauges = new EngineGauges(factory, engine);
        Registry.AddBeforeCollectCallback(engineGauges.Update);
    }

    /// <summary>The registry holding every metric of this server.</summary>
    public CollectorRegistry Registry { get; }

    /// <summary>The engine whose figures are read at scrape time, if any.</summary>
    public InferenceEngine? Engine { get; private set; }

    /// <inheritdoc/>
    public void RequestFinished(string endpoint, int status, string? model, TimeSpan duration)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        string m = model ?? "";
        requests.WithLabels(endpoint, status.ToString(System.Globalization.CultureInfo.InvariantCulture), m).Inc();
        this.duration.WithLabels(endpoint, m).Observe(Seconds(duration));
    }

    /// <inheritdoc/>
    public void Tokens(string model, int promptTokens, int completionTokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegative(promptTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(completionTokens);
        this.promptTokens.WithLabels(model).Inc(promptTokens);
        this.completionTokens.WithLabels(model).Inc(completionTokens);
    }

    /// <inheritdoc/>
    public void FirstToken(string model, TimeSpan sinceArrival)
    {
        ArgumentNullException.ThrowIfNull(model);
        firstToken.WithLabels(model).Observe(Seconds(sinceArrival));
    }

    /// <inheritdoc/>
    public void InterToken(string model, TimeSpan gap)
    {
        ArgumentNullException.ThrowIfNull(model);
        interToken.WithLabels(model).Observe(Seconds(gap));
    }

    /// <summary>Writes every metric (engine figures read now) in the Prometheus text format to <paramref name="stream"/>.</summary>
    public Task WriteAsync(Stream stream, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        return Registry.CollectAndExportAsTextAsync(stream, ExpositionFormat.PrometheusText, cancellationToken);
    }

    /// <summary>The text exposition as a string (tests, logs).</summary>
    public async Task<string> ScrapeAsync(CancellationToken cancellationToken = default)
    {
        using var buffer = new MemoryStream();
        await WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        return System.Text.Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    private static double Seconds(TimeSpan t) => Math.Max(0, t.TotalSeconds);
}
