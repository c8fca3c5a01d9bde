// The figures of `peft bench http`: requests, completion tokens per second (completion tokens of every
// request, errors and lost ones included, over the wall time from the first request's start to the last
// one's end), p50/p99 time to first token and inter-token latency (nearest rank over every request's
// values), errors and lost requests; with --self also the engine's tokens per second at the same load and
// the ratio. Printed as a table and, with --json, written atomically as JSON.
using System.Globalization;
using System.Text.Json;
using PeftKernels.IO;

namespace PeftKernels.Cli;

/// <summary>The engine run of `peft bench http --self`: the same requests straight on InferenceEngine.Submit.</summary>
/// <param name="Requests">Requests run.</param>
/// <param name="CompletionTokens">Tokens generated.</param>
/// <param name="Seconds">Wall time.</param>
internal sealed record EngineLoadRun(int Requests, long CompletionTokens, double Seconds)
{
    /// <summary>Generated tokens per second.</summary>
    public double TokensPerSecond => CompletionTokens / Seconds;
}

/// <summary>What one `peft bench http` run measured.</summary>
internal sealed record HttpLoadReport(HttpLoadSettings Settings, IReadOnlyList<string> Adapters, IReadOnlyList<HttpLoadRequest> Requests, double Seconds)
{
    /// <summary>The engine at the same load (--self only).</summary>
    public EngineLoadRun? Engine { get; init; }

    /// <summary>The machine and load, for the record (--self only: the processor and the load average).</summary>
    public string? Machine { get; init; }

    /// <summary>Completion tokens of every request.</summary>
    public long CompletionTokens => Requests.Sum(r => (long)r.CompletionTokens);

    /// <summary>Completion tokens per second of wall time.</summary>
    public double TokensPerSecond => CompletionTokens / Seconds;

    /// <summary>Requests that failed: non-2xx or an exception.</summary>
    public int Errors => Requests.Count(r => r.Error);

    /// <summary>Requests whose stream ended incomplete or inconsistent.</summary>
    public int Lost => Requests.Count(r => !r.Ok && !r.Error);

    /// <summary>Time to first token, p50 and p99 (ms).</summary>
    public (double P50, double P99) Ttft => Percentiles([.. Requests.Where(r => !double.IsNaN(r.TtftMs)).Select(r => r.TtftMs)]);

    /// <summary>Inter-token latency, p50 and p99 (ms).</summary>
    public (double P50, double P99) Itl => Percentiles([.. Requests.SelectMany(r => r.GapsMs)]);

    /// <summary>HTTP over engine tokens per second (NaN without an engine run).</summary>
    public double Ratio => Engine == null ? double.NaN : TokensPerSecond / Engine.TokensPerSecond;

    /// <summary>The nearest-rank p50 and p99 of <paramref name="values"/> (NaN when empty).</summary>
    public static (double P50, double P99) Percentiles(double[] values)
    {
        if (values.Length == 0)
        {
            return (double.NaN, double.NaN);
        }

        Array.Sort(values);
        double Rank(double p) => values[Math.Clamp((int)Math.Ceiling(p * values.Length) - 1, 0, values.Length - 1)];
        return (Rank(0.50), Rank(0.99));
    }

    /// <summary>Prints the table (and the first few failures).</summary>
    public void Print(TextWriter log)
    {
        var s = Settings;
        string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{s.Url}: {s.Clients} clients, {Adapters.Count} adapters, {s.Seconds} s, {s.PromptTokens} prompt + {s.MaxTokens} max tokens"));
        log.WriteLine($"{"requests",9} {"tokens/s",10} {"TTFT p50",9} {"TTFT p99",9} {"ITL p50",8} {"ITL p99",8} {"errors",7} {"lost",5}");
        log.WriteLine($"{Requests.Count,9} {F(TokensPerSecond),10} {F(Ttft.P50),9} {F(Ttft.P99),9} {F(Itl.P50),8} {F(Itl.P99),8} {Errors,7} {Lost,5}   (ms)");
        if (Machine != null)
        {
            log.WriteLine($"machine: {Machine}");
        }

        if (Engine is { } e)
        {
            log.WriteLine($"engine at the same load: {e.Requests} requests, {F(e.TokensPerSecond)} tokens/s; HTTP / engine = {Ratio.ToString("F3", CultureInfo.InvariantCulture)}");
        }

        foreach (var r in Requests.Where(r => !r.Ok).Take(5))
        {
            log.WriteLine($"  {(r.Error ? "error" : "lost")} on {r.Adapter}: {r.Message}");
        }
    }

    /// <summary>Writes the report as JSON to <paramref name="path"/> atomically.</summary>
    public void WriteJson(string path) => AtomicFile.Write(path, stream =>
    {
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        static void Number(Utf8JsonWriter w, string name, double v)
        {
            if (double.IsFinite(v))
            {
                w.WriteNumber(name, Math.Round(v, 3));
            }
            else
            {
                w.WriteNull(name);
            }
        }

        w.WriteStartObject();
        w.WriteString("url", Settings.Url.ToString());
        w.WriteNumber("clients", Settings.Clients);
        w.WriteNumber("seconds", Settings.Seconds);
        w.WriteNumber("adapters", Adapters.Count);
        w.WriteNumber("max_tokens", Settings.MaxTokens);
        w.WriteNumber("prompt_tokens", Settings.PromptTokens);
        if (Machine != null)
        {
            w.WriteString("machine", Machine);
        }

        w.WriteNumber("requests", Requests.Count);
        w.WriteNumber("completion_tokens", CompletionTokens);
        Number(w, "wall_seconds", Seconds);
        Number(w, "tokens_per_second", TokensPerSecond);
        Number(w, "ttft_p50_ms", Ttft.P50);
        Number(w, "ttft_p99_ms", Ttft.P99);
        Number(w, "itl_p50_ms", Itl.P50);
        Number(w, "itl_p99_ms", Itl.P99);
        w.WriteNumber("errors", Errors);
        w.WriteNumber("lost", Lost);
        if (Engine is { } e)
        {
            w.WriteStartObject("engine");
            w.WriteNumber("requests", e.Requests);
            w.WriteNumber("completion_tokens", e.CompletionTokens);
            Number(w, "wall_seconds", e.Seconds);
            Number(w, "tokens_per_second", e.TokensPerSecond);
            w.WriteEndObject();
            Number(w, "http_over_engine", Ratio);
        }

        w.WriteEndObject();
    });
}
