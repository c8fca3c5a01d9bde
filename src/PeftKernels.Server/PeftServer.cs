// `peft serve`'s server: Kestrel over one InferenceEngine (stepped by an EngineHost) and its adapter
// registry. Every request passes one middleware that
//   - takes the X-Request-Id header (or makes one), echoes it, and logs it as the RequestId of the request's line;
//   - answers 503 once a stop has begun (new requests only; running ones finish);
//   - turns ApiException into an OpenAI error body, a too-large body (Kestrel's MaxRequestBodySize) into
//     413, and anything unexpected into 500;
//   - logs the outcome and reports it to the IServerObserver (RequestFinished), when there is one.
// StopAsync: new requests get 503; running requests get up to ShutdownTimeout to finish, then are
// cancelled (their sequences freed); then Kestrel stops and the engine loop ends.
using System.Diagnostics;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PeftKernels.Engine;
using PeftKernels.Serving;

namespace PeftKernels.Server;

/// <summary>An OpenAI-compatible HTTP server over the inference engine, with runtime adapter management and per-request adapter mixes.</summary>
public sealed partial class PeftServer : IAsyncDisposable
{
    private readonly ServeOptions options;
    private readonly WebApplication app;
    private readonly EngineHost host;
    private readonly AdapterMixer mixer;
    private readonly CancellationTokenSource stopping = new();
    private readonly ILogger logger;
    private int active;
    private int state; // 0 new, 1 started, 2 stopping, 3 stopped

    /// <summary>What the server disposes when it stops besides its own parts (the request gate built by <see cref="CreateWithTenantsAndMetrics"/>).</summary>
    private IDisposable? owned;

