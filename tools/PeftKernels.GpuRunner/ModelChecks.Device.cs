// The device counters of issue 20 on the runner's accelerator: after two warm-up steps, a LoRA, QLoRA
// and DoRA training step on the tiny Llama takes every device buffer from the pool (zero misses) and
// waits for the device at most twice (the loss, the gradient norm); a decode step waits once (its
// logits row) and misses nothing. The same assertions as tests/DeviceCountingTests.cs, here on CUDA.
// A check row's MaxAbs is the worst count seen and Atol the allowed one.
using PeftKernels.Kernels.Gpu;
using PeftKernels.Models;
using PeftKernels.Peft;
using PeftKernels.Testing;
using PeftKernels.Training;

namespace PeftKernels.GpuRunner;

internal static partial class ModelChecks
{
    private static void CounterChecks(Device device, Report report)
    {
        foreach (var (name, create) in new (string, Func<LlamaForCausalLM>)[]
        {
            ("LoRA", () => WithLora(quantized: false)),
            ("QLoRA", () => WithLora(quantized: true)),
            ("DoRA", () => TinyLlama.Dora(quantized: false)),
        })
        {
            var model = create();
            model.To(device);
            try
            {
                var trainer = new Trainer(model, _ => (TinyLlama.Inputs, TinyLlama.Labels), 1, new TrainerOptions { Steps = 5, LearningRate = 1e-2, MaxGradNorm = 0.5 });
                trainer.Run(untilStep: 2);
                long worstWaits = 0, misses = 0;
                for (int step = 2; step < 5; step++)
                {
                    var (m, w) = Count(device, () => trainer.Run(untilStep: step + 1));
                    worstWaits = Math.Max(worstWaits, w);
                    misses += m;
                }

                report.Add(new CheckResult($"{name} training step: host waits", Tiny, worstWaits, 0, 2, 0, worstWaits <= 2, "worst of 3 steps after warm-up; at most 2 (loss, gradient norm)"));
                report.Add(new CheckResult($"{name} training step: pool misses", Tiny, misses, 0, 0, 0, misses == 0, "over 3 steps after warm-up"));
            }
            finally
            {
                model.To(Device.Cpu);
            }
        }

        var decoder = WithLora(quantized: false);
        decoder.To(device);
        try
        {
            var prompt = TinyLlama.Inputs;
            var warm = decoder.Generate(prompt, 8);
            var (misses, waits) = Count(device, () =>
            {
                if (!decoder.Generate(prompt, 8).SequenceEqual(warm))
                {
                    throw new InvalidOperationException("greedy generation on the device is not deterministic");
                }
            });
            report.Add(new CheckResult("decode: host waits per token", Tiny, waits / 8.0, 0, 1, 0, waits == 8, "8 new tokens after a warm-up generation; one wait each (the logits row)"));
            report.Add(new CheckResult("decode: pool misses", Tiny, misses, 0, 0, 0, misses == 0, "8 new tokens after a warm-up generation"));
        }
        finally
        {
            decoder.To(Device.Cpu);
        }
    }

    /// <summary>The tiny Llama, optionally NF4, with a randomized r4 LoRA on every Linear.</summary>
    private static LlamaForCausalLM WithLora(bool quantized)
    {
        var model = TinyLlama.Model();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        Lora.Apply(model, TinyLlama.Lora("all-linear"), seed: 2);
        TinyLlama.Randomize(model, "default", 5);
        return model;
    }

    private static (long Misses, long Waits) Count(Device device, Action action)
    {
        var pool = device.MemoryPool;
        long misses = pool.Stats.Misses, waits = device.Synchronizations;
        using (DeviceScope.Begin())
        {
            action();
        }

        return (pool.Stats.Misses - misses, device.Synchronizations - waits);
    }
}
