// The ~125M Llama LoRA training step on the GPU device (issue 6): random weights, LoRA r = 16 on
// every Linear except lm_head, batch 1 × seq 256; forward, backward, clipping and AdamW through
// the library's Trainer with the model on the CUDA device. Reports tokens/s and model GFLOP/s
// counted as 4 × (base parameters) × tokens, as the CPU benchmark does. Units: median ms per step,
// GFLOP/s, tokens/s = 256 / step time. Target: none set (issue 6 asks for the figures).
using System.Diagnostics;
using ILGPU.Runtime;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;

namespace PeftKernels.Bench.Gpu;

/// <summary>The training benchmark: one LoRA training step of the ~125M Llama on the device.</summary>
public static class TrainingGpuBench
{
    /// <summary>Times LoRA training steps (after a warm-up step) and reports the median.</summary>
    /// <param name="acc">The accelerator the model runs on.</param>
    /// <param name="report">Where the row goes.</param>
    /// <param name="runs">Timed steps (at least 3).</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs)
    {
        const int seq = 256;
        var config = LlamaConfig.Llama125M();
        var model = LlamaForCausalLM.Create(config, seed: 1);
        Lora.Apply(model, new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        model.To(Device.FromAccelerator(acc));
        var rng = new Random(1);
        int[] tokens = [.. Enumerable.Range(0, seq + 1).Select(_ => rng.Next(config.VocabSize))];
        int steps = Math.Max(3, runs) + 1;
        var times = new List<double>();
        var clock = new Stopwatch();
        var trainer = new Trainer(model, _ => (tokens[..seq], tokens[1..]), 1, new TrainerOptions { Steps = steps, LearningRate = 1e-4 });
        trainer.Run(new ProgressCallback<TrainingProgress>(_ =>
        {
            acc.Synchronize();
            times.Add(clock.Elapsed.TotalMilliseconds);
            clock.Restart();
        }), untilStep: 1);
        clock.Restart();
        times.Clear();
        trainer.Run(new ProgressCallback<TrainingProgress>(_ =>
        {
            acc.Synchronize();
            times.Add(clock.Elapsed.TotalMilliseconds);
            clock.Restart();
        }));
        times.Sort();
        double median = times[times.Count / 2];
        double flops = 4.0 * config.ParameterCount() * seq;
        report.Add(new BenchResult("LoRA training step, ~125M Llama (r16 all-linear, fp32 base)", $"batch 1 × seq {seq}", median, flops / median / 1e6, null,
            $"{seq / (median / 1000):F0} tokens/s (median of {times.Count} steps after a warm-up step; losses {string.Join(" ", trainer.Losses.Select(l => l.ToString("F3", System.Globalization.CultureInfo.InvariantCulture)))})"));
    }
}
