// The inference engine on the device with many adapters (issue 20): the Llama (~125M on a GPU) with
// Adapters LoRA adapters (r16, every Linear, B random so the branch is not trivially zero) loaded into
// the engine's registry (64 on a GPU); greedy decoding of NewTokens tokens after a Prompt-token prompt,
// (a) one sequence (batch 1, adapter 0) and (b) Sequences sequences submitted together, sequence i
// with adapter i mod Adapters, so every engine step is one segmented multi-adapter batch.
// Per case: a warm-up run (kernels compile, blocks and adapter weights reach the device), then the
// median of N timed runs of Engine.Run. Reported: tokens/s (generated tokens / run time, prefill
// included), the engine steps per run, host waits per step (target 1: the sampled rows' logits) and
// device-pool misses over the timed runs (target 0).
// Target: none set for the speed; issue 20 asks for the figures.
using System.Diagnostics;
using System.Globalization;
using ILGPU.Runtime;
using PeftKernels.Engine;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Models;
using PeftKernels.Peft;

namespace PeftKernels.Bench.Gpu;

/// <summary>The many-adapter decode benchmark: the inference engine on the device, batch 1 and a full batch of adapters.</summary>
public static class EngineGpuBench
{
    /// <summary>Times the engine on the device at batch 1 and at <see cref="GpuBenchSizes.Sequences"/> sequences.</summary>
    /// <param name="acc">The accelerator the model runs on.</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed runs per case (at least 3).</param>
    /// <param name="sizes">The model, prompt, new tokens, adapters and sequences.</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes)
    {
        string folder = Path.Combine(Path.GetTempPath(), $"peft-engine-bench-{Environment.ProcessId}");
        var model = LlamaForCausalLM.Create(sizes.Model, seed: 1);
        try
        {
            SaveAdapters(sizes, folder);
            var device = Device.FromAccelerator(acc);
            model.To(device);
            var options = new EngineOptions { MaxRunningSequences = sizes.Sequences, MaxSequenceLength = sizes.Prompt + sizes.NewTokens + 1, MaxBatchTokens = Math.Max(512, sizes.Sequences * sizes.Prompt) };
            using var engine = new InferenceEngine(model, options);
            for (int i = 0; i < sizes.Adapters; i++)
            {
                engine.Adapters.Load($"a{i}", Path.Combine(folder, $"a{i}"));
            }

            foreach (int sequences in new[] { 1, sizes.Sequences })
            {
                Time(engine, device, report, runs, sizes, sequences);
            }
        }
        finally
        {
            model.To(Device.Cpu);
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }

    private static void Time(InferenceEngine engine, Device device, IBenchReport report, int runs, GpuBenchSizes sizes, int sequences)
    {
        var rng = new Random(sequences);
        var requests = Enumerable.Range(0, sequences).Select(i => new EngineRequest(
            [.. Enumerable.Range(0, sizes.Prompt).Select(_ => rng.Next(sizes.Model.VocabSize))], $"a{i % sizes.Adapters}",
            new SamplingParams(MaxTokens: sizes.NewTokens))).ToList();
        var warm = engine.Run(requests);
        var pool = DeviceMemoryPool.Of(device.Accelerator);
        long misses = pool.Stats.Misses, waits = device.Synchronizations, steps = engine.Stats.Steps;
        var times = new double[Math.Max(3, runs)];
        var clock = new Stopwatch();
        for (int s = 0; s < times.Length; s++)
        {
            clock.Restart();
            var results = engine.Run(requests);
            times[s] = clock.Elapsed.TotalMilliseconds;
            for (int i = 0; i < results.Count; i++)
            {
                if (!results[i].Tokens.SequenceEqual(warm[i].Tokens))
                {
                    throw new InvalidOperationException($"engine decoding is not deterministic: sequence {i} of run {s} differs from the warm-up run.");
                }
            }
        }

        misses = pool.Stats.Misses - misses;
        steps = engine.Stats.Steps - steps;
        double waitsPerStep = (double)(device.Synchronizations - waits) / Math.Max(1, steps);
        double median = GpuBenchTiming.Median(times);
        long generated = warm.Sum(r => (long)r.Tokens.Length);
        var inv = CultureInfo.InvariantCulture;
        report.Add(new BenchResult(
            $"engine decode on the device, Llama {sizes.Model.HiddenSize}×{sizes.Model.NumHiddenLayers}, {sizes.Adapters} LoRA adapters loaded (r16 all-linear)",
            $"{sequences} sequence(s), {Math.Min(sequences, sizes.Adapters)} distinct adapter(s), prompt {sizes.Prompt} + {sizes.NewTokens} new tokens", median, null, null,
            string.Create(inv, $"{generated / (median / 1000):F0} tokens/s (prefill included); {steps / times.Length} engine steps per run; ") +
            GpuBenchTiming.Ratio(waitsPerStep, "host waits per step", "1", waitsPerStep <= 1, percent: false) +
            string.Create(inv, $"; pool misses after warm-up: {misses} (target 0: {(misses == 0 ? "met" : "NOT met")}); median of {times.Length} runs")));
    }

    /// <summary>Saves the adapters: one LoRA r16 on every Linear with a random B, copied under a0 … a{n−1}.</summary>
    private static void SaveAdapters(GpuBenchSizes sizes, string folder)
    {
        var donor = LlamaForCausalLM.Create(sizes.Model, seed: 1);
        var peft = new PeftModel(donor);
        peft.AddAdapter("a0", new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) }, seed: 3);
        int seed = 10;
        foreach (var (_, adapter) in Lora.Adapters(donor, "a0"))
        {
            var b = adapter.B.Data;
            var noise = GpuBenchTiming.Random(b.Length, seed++, 0.02f);
            noise.CopyTo(b, 0);
        }

        Directory.CreateDirectory(folder);
        peft.SaveAdapter(folder, "a0");
        for (int i = 1; i < sizes.Adapters; i++)
        {
            string to = Path.Combine(folder, $"a{i}");
            Directory.CreateDirectory(to);
            foreach (string file in Directory.GetFiles(Path.Combine(folder, "a0")))
            {
                File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
            }
        }
    }
}
