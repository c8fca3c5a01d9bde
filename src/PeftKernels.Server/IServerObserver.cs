namespace PeftKernels.Server;

/// <summary>
/// What the HTTP layer reports about each request, for metrics (<c>GET /metrics</c>) and logs. Engine-wide gauges
/// (queue length, batch size, adapter loads and evictions) are read from the engine and its adapter registry at scrape
/// time instead. Implementations must be thread-safe: requests report concurrently.
/// </summary>
public interface IServerObserver
{
    /// <summary>A request finished with HTTP <paramref name="status"/> on <paramref name="endpoint"/> (for example
    /// <c>/v1/chat/completions</c>); <paramref name="model"/> is the adapter or base model it ran on, when known.</summary>
    void RequestFinished(string endpoint, int status, string? model, TimeSpan duration);

    /// <summary>Prompt tokens a request on <paramref name="model"/> submitted, and completion tokens it received.</summary>
    void Tokens(string model, int promptTokens, int completionTokens);

    /// <summary>Time from a request's arrival to its first generated token.</summary>
    void FirstToken(string model, TimeSpan sinceArrival);

    /// <summary>Time between two consecutive generated tokens of one request.</summary>
    void InterToken(string model, TimeSpan gap);
}