    /// <summary>A server for <paramref name="model"/> (built, not started).</summary>
    /// <param name="model">The model (the engine runs on it; its chat renderer serves /v1/chat/completions).</param>
    /// <param name="options">Where to listen, limits, adapters.</param>
    /// <param name="gate">Authentication, routing, key scoping and rate limits; null = every request is allowed.</param>
    /// <param name="observer">Per-request metrics; null = none.</param>
    /// <param name="configureLogging">Logging setup (default: one-line console logs with scopes).</param>
    /// <param name="extraEndpoints">Called with the application before the API routes are mapped (e.g. <c>/metrics</c>, the web page).</param>
    /// <exception cref="ArgumentException">An option is out of range, or an adapter cannot be loaded.</exception>
    public PeftServer(ServedModel model, ServeOptions options, IRequestGate? gate = null, IServerObserver? observer = null,
        Action<ILoggingBuilder>? configureLogging = null, Action<WebApplication, PeftServer>? extraEndpoints = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Check(options);
        if (options.ApiKeysFile != null && gate == null)
        {
            throw new ArgumentException($"--api-keys {options.ApiKeysFile}: the server was given a key file but no request gate to enforce it; refusing to serve without keys.");
        }

        this.options = options;
        Model = model;
        Gate = gate;
        Observer = observer;
        AdaptersDir = options.AdaptersDir == null ? null : Path.GetFullPath(options.AdaptersDir);
        if (options.Device is { IsGpu: true } device)
        {
            model.Model.To(device); // the engine's forward then runs on the device (InferenceEngine)
        }

        var registry = new AdapterRegistry(model.Model, new AdapterRegistryOptions { MaxLoaded = options.MaxLoadedAdapters, MemoryBudgetBytes = options.AdapterMemoryBytes });
        var engine = new InferenceEngine(model.Model, new EngineOptions
        {
            MaxRunningSequences = options.MaxRunningSequences,
            MaxBatchTokens = options.MaxBatchTokens,
            Threads = options.Threads,
            MaxSequenceLength = options.MaxContextLength,
        }, registry);
        try
        {
            RegisterStartupAdapters(registry);
        }
        catch
        {
            engine.Dispose();
            throw;
        }

        host = new EngineHost(engine);
        mixer = new AdapterMixer(model.Model, registry);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (configureLogging != null)
        {
            configureLogging(builder.Logging);
        }
        else
        {
            builder.Logging.AddSimpleConsole(o =>
            {
                o.SingleLine = true;
                o.IncludeScopes = false; // every request line carries its own request id
                o.TimestampFormat = "HH:mm:ss ";
            });
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        }

        builder.WebHost.UseKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.AddServerHeader = false;
        });
        builder.WebHost.UseUrls(ListenUrl(options.Host, options.Port));
        app = builder.Build();
        logger = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("PeftKernels.Server");
        app.Use(Middleware);
        extraEndpoints?.Invoke(app, this);
        MapRoutes(app);
    }

    /// <summary>The model served.</summary>
    public ServedModel Model { get; }

    /// <summary>The engine (its registry is <see cref="InferenceEngine.Adapters"/>).</summary>
    public InferenceEngine Engine => host.Engine;

    /// <summary>The request gate, or null.</summary>
    public IRequestGate? Gate { get; }

    /// <summary>The metrics observer, or null.</summary>
    public IServerObserver? Observer { get; }

    /// <summary>The full adapters directory, or null when runtime loading is off.</summary>
    public string? AdaptersDir { get; }

    /// <summary>The bound address (after <see cref="StartAsync"/>), e.g. <c>http://127.0.0.1:8000</c>.</summary>
    public Uri? Url { get; private set; }

    /// <summary>Requests in progress.</summary>
    public int ActiveRequests => Volatile.Read(ref active);

    /// <summary>Loads <see cref="ServeOptions.ModelFolder"/> and builds a server for it (the parameters are the constructor's).</summary>
    public static PeftServer Create(ServeOptions options, IRequestGate? gate = null, IServerObserver? observer = null, Action<ILoggingBuilder>? configureLogging = null,
        Action<WebApplication, PeftServer>? extraEndpoints = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new PeftServer(ServedModel.Load(options.ModelFolder, options.ModelName), options, gate, observer, configureLogging, extraEndpoints);
    }

    /// <summary>Starts listening; returns the bound URL (the real port when <see cref="ServeOptions.Port"/> is 0).</summary>
    public async Task<Uri> StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.CompareExchange(ref state, 1, 0) != 0)
        {
            throw new InvalidOperationException("the server was already started.");
        }

        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Url = new Uri(address);
        logger.LogInformation("serving {Model} on {Url} ({Adapters} adapters)", Model.Name, Url, Engine.Adapters.Names.Count);
        return Url;
    }

    /// <summary>
    /// Stops gracefully: new requests get 503, running requests may finish for up to <see cref="ServeOptions.ShutdownTimeout"/> (then they
    /// are cancelled), then the listener and the engine stop. Safe to call more than once.
    /// </summary>
    public async Task StopAsync()
    {
        int was = Interlocked.Exchange(ref state, 2);
        if (was >= 2)
        {
            return;
        }

        if (was == 1)
        {
            logger.LogInformation("stopping: {Active} requests running", ActiveRequests);
            var deadline = Stopwatch.StartNew();
            while (ActiveRequests > 0 && deadline.Elapsed < options.ShutdownTimeout)
            {
                await Task.Delay(20).ConfigureAwait(false);
            }

            await stopping.CancelAsync().ConfigureAwait(false);
            using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await app.StopAsync(grace.Token).ConfigureAwait(false);
        }

        await app.DisposeAsync().ConfigureAwait(false);
        await host.DisposeAsync().ConfigureAwait(false);
        owned?.Dispose();
        mixer.Dispose();
        stopping.Dispose();
        Volatile.Write(ref state, 3);
    }

    /// <inheritdoc cref="StopAsync"/>
    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    private static string ListenUrl(string hostName, int port)
    {
        string h = IPAddress.TryParse(hostName, out var ip) && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{hostName}]" : hostName;
        return $"http://{h}:{port.ToString(System.Globalization.CultureInfo.InvariantCulture)}";
    }

    private static void Check(ServeOptions o)
    {
        void Require(bool ok, string what)
        {
            if (!ok)
            {
                throw new ArgumentException(what);
            }
        }

        Require(o.Port is >= 0 and <= 65535, $"--port must be in [0, 65535]; got {o.Port}.");
        Require(!string.IsNullOrWhiteSpace(o.Host), "--host must not be empty.");
        Require(o.MaxLoadedAdapters >= 0, $"--max-loaded-adapters must be >= 0 (0 = unlimited); got {o.MaxLoadedAdapters}.");
        Require(o.AdapterMemoryBytes >= 0, $"--adapter-memory must be >= 0 (0 = unlimited); got {o.AdapterMemoryBytes}.");
        Require(o.MaxQueuedRequests > 0, $"MaxQueuedRequests must be positive; got {o.MaxQueuedRequests}.");
        Require(o.MaxRequestBodyBytes > 0, $"MaxRequestBodyBytes must be positive; got {o.MaxRequestBodyBytes}.");
        Require(o.ShutdownTimeout >= TimeSpan.Zero, $"ShutdownTimeout must be >= 0; got {o.ShutdownTimeout}.");
        Require(o.AdaptersDir == null || Directory.Exists(o.AdaptersDir), $"--adapters-dir: the folder '{o.AdaptersDir}' does not exist.");
    }

    /// <summary>--adapter NAME=DIR are loaded now (a bad one stops the start); every adapter folder in --adapters-dir is registered (loaded on first use).</summary>
    private void RegisterStartupAdapters(AdapterRegistry registry)
    {
        foreach (var (name, folder) in options.Adapters)
        {
            CheckAdapterName(name, "--adapter");
            if (string.Equals(name, Model.Name, StringComparison.Ordinal))
            {
                throw new ArgumentException($"--adapter {name}: the name is the base model's; pick another.");
            }

            try
            {
                folders[name] = registry.Load(name, folder).SourceFolder;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or InvalidOperationException or UnauthorizedAccessException)
            {
                throw new ArgumentException($"--adapter {name}={folder}: {e.Message}", e);
            }
        }

        if (AdaptersDir == null)
        {
            return;
        }

        foreach (string folder in Directory.EnumerateDirectories(AdaptersDir).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(folder);
            if (File.Exists(Path.Combine(folder, "adapter_config.json")) && !registry.Names.Contains(name, StringComparer.Ordinal) && IsValidName(name) && name != Model.Name)
            {
                folders[name] = AdapterFolders.Resolve(folder, AdaptersDir);
                registry.Register(name, folders[name]);
            }
        }
    }

    /// <summary>Whether <paramref name="name"/> may name an adapter: 1–128 characters, no control characters, not a mix's reserved prefix.</summary>
    internal static bool IsValidName(string name) =>
        name.Length is > 0 and <= 128 && !name.Any(char.IsControl) && !name.StartsWith(AdapterMixer.MixPrefix, StringComparison.Ordinal) && name.Trim() == name;

    private static void CheckAdapterName(string name, string what)
    {
        if (!IsValidName(name))
        {
            throw new ArgumentException($"{what}: '{name}' is not a valid adapter name (1-128 characters, no control characters or surrounding spaces, not starting with '{AdapterMixer.MixPrefix}').");
        }
    }

    private async Task Middleware(HttpContext context, RequestDelegate next)
    {
        var started = Stopwatch.GetTimestamp();
        string requestId = context.Request.Headers["X-Request-Id"] is { Count: > 0 } given && given[0] is { Length: > 0 and <= 128 } id && !id.Any(char.IsControl)
            ? id : Guid.NewGuid().ToString("N");
        context.Response.Headers["X-Request-Id"] = requestId;
        context.TraceIdentifier = requestId;
        Interlocked.Increment(ref active);
        try
        {
            if (Volatile.Read(ref state) >= 2)
            {
                await OpenAiError.Write(context, StatusCodes.Status503ServiceUnavailable, "the server is shutting down.", code: "service_unavailable",
                    retryAfter: TimeSpan.FromSeconds(1)).ConfigureAwait(false);
                return;
            }

            using var linked = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, stopping.Token);
            context.Items[AbortKey] = linked.Token;
            await next(context).ConfigureAwait(false);
        }
        catch (ApiException e)
        {
            await OpenAiError.Write(context, e.Status, e.Message, e.Param, e.Code, e.RetryAfter).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            await OpenAiError.Write(context, e.StatusCode, $"the request body is larger than the server's limit of {options.MaxRequestBodyBytes} bytes.",
                code: "request_too_large").ConfigureAwait(false);
        }
        catch (BadHttpRequestException e)
        {
            await OpenAiError.Write(context, e.StatusCode, e.Message).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            context.Response.StatusCode = 499; // the client went away: nothing more to send
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            await OpenAiError.Write(context, StatusCodes.Status503ServiceUnavailable, "the server stopped before the request finished.", code: "service_unavailable").ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            logger.LogError(e, "{RequestId} failed", requestId);
            await OpenAiError.Write(context, StatusCodes.Status500InternalServerError, $"internal error: {e.Message}").ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref active);
            var elapsed = Stopwatch.GetElapsedTime(started);
            string? model = context.Items[ModelKey] as string;
            int status = context.Response.StatusCode;
            logger.LogInformation("{RequestId} {Method} {Path} -> {Status} in {ElapsedMs:F1} ms (model {Model})", requestId, context.Request.Method,
                context.Request.Path.Value, status, elapsed.TotalMilliseconds, model ?? "-");
            Observer?.RequestFinished(context.Request.Path.Value ?? "", status, model, elapsed);
        }
    }
}
