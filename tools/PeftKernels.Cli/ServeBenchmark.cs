// The scenarios of `peft bench serve` (BenchServeCommand) on one base (fp32 or NF4) at one thread count:
//   a) every sequence on one adapter (rank 32, the mean rank of the mixed set)
//   b) a few distinct adapters (8), row i on adapter i mod 8
//   c) one adapter per sequence (64: ranks cycling 8, 16, 32, 64, LoRA on every linear layer, random B)
//   d) the merged model (adapter (a) merged into the base weights; the engine runs no adapter)
//   e) adapter by adapter: the sequences of (c) grouped by adapter, one engine.Run per group, one after
//      another (PEFT's way: one active adapter per batch)
//   f) batch-1: one sequence alone on the adapter of (a)
// and the adapter latency: cold = engine.Adapters.Load of a folder not loaded yet through the first
// token of a request on it; warm = the same request again, the adapter resident.
// Each scenario is timed over its whole run (prefill included: generated tokens / wall time) and over
// its decode-only steps (steps whose rows all produced a token: no prompt chunk ran), from the
// engine's counters (EngineStats). TTFT is the median over the sequences of submit → first token.
using System.Diagnostics;
using PeftKernels.Engine;
using PeftKernels.Models;

namespace PeftKernels.Cli;

/// <summary>What `peft bench serve` measures with: sizes and the model's source.</summary>
/// <param name="ModelFolder">A model folder, or null for a random model (<paramref name="Tiny"/>: LlamaConfig.Tiny, else Llama125M).</param>
/// <param name="Tiny">Use the tiny config (tests).</param>
/// <param name="Sequences">Concurrent sequences.</param>
/// <param name="Prompt">Prompt tokens per sequence.</param>
/// <param name="Generate">Generated tokens per sequence.</param>
/// <param name="Adapters">Distinct adapters of scenario (c) (at most one per sequence).</param>
/// <param name="BatchTokens">The engine's token budget per step.</param>
internal sealed record ServeBenchSettings(string? ModelFolder, bool Tiny, int Sequences, int Prompt, int Generate, int Adapters, int BatchTokens)
{
    /// <summary>Storage of the engine's KV cache in every scenario (--kv-cache).</summary>
    public KvCacheType KvCache { get; init; }

    /// <summary>Decode rows over 4-bit weights take the integer GEMV in every scenario (--integer-decode).</summary>
    public bool IntegerDecode { get; init; }

    /// <summary>Precision of the matrix products in every scenario (--compute).</summary>
    public ComputePrecision Compute { get; init; }

    /// <summary>The model seed of the random model and of the prompts and adapters.</summary>
    public const int Seed = 1;

    /// <summary>Adapters of scenario (c): one per sequence at most.</summary>
    public int ManyAdapters => Math.Min(Adapters, Sequences);

    /// <summary>Adapters of scenario (b).</summary>
    public int FewAdapters => Math.Min(8, ManyAdapters);

    /// <summary>The adapter of scenarios (a), (d) and (f): the first of rank 32 (the mixed set's mean rank is about 30).</summary>
    public int OneAdapter => Math.Min(2, ManyAdapters - 1);
}

/// <summary>One scenario's measurement.</summary>
internal sealed record ServeScenario(string Key, string Name, int Sequences, int Adapters, long Tokens, double Seconds,
    long DecodeTokens, double DecodeSeconds, long DecodeSteps, double TtftMs)
{
    /// <summary>Generated tokens per second over the whole run, prefill included.</summary>
    public double TokensPerSecond => Tokens / Seconds;

    /// <summary>Generated tokens per second over the decode-only steps (NaN when none ran).</summary>
    public double DecodeTokensPerSecond => DecodeSteps == 0 ? double.NaN : DecodeTokens / DecodeSeconds;

    /// <summary>Milliseconds per decode-only step.</summary>
    public double MsPerDecodeStep => DecodeSteps == 0 ? double.NaN : DecodeSeconds * 1000 / DecodeSteps;
}

