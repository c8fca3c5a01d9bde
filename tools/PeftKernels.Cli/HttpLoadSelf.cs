// `peft bench http --self`: the HTTP figures next to the engine's at the same load, for the issue's target
// (HTTP throughput ≥ 0.95× the engine's). Builds the server `peft serve` runs
// (PeftServer.CreateWithTenantsAndMetrics, metrics included) on 127.0.0.1 port 0 over --model DIR or a
// random ~125M Llama (LlamaConfig.Llama125M, seed 1, saved to a temporary folder; no tokenizer, so the
// byte tokenizer serves it) with M random LoRA adapters of mixed ranks loaded at start (ServeAdapterSet, as in
// `peft bench serve`). A short warm-up compiles the paths, then the HTTP load runs (HttpLoad); then the
// same requests — the same count, prompts, adapters, max_tokens and stop ids, N at a time — run straight on
// the server's own engine (InferenceEngine.Submit, awaiting each sequence's Completion), so both runs use
// one engine with the same options and the only difference is HTTP.
// The random model's lm_head rows are zeroed but for the printable ASCII ids 32–126 (the rows of the other
// ids give logit 0, below the largest of 95 random logits), so greedy decoding emits printable bytes: the
// byte tokenizer decodes any other id to U+FFFD, which the server's incremental detokenizer holds back as
// an unfinished character, and the stream would then carry its whole text in the last chunk, leaving
// nothing to time. The work per token is unchanged (the same dense shapes).
using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;
using PeftKernels.Engine;
using PeftKernels.Models;
using PeftKernels.Server;

namespace PeftKernels.Cli;

/// <summary>Runs `peft bench http --self`.</summary>
internal static class HttpLoadSelf
{
    /// <summary>The model seed of the random model and of the adapters.</summary>
    private const int Seed = 1;

    /// <summary>
    /// Starts a server over <paramref name="modelFolder"/> (null: a random ~125M Llama), loads <paramref name="adapters"/> random adapters,
    /// runs the HTTP load of <paramref name="settings"/> (its URL is replaced by the server's), then the engine run; returns both.
    /// </summary>
    public static HttpLoadReport Run(string? modelFolder, HttpLoadSettings settings, int adapters, int threads, TextWriter log)
    {
        string temp = Path.Combine(Path.GetTempPath(), $"peft-bench-http-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            var model = modelFolder != null ? LlamaForCausalLM.Load(modelFolder) : PrintableHead(LlamaForCausalLM.Create(LlamaConfig.Llama125M(), Seed));
            var config = model.Config;
            if (settings.PromptTokens + settings.MaxTokens > config.MaxPositionEmbeddings)
            {
                throw new ArgumentException($"--prompt-tokens + --max-tokens must be <= the model's max_position_embeddings ({config.MaxPositionEmbeddings}); got {settings.PromptTokens} + {settings.MaxTokens}.");
            }

            log.WriteLine($"model: {modelFolder ?? "random ~125M Llama"}, {config.ParameterCount() / 1e6:F1}M parameters; writing {adapters} random adapters");
            using var set = ServeAdapterSet.Create(model, adapters, fresh: 0, Seed);
            string folder = modelFolder ?? Path.Combine(temp, "model");
            if (modelFolder == null)
            {
                model.Save(folder);
            }

            model = null; // the server loads its own copy
            var options = new ServeOptions
            {
                ModelFolder = folder,
                Host = "127.0.0.1",
                Port = 0,
                Threads = threads,
                Adapters = [.. Enumerable.Range(0, adapters).Select(k => new KeyValuePair<string, string>(ServeAdapterSet.Name(k), set.Folder(k)))],
                MaxRunningSequences = Math.Min(settings.Clients, 512),
                MaxQueuedRequests = Math.Max(256, settings.Clients),
                MaxContextLength = settings.PromptTokens + settings.MaxTokens,
            };
            return Serve(options, settings with { Vocab = Math.Min(settings.Vocab, config.VocabSize) }, log);
        }
        finally
        {
            try
            {
                Directory.Delete(temp, recursive: true);
            }
            catch (IOException)
            {
                // A temporary folder left behind is not worth failing the benchmark over.
            }
        }
    }

