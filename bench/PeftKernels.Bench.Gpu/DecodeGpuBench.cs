// Greedy generation of the ~125M Llama on the GPU device at batch 1: a 32-token prompt, then 128
// new tokens, through LlamaForCausalLM.Generate with the KV cache on the device (only the last
// logits row comes back per token). Base weights fp32, or NF4 (double-quantized, block 64) for
// every Linear but lm_head; embeddings and head stay fp32. Per storage: a warm-up generation (the
// kernels compile), then the median of N timed generations and of N timed prefills (the prompt
// into an empty cache); decode time = generation − prefill, for the 127 single-token steps.
//   tokens/s   = 128 / generation time (prefill included) and 127 / decode time
//   GFLOP/s    = 2 × (base parameters) × (32 + 127 positions) / generation time
//   GB/s       = bytes of the weights every decode step reads (Linears + lm_head) × 127 / decode time
// Target: none set (issue 6 asks for the tokens/s figures, fp32 and NF4).
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
    private const int Prompt = 32;
    private const int NewTokens = 128;

    /// <summary>Times greedy generation and prefill, for an fp32 base and for an NF4 base.</summary>
    /// <param name="acc">The accelerator the model runs on.</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed generations per storage (at least 3).</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs)
    {
        foreach (bool nf4 in new[] { false, true })
        {
            Run(acc, report, runs, nf4);
        }
    }

    private static void Run(Accelerator acc, IBenchReport report, int runs, bool nf4)
    {
        var config = LlamaConfig.Llama125M();
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
            int[] prompt = [.. Enumerable.Range(0, Prompt).Select(_ => rng.Next(config.VocabSize))];
            var tokens = model.Generate(prompt, NewTokens);
            var generate = new double[Math.Max(3, runs)];
            var prefill = new double[generate.Length];
            var clock = new Stopwatch();
            for (int s = 0; s < generate.Length; s++)
            {
                clock.Restart();
                var again = model.Generate(prompt, NewTokens);
                generate[s] = clock.Elapsed.TotalMilliseconds;
                if (!again.SequenceEqual(tokens))
                {
                    throw new InvalidOperationException($"greedy generation is not deterministic: run {s} differs from the warm-up run.");
                }

                using var scope = Tape.NoGrad();
                using var cache = model.CreateCache(Prompt);
                clock.Restart();
                model.Forward(prompt, 1, cache);
                acc.Synchronize();
                prefill[s] = clock.Elapsed.TotalMilliseconds;
            }

            double total = GpuBenchTiming.Median(generate), first = GpuBenchTiming.Median(prefill), decode = Math.Max(total - first, 1e-3);
            int steps = NewTokens - 1;
            var inv = CultureInfo.InvariantCulture;
            report.Add(new BenchResult($"greedy generation, ~125M Llama ({(nf4 ? "NF4" : "fp32")} base, KV cache on the device)",
                $"batch 1, prompt {Prompt} + {NewTokens} new tokens", total,
                2.0 * config.ParameterCount() * (Prompt + steps) / total / 1e6,
                (double)weightBytes * steps / decode / 1e6,
                string.Create(inv, $"{NewTokens / (total / 1000):F0} tokens/s end to end; decode {steps / (decode / 1000):F0} tokens/s ({decode / steps:F2} ms/token), ") +
                string.Create(inv, $"prefill {first:F1} ms; weights read per token {weightBytes / 1e6:F0} MB (median of {generate.Length} runs after a warm-up)")));
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }
}