/// <summary>Cold and warm adapter latency (medians over a few adapters).</summary>
/// <param name="ColdMs">Load of a fresh adapter folder through the first generated token of a request on it.</param>
/// <param name="WarmMs">Submit through the first token of the same request, the adapter resident.</param>
/// <param name="LoadMs">engine.Adapters.Load alone.</param>
internal sealed record ServeLatency(double ColdMs, double WarmMs, double LoadMs);

/// <summary>Everything measured on one base at one thread count.</summary>
internal sealed record ServeRun(string Base, int Threads, double FmaPeakGflops, double DecodeFlopsPerToken,
    double AdapterLoadSeconds, IReadOnlyList<ServeScenario> Scenarios, ServeLatency Latency)
{
    /// <summary>The scenario of <paramref name="key"/> ("a" … "f").</summary>
    public ServeScenario this[string key] => Scenarios.First(s => s.Key == key);
}

/// <summary>Runs the scenarios of `peft bench serve` on a prepared model and adapter set.</summary>
internal static class ServeBenchmark
{
    /// <summary>Measures every scenario on <paramref name="model"/> (and <paramref name="merged"/> for (d)) at <paramref name="threads"/>.</summary>
    public static ServeRun Run(ServeBenchSettings settings, string baseName, LlamaForCausalLM model, LlamaForCausalLM merged,
        ServeAdapterSet adapters, int threads, double fmaPeak, TextWriter log)
    {
        var options = Options(settings, model.Config, threads);
        var prompts = Prompts(settings, model.Config.VocabSize);
        var scenarios = new List<ServeScenario>();
        double loadSeconds;
        ServeLatency latency;
        using (var engine = new InferenceEngine(model, options))
        {
            var load = Stopwatch.StartNew();
            for (int k = 0; k < settings.ManyAdapters; k++)
            {
                engine.Adapters.Load(ServeAdapterSet.Name(k), adapters.Folder(k));
            }

            loadSeconds = load.Elapsed.TotalSeconds;
            log.WriteLine($"  {baseName}, {threads} thread(s): {settings.ManyAdapters} adapters loaded in {loadSeconds:F1} s");
            WarmUp(engine, settings, prompts, k => ServeAdapterSet.Name(k));

            string one = ServeAdapterSet.Name(settings.OneAdapter);
            scenarios.Add(Measure("a", "one adapter", engine, Requests(settings, prompts, _ => one), 1, log));
            scenarios.Add(Measure("b", $"{settings.FewAdapters} adapters", engine,
                Requests(settings, prompts, i => ServeAdapterSet.Name(i % settings.FewAdapters)), settings.FewAdapters, log));
            var many = Requests(settings, prompts, i => ServeAdapterSet.Name(i % settings.ManyAdapters));
            scenarios.Add(Measure("c", $"{settings.ManyAdapters} adapters", engine, many, settings.ManyAdapters, log));
            scenarios.Add(AdapterByAdapter(engine, many, settings.ManyAdapters, log));
            scenarios.Add(Measure("f", "batch-1", engine, [Requests(settings, prompts, _ => one)[0]], 1, log));
            latency = Latency(engine, prompts[0], adapters, log);
        }

        using (var engine = new InferenceEngine(merged, options))
        {
            WarmUp(engine, settings, prompts, _ => null);
            scenarios.Insert(3, Measure("d", "merged model", engine, Requests(settings, prompts, _ => null), 0, log));
        }

        double flopsPerToken = DecodeFlopsPerToken(model.Config, settings.Prompt + (settings.Generate / 2.0));
        return new ServeRun(baseName, threads, fmaPeak, flopsPerToken, loadSeconds, scenarios, latency);
    }

    /// <summary>
    /// Base-model FLOPs of one decode token: 2 per weight of every linear layer and lm_head, plus attention over
    /// <paramref name="context"/> cached positions (q·k and p·v: 4·layers·heads·head_dim per position). Adapters are not counted.
    /// </summary>
    public static double DecodeFlopsPerToken(LlamaConfig c, double context)
    {
        double h = c.HiddenSize, q = (double)c.NumAttentionHeads * c.HeadDim, kv = (double)c.NumKeyValueHeads * c.HeadDim;
        double linear = c.NumHiddenLayers * ((2 * h * q) + (2 * h * kv) + (3 * h * c.IntermediateSize));
        double head = (double)c.VocabSize * h;
        return (2 * (linear + head)) + (4.0 * c.NumHiddenLayers * q * context);
    }

