// The output of `peft bench serve`: per base and thread count a table (scenario, sequences, adapters,
// generated tokens/s over the whole run, its ratio to scenario (a), decode-only tokens/s, ms per decode
// step, median time to first token, decode GFLOP/s and its share of the FMA peak), the ratios the
// issue's targets use ((c)/(a) ≥ 0.8, (c)/(e) ≥ 5, (a)/(f) ≥ 6 on fp32), and the adapter latency;
// and the JSON file of the same numbers with the machine and the options (written atomically; a
// number that could not be measured, e.g. decode-only figures when no decode-only step ran, is null).
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using PeftKernels.Engine;
using PeftKernels.IO;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Cli;

/// <summary>The machine a serve benchmark ran on.</summary>
internal sealed record ServeMachine(string Cpu, int Processors, string SimdPath, IReadOnlyDictionary<int, double> FmaPeakGflops)
{
    /// <summary>Names the CPU and measures the FMA peak at each thread count.</summary>
    public static ServeMachine Probe(int[] threadCounts, bool quick) =>
        new(CpuName(), Environment.ProcessorCount, KernelOptions.Best.ToString(),
            threadCounts.Distinct().ToDictionary(t => t, t => MachineProbe.FmaPeakGflops(t, steps: quick ? 2_000_000 : 20_000_000)));

    /// <summary>The CPU's model name (/proc/cpuinfo on Linux), else the architecture.</summary>
    internal static string CpuName()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
            {
                var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
                if (line?.Split(':', 2) is [_, var name] && name.Trim().Length > 0)
                {
                    return name.Trim();
                }
            }
        }
        catch (IOException)
        {
            // Fall back to the architecture below.
        }

        return Environment.GetEnvironmentVariable("PROCESSOR_IDENTIFIER") ?? RuntimeInformation.ProcessArchitecture.ToString();
    }
}

/// <summary>Everything one `peft bench serve` measured.</summary>
internal sealed record ServeBenchReport(ServeMachine Machine, ServeBenchSettings Settings, IReadOnlyList<ServeRun> Runs)
{
    /// <summary>The scenario keys in table order.</summary>
    public static readonly string[] Keys = ["a", "b", "c", "d", "e", "f"];

    /// <summary>The issue's target ratios: name, numerator, denominator, target, whether it uses decode-only tokens/s.</summary>
    private static readonly (string Name, string Over, string Under, double Target, string Note)[] Targets =
    [
        ("(c)/(a)", "c", "a", 0.8, "many adapters vs one"),
        ("(c)/(e)", "c", "e", 5, "one batch vs adapter by adapter"),
        ("(a)/(f)", "a", "f", 6, "batched vs batch-1"),
        ("(d)/(a)", "d", "a", double.NaN, "merged model vs one adapter"),
    ];

    /// <summary>Decode GFLOP/s of a scenario (base-model FLOPs only) and its share of the FMA peak.</summary>
    public static (double Gflops, double Share) DecodeGflops(ServeRun run, ServeScenario s)
    {
        double gflops = s.DecodeTokensPerSecond * run.DecodeFlopsPerToken / 1e9;
        return (gflops, gflops / run.FmaPeakGflops);
    }

