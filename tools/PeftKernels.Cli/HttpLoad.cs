// The load generator of `peft bench http` (BenchHttpCommand): N concurrent clients against an
// OpenAI-compatible server on loopback. GET /v1/models names the adapters (every entry but the base,
// whose `parent` is null); M of them are used. Request k (a global counter, so every run issues the
// same sequence) goes to adapter k mod M with a prompt of P token ids drawn by Random(seed + k) from
// [0, vocab), POST /v1/completions with "stream": true, temperature 0, max_tokens T and
// stream_options.include_usage. Per request it measures the time to the first server-sent chunk with
// text (TTFT) and the gaps between successive chunks with text (inter-token latency: the server sends a
// chunk per token unless the client falls behind, when one chunk carries the tokens it missed), and
// reads completion_tokens from the final usage chunk. A request is an error when the status is not 2xx
// or the exchange throws; it is lost when its stream ends without `data: [DONE]`, without a usage chunk
// or finish reason, with more text chunks than completion tokens, or with finish reason "length" and
// fewer completion tokens than max_tokens. At the deadline clients start no new request; the ones in
// flight finish and are counted.
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;

namespace PeftKernels.Cli;

/// <summary>What `peft bench http` sends.</summary>
/// <param name="Url">The server's base URL (loopback only).</param>
/// <param name="Clients">Concurrent clients.</param>
/// <param name="Seconds">How long clients start new requests.</param>
/// <param name="Adapters">Distinct adapters used, round-robin.</param>
/// <param name="MaxTokens">max_tokens of every request.</param>
/// <param name="PromptTokens">Prompt length in token ids.</param>
/// <param name="Vocab">Prompt ids are drawn from [0, Vocab).</param>
internal sealed record HttpLoadSettings(Uri Url, int Clients, double Seconds, int Adapters, int MaxTokens, int PromptTokens, int Vocab)
{
    /// <summary>The seed of the prompts: request k's prompt is drawn by Random(Seed + k).</summary>
    public const int Seed = 1;

    /// <summary>The prompt of request <paramref name="k"/>: <see cref="PromptTokens"/> ids in [0, <see cref="Vocab"/>), the same every run.</summary>
    public int[] Prompt(int k)
    {
        var rng = new Random(Seed + k);
        return [.. Enumerable.Range(0, PromptTokens).Select(_ => rng.Next(Vocab))];
    }
}

/// <summary>One request's outcome.</summary>
/// <param name="Adapter">The adapter it ran on.</param>
/// <param name="Ok">Finished with [DONE], usage and a finish reason, consistent.</param>
/// <param name="Error">Non-2xx or an exception (its message in <paramref name="Message"/>).</param>
/// <param name="CompletionTokens">usage.completion_tokens (0 when absent).</param>
/// <param name="TtftMs">Start to the first chunk with text (NaN when none came).</param>
/// <param name="GapsMs">Gaps between successive chunks with text.</param>
/// <param name="Message">Why it failed or was lost (null when ok).</param>
internal sealed record HttpLoadRequest(string Adapter, bool Ok, bool Error, int CompletionTokens, double TtftMs, double[] GapsMs, string? Message);

