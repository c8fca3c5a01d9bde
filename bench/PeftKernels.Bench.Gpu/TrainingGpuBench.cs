// The Llama LoRA and QLoRA training steps on the GPU device (issues 6 and 20): random weights (the
// ~125M config on a GPU), LoRA r = 16 on every Linear, the base fp32 (LoRA) or NF4 double-quantized
// (QLoRA; embeddings and lm_head fp32); batch 1 × TrainSeq tokens; forward, backward, clipping and
// AdamW through the library's Trainer with the model on the device. Two warm-up steps, then timed steps.
// Reported per step: median ms, tokens/s = TrainSeq / step time, model GFLOP/s counted as
// 4 × (base parameters) × tokens (the forward's 2 plus the input-gradient backward's 2; LoRA's own
// flops and the frozen weights' skipped gradients not counted, as the CPU benchmark does), MFU =
// that / the fp32 CUDA-core peak (GpuPeak), and the device counters of issue 20: host waits per step
// (target ≤ 2: the loss and the gradient norm) and device-pool misses over the timed steps (target 0).
using System.Diagnostics;
using System.Globalization;
using ILGPU.Runtime;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Training;

namespace PeftKernels.Bench.Gpu;

/// <summary>The training benchmark: LoRA and QLoRA training steps on the device.</summary>
public static class TrainingGpuBench
{
    /// <summary>Times LoRA and QLoRA training steps (after two warm-up steps) and reports the medians and counters.</summary>
    /// <param name="acc">The accelerator the model runs on.</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed steps (at least 3).</param>
    /// <param name="sizes">The model and tokens per step.</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes)
    {
        foreach (bool quantized in new[] { false, true })
        {
            Run(acc, report, runs, sizes, quantized);
        }
    }

    private static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes, bool quantized)
    {
        int seq = sizes.TrainSeq;
        var config = sizes.Model;
        var model = LlamaForCausalLM.Create(config, seed: 1);
        if (quantized)
        {
            model.QuantizeLinears();
        }

        Lora.Apply(model, new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = TargetModules.FromRegex(TargetModules.AllLinear) });
        var device = Device.FromAccelerator(acc);
        model.To(device);
        try
        {
            var rng = new Random(1);
            int[] tokens = [.. Enumerable.Range(0, seq + 1).Select(_ => rng.Next(config.VocabSize))];
            int steps = Math.Max(3, runs) + 2;
            var times = new List<double>();
            var clock = new Stopwatch();
            var trainer = new Trainer(model, _ => (tokens[..seq], tokens[1..]), 1, new TrainerOptions { Steps = steps, LearningRate = 1e-4 });
            trainer.Run(untilStep: 2); // warm-up: kernels load; the first step also rents the optimizer moments
            var pool = DeviceMemoryPool.Of(acc);
            long misses = pool.Stats.Misses, waits = device.Synchronizations;
            clock.Restart();
            trainer.Run(new ProgressCallback<TrainingProgress>(_ =>
            {
                times.Add(clock.Elapsed.TotalMilliseconds); // the step's own waits (loss, norm) end it: the optimizer update is queued
                clock.Restart();
            }));
            DeviceSync.Wait(acc);
            misses = pool.Stats.Misses - misses;
            double waitsPerStep = (double)(device.Synchronizations - waits - 1) / times.Count;
            double median = GpuBenchTiming.Median(times);
            double gflops = 4.0 * config.ParameterCount() * seq / median / 1e6;
            var inv = CultureInfo.InvariantCulture;
            string mfu = GpuPeak.Fp32Gflops(acc) is { } peak ? string.Create(inv, $"MFU {gflops / peak * 100:F1}% of the {peak / 1000:F1} TFLOP/s fp32 peak; ") : "MFU n/a (no CUDA peak); ";
            report.Add(new BenchResult($"{(quantized ? "QLoRA" : "LoRA")} training step, Llama {config.HiddenSize}×{config.NumHiddenLayers} (r16 all-linear, {(quantized ? "NF4" : "fp32")} base)",
                $"batch 1 × seq {seq}", median, gflops, null,
                string.Create(inv, $"{seq / (median / 1000):F0} tokens/s; {mfu}") +
                GpuBenchTiming.Ratio(waitsPerStep, "host waits per step", "≤ 2", waitsPerStep <= 2, percent: false) + "; " +
                string.Create(inv, $"pool misses over {times.Count} steps after warm-up: {misses} (target 0: {(misses == 0 ? "met" : "NOT met")}); median of {times.Count} steps")));
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }
}