    /// <summary>Prints one run's table, target ratios and latency.</summary>
    public static void PrintTable(ServeRun run, ServeBenchSettings settings, TextWriter log)
    {
        log.WriteLine();
        log.WriteLine($"{run.Base} base, {run.Threads} thread(s), FMA peak {run.FmaPeakGflops:F1} GFLOP/s; {settings.Sequences} sequences × ({settings.Prompt} + {settings.Generate}) tokens; " +
            $"adapter ranks {string.Join("/", Enumerable.Range(0, Math.Min(4, settings.ManyAdapters)).Select(ServeAdapterSet.Rank))} cycling, (a) rank {ServeAdapterSet.Rank(settings.OneAdapter)}; " +
            $"KV cache {(settings.KvCache == KvCacheType.BFloat16 ? "bf16" : "fp32")}, compute {(settings.Compute == ComputePrecision.Bf16 ? "bf16" : "fp32")}{(settings.IntegerDecode ? ", integer decode" : "")}");
        log.WriteLine($"{"scenario",-24} {"seqs",5} {"adapters",8} {"tokens/s",10} {"×(a)",7} {"decode tok/s",12} {"ms/step",9} {"TTFT ms",9} {"GFLOP/s",8} {"% peak",7}");
        var a = run["a"];
        foreach (string key in Keys)
        {
            var s = run[key];
            var (gflops, share) = DecodeGflops(run, s);
            log.WriteLine($"{key + ") " + s.Name,-24} {s.Sequences,5} {(key == "d" ? "merged" : s.Adapters.ToString(CultureInfo.InvariantCulture)),8} {s.TokensPerSecond,10:F1} " +
                $"{s.TokensPerSecond / a.TokensPerSecond,6:F2}x {F(s.DecodeTokensPerSecond, 12, "F1")} {F(s.MsPerDecodeStep, 9, "F1")} {s.TtftMs,9:F0} {F(gflops, 8, "F1")} {F(share * 100, 6, "F1")}%");
        }

        foreach (var t in Targets)
        {
            double e2e = run[t.Over].TokensPerSecond / run[t.Under].TokensPerSecond;
            double decode = run[t.Over].DecodeTokensPerSecond / run[t.Under].DecodeTokensPerSecond;
            string target = double.IsNaN(t.Target) ? "" : $" (target >= {t.Target.ToString(CultureInfo.InvariantCulture)}{(t.Name == "(a)/(f)" && run.Base != "fp32" ? " on fp32" : "")}: " +
                $"{(e2e >= t.Target ? "met" : "not met")} end-to-end, {(decode >= t.Target ? "met" : "not met")} decode-only)";
            log.WriteLine($"{t.Name} = {e2e:F2}x end-to-end, {F(decode, 0, "F2")}x decode-only — {t.Note}{target}");
        }