/// <summary>Runs the clients of `peft bench http`.</summary>
internal static class HttpLoad
{
    /// <summary>A handler for <paramref name="clients"/> concurrent streams, no proxy (loopback only).</summary>
    public static HttpClient NewClient(Uri url, int clients) => new(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = clients + 1,
        UseProxy = false,
        PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
    })
    {
        BaseAddress = url,
        Timeout = Timeout.InfiniteTimeSpan, // each request is bounded by the run's own cancellation
    };

    /// <summary>The adapters GET /v1/models lists (models with a parent), in listed order.</summary>
    /// <exception cref="IOException">The server cannot be reached or answers other than 200 with a model list.</exception>
    public static async Task<string[]> ListAdapters(HttpClient http, CancellationToken cancellationToken)
    {
        string body;
        try
        {
            using var response = await http.GetAsync(new Uri("v1/models", UriKind.Relative), cancellationToken).ConfigureAwait(false);
            body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new IOException($"GET {http.BaseAddress}v1/models answered {(int)response.StatusCode}: {Truncate(body)}");
            }
        }
        catch (HttpRequestException e)
        {
            throw new IOException($"GET {http.BaseAddress}v1/models failed: {e.Message}", e);
        }

        try
        {
            using var doc = JsonDocument.Parse(body);
            return [.. doc.RootElement.GetProperty("data").EnumerateArray()
                .Where(m => m.TryGetProperty("parent", out var p) && p.ValueKind == JsonValueKind.String)
                .Select(m => m.GetProperty("id").GetString()!)];
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new IOException($"GET {http.BaseAddress}v1/models: not an OpenAI model list ({e.Message}): {Truncate(body)}", e);
        }
    }

    /// <summary>
    /// Runs <see cref="HttpLoadSettings.Clients"/> clients over <paramref name="adapters"/> until <see cref="HttpLoadSettings.Seconds"/>
    /// have passed, then waits for the requests in flight. Returns every request's outcome and the wall time to the last one's end.
    /// </summary>
    public static async Task<(List<HttpLoadRequest> Requests, double Seconds)> Run(HttpClient http, HttpLoadSettings s, IReadOnlyList<string> adapters, CancellationToken abort)
    {
        var results = new List<HttpLoadRequest>();
        int next = -1;
        var clock = Stopwatch.StartNew();
        var deadline = TimeSpan.FromSeconds(s.Seconds);
        var clients = Enumerable.Range(0, s.Clients).Select(_ => Task.Run(async () =>
        {
            var mine = new List<HttpLoadRequest>();
            while (clock.Elapsed < deadline && !abort.IsCancellationRequested)
            {
                int k = Interlocked.Increment(ref next);
                mine.Add(await One(http, s, adapters[k % adapters.Count], s.Prompt(k), s.MaxTokens, abort).ConfigureAwait(false));
            }

            return mine;
        }, abort)).ToArray();
        foreach (var list in await Task.WhenAll(clients).ConfigureAwait(false))
        {
            results.AddRange(list);
        }

        return (results, clock.Elapsed.TotalSeconds);
    }

    /// <summary>One streamed completion; never throws but for <paramref name="abort"/>.</summary>
    public static async Task<HttpLoadRequest> One(HttpClient http, HttpLoadSettings s, string adapter, int[] prompt, int maxTokens, CancellationToken abort)
    {
        var clock = Stopwatch.StartNew();
        double ttft = double.NaN, last = 0;
        var gaps = new List<double>();
        int chunks = 0, tokens = 0;
        string? finish = null;
        bool done = false, usage = false;
        try
        {
            using var content = new StringContent(Body(adapter, prompt, maxTokens), Encoding.UTF8, "application/json");
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("v1/completions", UriKind.Relative)) { Content = content };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, abort).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                string error = await response.Content.ReadAsStringAsync(abort).ConfigureAwait(false);
                return new(adapter, false, true, 0, double.NaN, [], $"{(int)response.StatusCode}: {Truncate(error)}");
            }

            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(abort).ConfigureAwait(false), Encoding.UTF8);
            while (await reader.ReadLineAsync(abort).ConfigureAwait(false) is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal))
                {
                    continue;
                }

                string data = line[6..];
                if (data == "[DONE]")
                {
                    done = true;
                    break;
                }

                using var doc = JsonDocument.Parse(data);
                var root = doc.RootElement;
                if (root.TryGetProperty("error", out var err))
                {
                    return new(adapter, false, true, tokens, ttft, [.. gaps], $"error event: {Truncate(err.ToString())}");
                }

                foreach (var choice in root.GetProperty("choices").EnumerateArray())
                {
                    if (choice.TryGetProperty("text", out var text) && text.GetString() is { Length: > 0 })
                    {
                        double now = clock.Elapsed.TotalMilliseconds;
                        if (chunks++ == 0)
                        {
                            ttft = now;
                        }
                        else
                        {
                            gaps.Add(now - last);
                        }

                        last = now;
                    }

                    if (choice.TryGetProperty("finish_reason", out var f) && f.ValueKind == JsonValueKind.String)
                    {
                        finish = f.GetString();
                    }
                }

                if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
                {
                    usage = true;
                    tokens = u.GetProperty("completion_tokens").GetInt32();
                }
            }
        }
        catch (OperationCanceledException) when (abort.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException or KeyNotFoundException or InvalidOperationException or OperationCanceledException)
        {
            return new(adapter, false, true, tokens, ttft, [.. gaps], $"{e.GetType().Name}: {e.Message}");
        }

        string? lost = !done ? "the stream ended without [DONE]"
            : !usage ? "no usage chunk"
            : finish == null ? "no finish_reason"
            : chunks > tokens ? $"{chunks} text chunks but usage says {tokens} completion tokens"
            : finish == "length" && tokens < maxTokens ? $"finish_reason length after {tokens} of {maxTokens} tokens"
            : null;
        return new(adapter, lost == null, false, tokens, ttft, [.. gaps], lost);
    }

    private static string Body(string adapter, int[] prompt, int maxTokens)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("model", adapter);
            json.WriteStartArray("prompt");
            foreach (int id in prompt)
            {
                json.WriteNumberValue(id);
            }

            json.WriteEndArray();
            json.WriteNumber("max_tokens", maxTokens);
            json.WriteNumber("temperature", 0);
            json.WriteBoolean("stream", true);
            json.WriteStartObject("stream_options");
            json.WriteBoolean("include_usage", true);
            json.WriteEndObject();
            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    /// <summary>Whether <paramref name="url"/>'s host is loopback: localhost, 127.0.0.0/8 or ::1.</summary>
    public static bool IsLoopback(Uri url) =>
        url.IsLoopback || string.Equals(url.Host, "localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(url.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    private static string Truncate(string text) => text.Length <= 300 ? text : text[..300] + "…";
}