    /// <summary>Zeroes <paramref name="model"/>'s lm_head rows but for ids 32–126 (printable ASCII); returns the model.</summary>
    internal static LlamaForCausalLM PrintableHead(LlamaForCausalLM model)
    {
        var w = model.LmHead.Weight.Data;
        int h = model.Config.HiddenSize;
        for (int id = 0; id < model.Config.VocabSize; id++)
        {
            if (id is < 32 or > 126)
            {
                Array.Clear(w, id * h, h);
            }
        }

        return model;
    }

    private static HttpLoadReport Serve(ServeOptions options, HttpLoadSettings settings, TextWriter log)
    {
        string before = LoadAverage();
        var server = PeftServer.CreateWithTenantsAndMetrics(options, logging => logging.SetMinimumLevel(LogLevel.Warning));
        try
        {
            var url = server.StartAsync().GetAwaiter().GetResult();
            log.WriteLine($"server: {url} with {server.Engine.Adapters.Names.Count} adapters");
            var s = settings with { Url = url };
            using var http = HttpLoad.NewClient(url, s.Clients);
            var names = HttpLoad.ListAdapters(http, CancellationToken.None).GetAwaiter().GetResult();
            var used = names.Take(s.Adapters).ToArray();

            // Warm-up: a few short requests compile every path before the timings.
            var warm = Enumerable.Range(0, Math.Min(4, s.Clients)).Select(i => HttpLoad.One(http, s, used[i % used.Length], s.Prompt(-1 - i), 2, CancellationToken.None));
            Task.WhenAll(warm).GetAwaiter().GetResult();

            var (requests, seconds) = HttpLoad.Run(http, s, used, CancellationToken.None).GetAwaiter().GetResult();
            var engine = EngineRun(server.Engine, s, used, requests.Count, server.Model.EosTokenIds);
            string machine = string.Create(CultureInfo.InvariantCulture, $"{ServeMachine.CpuName()}, {Environment.ProcessorCount} processors; load average {before} at the start, {LoadAverage()} at the end");
            return new HttpLoadReport(s, used, requests, seconds) { Engine = engine, Machine = machine };
        }
        finally
        {
            server.StopAsync().GetAwaiter().GetResult();
        }
    }

    /// <summary>Requests 0 … <paramref name="count"/>-1 of the HTTP run, <see cref="HttpLoadSettings.Clients"/> at a time, on the engine directly.</summary>
    internal static EngineLoadRun EngineRun(InferenceEngine engine, HttpLoadSettings s, IReadOnlyList<string> adapters, int count, IReadOnlyList<int> stopIds)
    {
        var sampling = new SamplingParams(Temperature: 0, StopTokenIds: stopIds, MaxTokens: s.MaxTokens);
        int next = -1;
        long tokens = 0;
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, s.Clients).Select(_ => Task.Run(async () =>
        {
            int k;
            while ((k = Interlocked.Increment(ref next)) < count)
            {
                var sequence = engine.Submit(new EngineRequest(s.Prompt(k), adapters[k % adapters.Count], sampling));
                var result = await sequence.Completion.ConfigureAwait(false);
                if (result.Error != null)
                {
                    throw new InvalidDataException($"engine run: request {k} failed: {result.Error}");
                }

                Interlocked.Add(ref tokens, result.Tokens.Length);
            }
        })).ToArray();
        Task.WhenAll(workers).GetAwaiter().GetResult();
        return new EngineLoadRun(count, tokens, clock.Elapsed.TotalSeconds);
    }

    /// <summary>The 1, 5 and 15 minute load averages (Linux; "n/a" elsewhere).</summary>
    private static string LoadAverage()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";
        }
        catch (IOException)
        {
            return "n/a";
        }
    }
}
