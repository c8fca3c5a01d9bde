// `peft serve`: the OpenAI-compatible adapter server (PeftKernels.Server.PeftServer) over a Hugging Face
// model folder. --adapter NAME=DIR loads adapters at start; --adapters-dir DIR serves every adapter
// folder in it under its folder name and is where /v1/load_lora_adapter may load from. Prints the URL
// when ready; SIGTERM or Ctrl-C stop it gracefully (new requests get 503, running ones finish up to the
// shutdown timeout) and it exits 0. The server is PeftServer.CreateWithTenantsAndMetrics: --api-keys FILE
// gives the tenants' gate (keys, adapters each may use, rate limits, canary aliases), else everyone is
// anonymous; GET /metrics serves Prometheus metrics.
// --device cuda moves the model to the GPU: the engine's step forward (base GEMMs, paged KV cache, and
// every adapter kind: LoRA, DoRA, IA³, prompt learning, bottleneck, MixLoRA, X-LoRA) runs there.
using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using PeftKernels.Server;

namespace PeftKernels.Cli;

internal static class ServeCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var adapters = new Option<string[]>("--adapter") { HelpName = "name=dir", Description = "An adapter served as NAME, loaded at start (repeatable).", AllowMultipleArgumentsPerToken = false };
        var adaptersDir = new Option<string?>("--adapters-dir")
        {
            HelpName = "dir",
            Description = "Serve every adapter folder in DIR under its folder name; /v1/load_lora_adapter may load only from inside DIR.",
        };
        var host = new Option<string>("--host") { HelpName = "address", Description = "Address to listen on.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { HelpName = "n", Description = "Port (0 = a free one; the URL is printed).", DefaultValueFactory = _ => 8000 };
        var apiKeys = new Option<string?>("--api-keys") { HelpName = "file", Description = "JSON file of API keys: the adapters each key may use, its default adapter, rights and rate limit." };
        var maxLoaded = new Option<int>("--max-loaded-adapters") { HelpName = "n", Description = "Adapter versions resident at once (0 = unlimited); least recently used are evicted.", DefaultValueFactory = _ => 0 };
        var memory = new Option<int>("--adapter-memory") { HelpName = "MB", Description = "Memory for resident adapter factors in MiB (0 = unlimited).", DefaultValueFactory = _ => 0 };
        var device = ModelCommands.DeviceOption();
        var threads = OptionChecks.ThreadsOption();
        var command = new Command("serve", "Serve a model and its adapters over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
            + "/v1/load_lora_adapter, /v1/unload_lora_adapter, /health) on the inference engine; SIGTERM or Ctrl-C stop it gracefully.")
        {
            model, adapters, adaptersDir, host, port, apiKeys, maxLoaded, memory, device, threads,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            var on = ModelCommands.ParseDevice(parse.GetRequiredValue(device));
            var options = Options(parse, model, adapters, adaptersDir, host, port, apiKeys, maxLoaded, memory, threads) with { Device = on };

            using var stop = new CancellationTokenSource();
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
            return Run(options, log, stop.Token);

            void Stop(PosixSignalContext context)
            {
                context.Cancel = true;
                stop.Cancel();
            }
        }));
        return command;
    }

    /// <summary>Builds, starts and (when <paramref name="stop"/> fires) gracefully stops the server; prints the URL when ready. Returns 0.</summary>
    internal static int Run(ServeOptions options, TextWriter log, CancellationToken stop)
    {
        if (options.ApiKeysFile != null && !File.Exists(options.ApiKeysFile))
        {
            throw new FileNotFoundException($"--api-keys: {options.ApiKeysFile} does not exist.", options.ApiKeysFile);
        }

        var server = PeftServer.CreateWithTenantsAndMetrics(options);
        try
        {
            var url = server.StartAsync(CancellationToken.None).GetAwaiter().GetResult();
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"peft serve: {server.Model.Name} with {server.AdapterNames.Count} adapters at {url}"));
            log.Flush();
            stop.WaitHandle.WaitOne();
            log.WriteLine("peft serve: stopping (running requests finish first)");
        }
        finally
        {
            server.StopAsync().GetAwaiter().GetResult();
        }

        log.WriteLine("peft serve: stopped");
        return 0;
    }

    /// <summary>
    /// The request gate that enforces <see cref="ServeOptions.ApiKeysFile"/>; none is built into this verb yet, so a key file makes
    /// <see cref="PeftServer"/> refuse to start rather than serve without keys.
    /// </summary>
    private static ServeOptions Options(ParseResult parse, Option<string> model, Option<string[]> adapters, Option<string?> adaptersDir, Option<string> host, Option<int> port,
        Option<string?> apiKeys, Option<int> maxLoaded, Option<int> memory, Option<int> threads)
    {
        var pairs = new List<KeyValuePair<string, string>>();
        foreach (string spec in parse.GetValue(adapters) ?? [])
        {
            int eq = spec.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0 || eq == spec.Length - 1)
            {
                throw new ArgumentException($"--adapter {spec}: expected NAME=DIR.");
            }

            string name = spec[..eq];
            if (pairs.Any(p => p.Key == name))
            {
                throw new ArgumentException($"--adapter {spec}: the name '{name}' is given twice.");
            }

            pairs.Add(new(name, spec[(eq + 1)..]));
        }

        int p = parse.GetValue(port);
        if (p is < 0 or > 65535)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"--port must be in [0, 65535]; got {p}."));
        }

        string? dir = parse.GetValue(adaptersDir);
        if (dir != null && !Directory.Exists(dir))
        {
            throw new DirectoryNotFoundException($"--adapters-dir: the folder '{dir}' does not exist.");
        }

        return new ServeOptions
        {
            ModelFolder = parse.GetRequiredValue(model),
            Adapters = pairs,
            AdaptersDir = dir,
            Host = parse.GetRequiredValue(host),
            Port = p,
            ApiKeysFile = parse.GetValue(apiKeys),
            MaxLoadedAdapters = parse.AtLeast(maxLoaded, 0, " (0 = unlimited)"),
            AdapterMemoryBytes = (long)parse.AtLeast(memory, 0, " (0 = unlimited)") << 20,
            Threads = parse.Threads(threads),
        };
    }
}