        var (ga, sa) = DecodeGflops(run, a);
        var (gf, sf) = DecodeGflops(run, run["f"]);
        log.WriteLine($"decode compute: (a) {ga:F1} GFLOP/s = {sa:P1} of the FMA peak, batch-1 (f) {gf:F1} GFLOP/s = {sf:P1} ({run.DecodeFlopsPerToken / 1e6:G4} MFLOP per token, base model only)");
        log.WriteLine($"adapter latency to the first token: cold {run.Latency.ColdMs:F1} ms (of which engine.Adapters.Load {run.Latency.LoadMs:F1} ms), warm {run.Latency.WarmMs:F1} ms; " +
            $"{settings.ManyAdapters} adapters loaded in {run.AdapterLoadSeconds:F1} s");
    }

    private static string F(double v, int width, string format) =>
        (double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "-").PadLeft(width);

    /// <summary>Writes the report as JSON to <paramref name="path"/> (atomically).</summary>
    public static void WriteJson(string path, ServeBenchReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        AtomicFile.Write(path, stream =>
        {
            using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
            w.WriteStartObject();
            WriteMachine(w, report.Machine);
            WriteOptions(w, report.Settings, report.Runs);
            w.WriteStartArray("runs");
            foreach (var run in report.Runs)
            {
                WriteRun(w, run);
            }

            w.WriteEndArray();
            w.WriteEndObject();
        });
    }

    private static void WriteMachine(Utf8JsonWriter w, ServeMachine m)
    {
        w.WriteStartObject("machine");
        w.WriteString("cpu", m.Cpu);
        w.WriteNumber("processors", m.Processors);
        w.WriteString("simd_path", m.SimdPath);
        w.WriteString("os", RuntimeInformation.OSDescription);
        w.WriteString("runtime", RuntimeInformation.FrameworkDescription);
        w.WriteStartObject("fma_peak_gflops");
        foreach (var (threads, peak) in m.FmaPeakGflops)
        {
            Number(w, threads.ToString(CultureInfo.InvariantCulture), peak);
        }

        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteOptions(Utf8JsonWriter w, ServeBenchSettings s, IReadOnlyList<ServeRun> runs)
    {
        w.WriteStartObject("options");
        if (s.ModelFolder is null)
        {
            w.WriteNull("model");
        }
        else
        {
            w.WriteString("model", s.ModelFolder);
        }

        w.WriteBoolean("tiny", s.Tiny);
        w.WriteNumber("sequences", s.Sequences);
        w.WriteNumber("prompt", s.Prompt);
        w.WriteNumber("generate", s.Generate);
        w.WriteNumber("adapters_many", s.ManyAdapters);
        w.WriteNumber("adapters_few", s.FewAdapters);
        w.WriteNumber("one_adapter_rank", ServeAdapterSet.Rank(s.OneAdapter));
        w.WriteNumber("batch_tokens", s.BatchTokens);
        w.WriteString("kv_cache", s.KvCache == KvCacheType.BFloat16 ? "bf16" : "fp32");
        w.WriteBoolean("integer_decode", s.IntegerDecode);
        w.WriteString("compute", s.Compute == ComputePrecision.Bf16 ? "bf16" : "fp32");
        w.WriteNumber("seed", ServeBenchSettings.Seed);
        w.WriteStartArray("bases");
        foreach (string b in runs.Select(r => r.Base).Distinct())
        {
            w.WriteStringValue(b);
        }

        w.WriteEndArray();
        w.WriteStartArray("threads");
        foreach (int t in runs.Select(r => r.Threads).Distinct())
        {
            w.WriteNumberValue(t);
        }

        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteRun(Utf8JsonWriter w, ServeRun run)
    {
        w.WriteStartObject();
        w.WriteString("base", run.Base);
        w.WriteNumber("threads", run.Threads);
        Number(w, "fma_peak_gflops", run.FmaPeakGflops);
        Number(w, "decode_flops_per_token", run.DecodeFlopsPerToken);
        Number(w, "adapter_load_seconds", run.AdapterLoadSeconds);
        w.WriteStartArray("scenarios");
        foreach (string key in Keys)
        {
            var s = run[key];
            var (gflops, share) = DecodeGflops(run, s);
            w.WriteStartObject();
            w.WriteString("key", s.Key);
            w.WriteString("name", s.Name);
            w.WriteNumber("sequences", s.Sequences);
            w.WriteNumber("adapters", s.Adapters);
            w.WriteBoolean("merged", key == "d");
            w.WriteNumber("tokens", s.Tokens);
            Number(w, "seconds", s.Seconds);
            Number(w, "tokens_per_second", s.TokensPerSecond);
            Number(w, "ratio_to_a", s.TokensPerSecond / run["a"].TokensPerSecond);
            w.WriteNumber("decode_tokens", s.DecodeTokens);
            Number(w, "decode_seconds", s.DecodeSeconds);
            w.WriteNumber("decode_steps", s.DecodeSteps);
            Number(w, "decode_tokens_per_second", s.DecodeTokensPerSecond);
            Number(w, "ms_per_decode_step", s.MsPerDecodeStep);
            Number(w, "ttft_ms_median", s.TtftMs);
            Number(w, "decode_gflops", gflops);
            Number(w, "decode_share_of_fma_peak", share);
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteStartObject("ratios");
        foreach (var t in Targets)
        {
            string name = $"{t.Over}_over_{t.Under}";
            Number(w, name, run[t.Over].TokensPerSecond / run[t.Under].TokensPerSecond);
            Number(w, name + "_decode", run[t.Over].DecodeTokensPerSecond / run[t.Under].DecodeTokensPerSecond);
            if (!double.IsNaN(t.Target))
            {
                w.WriteNumber(name + "_target", t.Target);
            }
        }

        w.WriteEndObject();
        w.WriteStartObject("adapter_latency_ms");
        Number(w, "cold", run.Latency.ColdMs);
        Number(w, "warm", run.Latency.WarmMs);
        Number(w, "load", run.Latency.LoadMs);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void Number(Utf8JsonWriter w, string name, double value)
    {
        if (double.IsFinite(value))
        {
            w.WriteNumber(name, value);
        }
        else
        {
            w.WriteNull(name);
        }
    }
}
