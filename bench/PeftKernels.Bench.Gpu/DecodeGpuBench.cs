// Greedy generation of the Llama (~125M on a GPU) on the device at batch 1: a Prompt-token prompt, then
// NewTokens new tokens (32 and 128 on a GPU), through LlamaForCausalLM.Generate with the KV cache on the device (only the last
// logits row comes back per token). Base weights fp32, or NF4 (double-quantized, block 64) for
// every Linear but lm_head; embeddings and head stay fp32. Per storage: a warm-up generation (the
// kernels compile), then the median of N timed generations and of N timed prefills (the prompt
// into an empty cache); decode time = generation − prefill, for the 127 single-token steps.
//   tokens/s   = NewTokens / generation time (prefill included) and (NewTokens − 1) / decode time
//   GFLOP/s    = 2 × (base parameters) × (32 + 127 positions) / generation time
//   GB/s       = bytes of the weights every decode step reads (Linears + lm_head) × 127 / decode time
// Also the device counters of issue 20: host waits per generated token (target 1: the logits row) and
// device-pool misses over the timed generations (target 0).
// Target: none set for the speed (issue 6 asks for the tokens/s figures, fp32 and NF4).
using System.Diagnostics;
using System.Globalization;
using ILGPU.Runtime;
using PeftKernels.Autograd;
using PeftKernels.Models;
using PeftKernels.Nn;

namespace PeftKernels.Bench.Gpu;

/// <summary>The decode benchmark: greedy generation of the ~125M Llama with the KV cache on the device, fp32 and NF4 base.</summary>
public static class DecodeGpuBench
{
    /// <summary>Times greedy generation and prefill, for an fp32 base and for an NF4 base.</summary>
    /// <param name="acc">The accelerator the model runs on.</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed generations per storage (at least 3).</param>
    /// <param name="sizes">The model, prompt and new tokens.</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes)
    {
        foreach (bool nf4 in new[] { false, true })
        {
            Run(acc, report, runs, sizes, nf4);
        }
    }

    private static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes, bool nf4)
    {
        var (config, promptLength, newTokens) = (sizes.Model, sizes.Prompt, sizes.NewTokens);
        var model = LlamaForCausalLM.Create(config, seed: 1);
        if (nf4)
        {
            model.QuantizeLinears();
        }

        long weightBytes = model.NamedModules().Select(m => m.Module).OfType<Linear>().Sum(l => l.Weight.ByteSize);
        var device = Device.FromAccelerator(acc);
        model.To(device);
        try
        {
            var rng = new Random(1);
            int[] prompt = [.. Enumerable.Range(0, promptLength).Select(_ => rng.Next(config.VocabSize))];
            var tokens = model.Generate(prompt, newTokens);
            var generate = new double[Math.Max(3, runs)];
            var prefill = new double[generate.Length];
            var clock = new Stopwatch();
            var pool = PeftKernels.Kernels.Gpu.DeviceMemoryPool.Of(acc);
            long misses = pool.Stats.Misses, waits = 0;
            for (int s = 0; s < generate.Length; s++)
            {
                clock.Restart();
                long before = device.Synchronizations;
                var again = model.Generate(prompt, newTokens);
                generate[s] = clock.Elapsed.TotalMilliseconds;
                waits += device.Synchronizations - before;
                if (!again.SequenceEqual(tokens))
                {
                    throw new InvalidOperationException($"greedy generation is not deterministic: run {s} differs from the warm-up run.");
                }

                using var scope = Tape.NoGrad();
                using var cache = model.CreateCache(promptLength);
                clock.Restart();
                using (DeviceScope.Begin())
                {
                    model.Forward(prompt, 1, cache);
                    acc.Synchronize();
                }
                prefill[s] = clock.Elapsed.TotalMilliseconds;
            }

            misses = pool.Stats.Misses - misses;
            double waitsPerToken = (double)waits / (generate.Length * newTokens);
            double total = GpuBenchTiming.Median(generate), first = GpuBenchTiming.Median(prefill), decode = Math.Max(total - first, 1e-3);
            int steps = newTokens - 1;
            var inv = CultureInfo.InvariantCulture;
            report.Add(new BenchResult($"greedy generation, Llama {config.HiddenSize}×{config.NumHiddenLayers} ({(nf4 ? "NF4" : "fp32")} base, KV cache on the device)",
                $"batch 1, prompt {promptLength} + {newTokens} new tokens", total,
                2.0 * config.ParameterCount() * (promptLength + steps) / total / 1e6,
                (double)weightBytes * steps / decode / 1e6,
                string.Create(inv, $"{newTokens / (total / 1000):F0} tokens/s end to end; decode {steps / (decode / 1000):F0} tokens/s ({decode / steps:F2} ms/token), ") +
                string.Create(inv, $"prefill {first:F1} ms; weights read per token {weightBytes / 1e6:F0} MB (median of {generate.Length} runs after a warm-up); ") +
                GpuBenchTiming.Ratio(waitsPerToken, "host waits per token", "1", waitsPerToken <= 1, percent: false) +
                string.Create(inv, $"; pool misses after warm-up: {misses} (target 0: {(misses == 0 ? "met" : "NOT met")})")));
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }
}