    private static EngineOptions Options(ServeBenchSettings s, LlamaConfig c, int threads)
    {
        const int block = 16;
        int length = s.Prompt + s.Generate;
        int perSequence = (length + block - 1) / block;

        // Every sequence holds its full length at once: no preemption in any scenario.
        return new EngineOptions
        {
            MaxRunningSequences = s.Sequences,
            MaxBatchTokens = s.BatchTokens,
            BlockSize = block,
            KvBlocks = (s.Sequences * perSequence) + 2,
            MaxSequenceLength = Math.Min(length, c.MaxPositionEmbeddings),
            Threads = threads,
            KvCache = s.KvCache,
            IntegerDecode = s.IntegerDecode,
            Compute = s.Compute,
        };
    }

    /// <summary>Distinct random prompts (no two share a KV block, so prefix sharing does not skip work).</summary>
    private static int[][] Prompts(ServeBenchSettings s, int vocab)
    {
        var rng = new Random(ServeBenchSettings.Seed);
        return [.. Enumerable.Range(0, s.Sequences).Select(_ => Enumerable.Range(0, s.Prompt).Select(_ => rng.Next(vocab)).ToArray())];
    }

    private static EngineRequest[] Requests(ServeBenchSettings s, int[][] prompts, Func<int, string?> adapterOf) =>
        [.. prompts.Select((p, i) => new EngineRequest(p, adapterOf(i), new SamplingParams(MaxTokens: s.Generate)))];

    /// <summary>Two short sequences on adapters and one on the base: compiles every path before the timings.</summary>
    private static void WarmUp(InferenceEngine engine, ServeBenchSettings s, int[][] prompts, Func<int, string?> adapterOf)
    {
        int n = Math.Min(2, s.Sequences);
        var requests = Enumerable.Range(0, n).Select(i => new EngineRequest(prompts[i], adapterOf(i), new SamplingParams(MaxTokens: 3)))
            .Append(new EngineRequest(prompts[0], null, new SamplingParams(MaxTokens: 2)));
        engine.Run(requests);
    }

    /// <summary>Runs <paramref name="requests"/> as one continuous batch, step by step, timing every step.</summary>
    private static ServeScenario Measure(string key, string name, InferenceEngine engine, IReadOnlyList<EngineRequest> requests, int adapters, TextWriter log)
    {
        var t = Time(engine, requests, Stopwatch.StartNew());
        var scenario = new ServeScenario(key, name, requests.Count, adapters, t.Tokens, t.Seconds, t.DecodeTokens, t.DecodeSeconds, t.DecodeSteps, Median(t.FirstTokenMs));
        log.WriteLine($"    {key}) {name}: {scenario.TokensPerSecond:F1} tokens/s");
        return scenario;
    }

    /// <summary>(e): one engine.Run-like batch per adapter, one after another; TTFT from the start of the first batch.</summary>
    private static ServeScenario AdapterByAdapter(InferenceEngine engine, EngineRequest[] requests, int adapters, TextWriter log)
    {
        var clock = Stopwatch.StartNew();
        long tokens = 0, decodeTokens = 0, decodeSteps = 0;
        double decodeSeconds = 0;
        var first = new List<double>();
        foreach (var group in requests.GroupBy(r => r.Adapter))
        {
            var t = Time(engine, [.. group], clock);
            tokens += t.Tokens;
            decodeTokens += t.DecodeTokens;
            decodeSeconds += t.DecodeSeconds;
            decodeSteps += t.DecodeSteps;
            first.AddRange(t.FirstTokenMs);
        }

        var scenario = new ServeScenario("e", "adapter by adapter", requests.Length, adapters, tokens, clock.Elapsed.TotalSeconds,
            decodeTokens, decodeSeconds, decodeSteps, Median([.. first]));
        log.WriteLine($"    e) adapter by adapter: {scenario.TokensPerSecond:F1} tokens/s");
        return scenario;
    }

