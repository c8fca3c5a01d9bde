// `peft bench serve`: the inference engine's multi-adapter throughput (issue 15, item 6). A random
// ~125M Llama (LlamaConfig.Llama125M, seed 1; --tiny: LlamaConfig.Tiny for tests) or --model DIR,
// on an fp32 base or an NF4 one (QuantizeLinears: every Linear but lm_head), runs 64 sequences of
// 128 prompt + 128 generated tokens (greedy) in the scenarios of ServeBenchmark: one adapter, 8 and
// 64 distinct adapters (ranks 8–64 mixed), the merged model, adapter by adapter, and batch-1; plus
// the cold and warm adapter latency. Prints a table per base and thread count with the ratios the
// issue's targets use, and with --json writes the same numbers, the machine and the options
// (atomically). Every option is checked before any model is built.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Cli;

internal static class BenchServeCommand
{
    /// <summary>The bases `--base` accepts.</summary>
    internal static readonly string[] Bases = ["fp32", "nf4"];

    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "A model folder (default: a random ~125M Llama, seed 1)." };
        var tiny = new Option<bool>("--tiny") { Description = "A random tiny Llama instead of the ~125M one (for tests)." };
        var quick = new Option<bool>("--quick") { Description = "Small defaults: 8 sequences of 16 prompt + 16 generated tokens." };
        var sequences = new Option<int>("--sequences") { Description = "Concurrent sequences (default 64; --quick 8)." };
        var prompt = new Option<int>("--prompt") { Description = "Prompt tokens per sequence (default 128; --quick 16)." };
        var generate = new Option<int>("--generate") { Description = "Generated tokens per sequence (default 128; --quick 16)." };
        var adapters = new Option<int>("--adapters") { Description = "Distinct adapters of the many-adapter scenario, at most one per sequence (default 64)." };
        var batchTokens = new Option<int>("--batch-tokens") { Description = "The engine's token budget per step (default 512; at least --sequences).", DefaultValueFactory = _ => 512 };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts to run, 0 = all processors (default: 1 and the processor count).", AllowMultipleArgumentsPerToken = true };
        var bases = new Option<string[]>("--base") { Description = "Bases to run: fp32, nf4 (NF4 Linears, lm_head as is), or both (default fp32).", AllowMultipleArgumentsPerToken = true };
        var kvCache = KvCacheOption.Create("Storage of the engine's KV cache in every scenario: fp32 (exact) or bf16 (half the bytes attention reads).");
        var integerDecode = new Option<bool>("--integer-decode") { Description = "Decode rows over 4-bit weights take the integer GEMV (int8 activations) in every scenario." };
        var compute = ComputeOption.Create();
        var json = new Option<string?>("--json") { Description = "Also write the results, the machine and the options to this JSON file." };
        var overwrite = OutputPaths.OverwriteOption();
        var command = new Command("serve", "Benchmark the inference engine: 64 sequences with 1, 8 or 64 adapters against the merged model, adapter-by-adapter batches and batch-1 decode; adapter cold/warm latency.")
        {
            model, tiny, quick, sequences, prompt, generate, adapters, batchTokens, threads, bases, kvCache, integerDecode, compute, json, overwrite,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            bool q = parse.GetValue(quick);
            int Sized(Option<int> option, int full, int small)
            {
                int v = parse.GetResult(option) is null ? (q ? small : full) : parse.GetValue(option);
                Require(v >= 1, option, ">= 1", v);
                return v;
            }

            var settings = new ServeBenchSettings(parse.GetValue(model), parse.GetValue(tiny), Sized(sequences, 64, 8), Sized(prompt, 128, 16),
                Sized(generate, 128, 16), Sized(adapters, 64, 64), parse.GetValue(batchTokens))
            {
                KvCache = parse.KvCache(kvCache),
                IntegerDecode = parse.GetValue(integerDecode),
                Compute = parse.GetValue(compute) == "bf16" ? ComputePrecision.Bf16 : ComputePrecision.Fp32,
            };
            Require(settings.BatchTokens >= settings.Sequences, batchTokens, $">= --sequences ({settings.Sequences}): every running sequence decodes one token per step", settings.BatchTokens);
            var baseNames = parse.GetValue(bases) is { Length: > 0 } given ? given.Distinct().ToArray() : ["fp32"];
            foreach (string b in baseNames)
            {
                if (!Bases.Contains(b))
                {
                    throw new ArgumentException($"--base must be {string.Join(" or ", Bases)}; got '{b}'.");
                }
            }

            int[] threadCounts = BenchCommand.ThreadCounts(parse.Threads(threads));
            if (settings.ModelFolder != null && settings.Tiny)
            {
                throw new ArgumentException("--tiny and --model exclude each other: --tiny builds a random tiny model instead of loading one.");
            }

            var config = ConfigOf(settings);
            if (settings.Prompt + settings.Generate > config.MaxPositionEmbeddings)
            {
                throw new ArgumentException($"--prompt + --generate must be <= the model's max_position_embeddings ({config.MaxPositionEmbeddings}); got {settings.Prompt} + {settings.Generate}.");
            }

            string? jsonPath = parse.GetValue(json) is { } path
                ? OutputPaths.Check("--json", path, OutputKind.File, parse.GetValue(overwrite), ("--model", settings.ModelFolder))
                : null;
            var report = Run(settings, baseNames, threadCounts, quickProbe: q || settings.Tiny, log);
            if (jsonPath != null)
            {
                ServeBenchReport.WriteJson(jsonPath, report);
                log.WriteLine($"wrote {jsonPath}");
            }

            return 0;
        }));
        return command;
    }

    private static void Require(bool ok, Option option, string expected, int actual)
    {
        if (!ok)
        {
            throw new ArgumentException($"{option.Name} must be {expected}; got {actual.ToString(CultureInfo.InvariantCulture)}.");
        }
    }

    private static LlamaConfig ConfigOf(ServeBenchSettings s) =>
        s.ModelFolder != null ? LlamaConfig.Load(Path.Combine(s.ModelFolder, "config.json"))
        : s.Tiny ? LlamaConfig.Tiny(256)
        : LlamaConfig.Llama125M();

    private static LlamaForCausalLM BuildModel(ServeBenchSettings s) =>
        s.ModelFolder != null ? LlamaForCausalLM.Load(s.ModelFolder) : LlamaForCausalLM.Create(ConfigOf(s), ServeBenchSettings.Seed);

    /// <summary>Every base at every thread count; the FMA peak is measured once per thread count.</summary>
    private static ServeBenchReport Run(ServeBenchSettings settings, string[] baseNames, int[] threadCounts, bool quickProbe, TextWriter log)
    {
        var machine = ServeMachine.Probe(threadCounts, quickProbe);
        log.WriteLine($"CPU: {machine.Cpu}, processors: {machine.Processors}, SIMD path: {machine.SimdPath}; FMA peak " +
            string.Join(", ", machine.FmaPeakGflops.Select(p => $"{p.Value:F1} GFLOP/s at {p.Key} thread(s)")));
        var model = BuildModel(settings);
        log.WriteLine($"model: {(settings.ModelFolder ?? (settings.Tiny ? "random tiny Llama" : "random ~125M Llama"))}, {model.Config.ParameterCount() / 1e6:F1}M parameters; " +
            $"{settings.Sequences} sequences × ({settings.Prompt} prompt + {settings.Generate} generated tokens)");
        var runs = new List<ServeRun>();
        using var adapters = ServeAdapterSet.Create(model, settings.ManyAdapters, fresh: 3, ServeBenchSettings.Seed);

        // fp32 first: NF4 quantizes the same model in place afterwards.
        foreach (string baseName in baseNames.OrderBy(b => b == "nf4"))
        {
            if (baseName == "nf4")
            {
                model.QuantizeLinears();
            }

            var merged = Merged(settings, adapters.Folder(settings.OneAdapter), baseName);
            foreach (int t in threadCounts)
            {
                var run = ServeBenchmark.Run(settings, baseName, model, merged, adapters, t, machine.FmaPeakGflops[t], log);
                runs.Add(run);
                ServeBenchReport.PrintTable(run, settings, log);
            }
        }

        return new ServeBenchReport(machine, settings, [.. runs]);
    }

    /// <summary>A fresh copy of the base with the adapter of (a) merged in (then quantized for NF4, as a merged QLoRA model is re-quantized).</summary>
    private static LlamaForCausalLM Merged(ServeBenchSettings settings, string adapterFolder, string baseName)
    {
        var model = BuildModel(settings);
        var peft = new PeftModel(model);
        peft.LoadAdapter(adapterFolder);
        peft.MergeAndUnload();
        if (baseName == "nf4")
        {
            model.QuantizeLinears();
        }

        return model;
    }
}
