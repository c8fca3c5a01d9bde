// `peft bench http`: a load test of an OpenAI-compatible server (issue 16, item 9). Either --url URL, a
// running server on loopback (any host that is not localhost, 127.0.0.0/8 or ::1 is refused: this tool
// is a load generator and must not be pointed at someone else's machine), or --self, which starts
// `peft serve`'s server in-process over --model DIR or --random125m with --adapters random adapters and
// also runs the same requests straight on the engine (HttpLoadSelf). N clients stream completions over M
// adapters for S seconds (HttpLoad) and the table reports throughput, p50/p99 time to first token and
// inter-token latency, errors and lost requests (HttpLoadReport); --json writes the same. Bounded:
// --seconds ≤ 3600, --clients ≤ 1024. Every option is checked before any request or model is built.
using System.CommandLine;
using System.Globalization;

namespace PeftKernels.Cli;

internal static class BenchHttpCommand
{
    /// <summary>The most seconds a run may last.</summary>
    public const int MaxSeconds = 3600;

    /// <summary>The most concurrent clients.</summary>
    public const int MaxClients = 1024;

    public static Command Create()
    {
        var url = new Option<string?>("--url") { HelpName = "url", Description = "The server's base URL, e.g. http://127.0.0.1:8000 (loopback only)." };
        var self = new Option<bool>("--self") { Description = "Start a server in-process (on --model or --random125m) and also measure the engine at the same load." };
        var model = new Option<string?>("--model") { HelpName = "dir", Description = "With --self: the model folder to serve." };
        var random = new Option<bool>("--random125m") { Description = "With --self: serve a random ~125M Llama (seed 1)." };
        var clients = new Option<int>("--clients") { HelpName = "n", Description = $"Concurrent clients (1 to {MaxClients}).", DefaultValueFactory = _ => 64 };
        var seconds = new Option<double>("--seconds") { HelpName = "s", Description = $"How long clients start new requests (0 < s <= {MaxSeconds}); requests in flight then finish.", DefaultValueFactory = _ => 60 };
        var adapters = new Option<int>("--adapters") { HelpName = "m", Description = "Adapters used round-robin (with --self: random adapters created).", DefaultValueFactory = _ => 64 };
        var maxTokens = new Option<int>("--max-tokens") { HelpName = "t", Description = "max_tokens of every request.", DefaultValueFactory = _ => 32 };
        var promptTokens = new Option<int>("--prompt-tokens") { HelpName = "p", Description = "Prompt length in token ids (a fixed pseudo-random list per request).", DefaultValueFactory = _ => 32 };
        var vocab = new Option<int>("--vocab") { HelpName = "v", Description = "Prompt ids are drawn from [0, v) (with --self: at most the model's vocabulary).", DefaultValueFactory = _ => 256 };
        var threads = OptionChecks.ThreadsOption();
        var json = new Option<string?>("--json") { HelpName = "file", Description = "Also write the results to this JSON file." };
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command("http", "Load-test an OpenAI-compatible server on loopback: N streaming clients over M adapters for S seconds; throughput, "
            + "p50/p99 time to first token and inter-token latency, errors and lost requests. --self serves a model in-process and compares with the engine.")
        {
            url, self, model, random, clients, seconds, adapters, maxTokens, promptTokens, vocab, threads, json, overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            int n = InRange(parse, clients, 1, MaxClients);
            double s = parse.GetValue(seconds);
            if (!(s > 0 && s <= MaxSeconds))
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--seconds must be > 0 and <= {MaxSeconds}; got {s}."));
            }

            int m = parse.AtLeast(adapters, 1);
            int t = parse.AtLeast(maxTokens, 1);
            int p = parse.AtLeast(promptTokens, 1);
            int v = parse.AtLeast(vocab, 1);
            int th = parse.Threads(threads);
            bool isSelf = parse.GetValue(self);
            string? modelFolder = parse.GetValue(model);
            bool isRandom = parse.GetValue(random);
            string? target = parse.GetValue(url);
            if (isSelf == (target != null))
            {
                throw new ArgumentException("give exactly one of --url URL (a running server) and --self (a server started here).");
            }

            if (isSelf && (modelFolder != null) == isRandom)
            {
                throw new ArgumentException("--self needs exactly one of --model DIR and --random125m.");
            }

            if (!isSelf && (modelFolder != null || isRandom))
            {
                throw new ArgumentException("--model and --random125m go with --self; with --url the server's own model is used.");
            }

            Uri address = isSelf ? new Uri("http://127.0.0.1/") : CheckUrl(target!);
            string? jsonPath = parse.GetValue(json) is { } path
                ? OutputPaths.Check("--json", path, OutputKind.File, parse.GetValue(overwrite), ("--model", modelFolder))
                : null;
            var settings = new HttpLoadSettings(address, n, s, m, t, p, v);
            var report = isSelf ? HttpLoadSelf.Run(modelFolder, settings, m, th, log) : RunUrl(settings);
            report.Print(log);
            if (jsonPath != null)
            {
                report.WriteJson(jsonPath);
                log.WriteLine($"wrote {jsonPath}");
            }

            return 0;
        }));
        return command;
    }

    /// <summary>Parses <paramref name="text"/> as an http(s) URL on a loopback host; refuses anything else.</summary>
    internal static Uri CheckUrl(string text)
    {
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            throw new ArgumentException($"--url must be an absolute http:// or https:// URL; got '{text}'.");
        }

        if (!HttpLoad.IsLoopback(uri))
        {
            throw new ArgumentException($"--url must point at a loopback host (localhost, 127.0.0.0/8 or ::1): this load generator does not send traffic to other machines; got host '{uri.Host}'.");
        }

        // The API paths are relative to the base, so the base must end with a slash.
        return uri.AbsolutePath.EndsWith('/') ? uri : new Uri(uri + "/");
    }

    private static HttpLoadReport RunUrl(HttpLoadSettings s)
    {
        using var http = HttpLoad.NewClient(s.Url, s.Clients);
        var names = HttpLoad.ListAdapters(http, CancellationToken.None).GetAwaiter().GetResult();
        if (names.Length < s.Adapters)
        {
            throw new ArgumentException($"--adapters {s.Adapters}: the server at {s.Url} lists {names.Length} adapters in /v1/models.");
        }

        var used = names.Take(s.Adapters).ToArray();
        var (requests, seconds) = HttpLoad.Run(http, s, used, CancellationToken.None).GetAwaiter().GetResult();
        return new HttpLoadReport(s, used, requests, seconds);
    }

    private static int InRange(ParseResult parse, Option<int> option, int min, int max)
    {
        int v = parse.GetValue(option);
        if (v < min || v > max)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"{option.Name} must be >= {min} and <= {max}; got {v}."));
        }

        return v;
    }
}