    private sealed record Timing(long Tokens, double Seconds, long DecodeTokens, double DecodeSeconds, long DecodeSteps, double[] FirstTokenMs);

    /// <summary>Submits the requests and steps until idle; a step whose rows all produced tokens counts as decode-only.</summary>
    private static Timing Time(InferenceEngine engine, IReadOnlyList<EngineRequest> requests, Stopwatch clock)
    {
        if (!engine.IsIdle)
        {
            throw new InvalidOperationException("the engine must be idle before a scenario.");
        }

        var first = new double[requests.Count];
        Array.Fill(first, double.NaN);
        var start = clock.Elapsed;
        var sequences = new EngineSequence[requests.Count];
        for (int i = 0; i < requests.Count; i++)
        {
            int index = i;
            sequences[i] = engine.Submit(requests[i]);
            sequences[i].TokenGenerated = (_, _) =>
            {
                if (double.IsNaN(first[index]))
                {
                    first[index] = clock.Elapsed.TotalMilliseconds;
                }
            };
        }

        long tokens0 = engine.Stats.TokensGenerated, decodeTokens = 0, decodeSteps = 0;
        double decodeSeconds = 0;
        while (!engine.IsIdle)
        {
            long rows = engine.Stats.RowsComputed, generated = engine.Stats.TokensGenerated;
            var before = clock.Elapsed;
            engine.Step();
            double seconds = (clock.Elapsed - before).TotalSeconds;
            long newRows = engine.Stats.RowsComputed - rows, newTokens = engine.Stats.TokensGenerated - generated;
            if (newTokens > 0 && newRows == newTokens)
            {
                decodeTokens += newTokens;
                decodeSeconds += seconds;
                decodeSteps++;
            }
        }

        double elapsed = (clock.Elapsed - start).TotalSeconds;
        foreach (var s in sequences)
        {
            var r = s.Result!;
            if (r.Finish != FinishReason.Length || r.Tokens.Length != s.Sampling.MaxTokens)
            {
                throw new InvalidDataException($"sequence {r.Id} finished with {r.Finish} after {r.Tokens.Length} of {s.Sampling.MaxTokens} tokens{(r.Error is null ? "" : $": {r.Error}")}.");
            }
        }

        return new Timing(engine.Stats.TokensGenerated - tokens0, elapsed, decodeTokens, decodeSeconds, decodeSteps,
            [.. first.Select(f => f - start.TotalMilliseconds)]);
    }

    /// <summary>Cold and warm time to the first token, medians over the set's fresh adapters.</summary>
    private static ServeLatency Latency(InferenceEngine engine, int[] prompt, ServeAdapterSet adapters, TextWriter log)
    {
        var cold = new List<double>();
        var warm = new List<double>();
        var load = new List<double>();
        for (int k = 0; k < adapters.FreshCount; k++)
        {
            string name = $"fresh{k}-{Guid.NewGuid():N}";
            var request = new EngineRequest(prompt, name, new SamplingParams(MaxTokens: 1));
            var clock = Stopwatch.StartNew();
            engine.Adapters.Load(name, adapters.FreshFolder(k));
            load.Add(clock.Elapsed.TotalMilliseconds);
            Time(engine, [request], clock);
            cold.Add(clock.Elapsed.TotalMilliseconds);
            clock.Restart();
            Time(engine, [request], clock);
            warm.Add(clock.Elapsed.TotalMilliseconds);
        }

        var latency = new ServeLatency(Median([.. cold]), Median([.. warm]), Median([.. load]));
        log.WriteLine($"    adapter latency: cold {latency.ColdMs:F1} ms (load {latency.LoadMs:F1} ms), warm {latency.WarmMs:F1} ms");
        return latency;
    }

    private static double Median(double[] values)
    {
        if (values.Length == 0)
        {
            return double.NaN;
        }

        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
