using PeftKernels.Kernels.Gpu;
using PeftKernels.Models;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// What a device step costs besides arithmetic, counted on the ILGPU CPU accelerator (issue 20): after warm-up, a LoRA,
/// QLoRA or DoRA training step and a decode step take every device buffer from the pool (zero misses), and the host waits
/// for the device at most twice per training step (the loss, the gradient norm) and once per decode step (the logits row).
/// The counters are per accelerator and the Gpu collection runs one class at a time.
/// </summary>
[Collection("Gpu")]
public class DeviceCountingTests(GpuFixture gpu)
{
    private const int WarmupSteps = 2; // the first step also rents the optimizer moments, which can take blocks the second step's activations then miss
    private const int CountedSteps = 2;

    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    public static TheoryData<string> Methods => ["lora", "qlora", "dora"];

    [Theory]
    [MemberData(nameof(Methods))]
    public void TrainingStepsTakeEveryBufferFromThePoolAndWaitAtMostTwice(string method)
    {
        var model = method switch
        {
            "lora" => Lora(quantized: false),
            "qlora" => Lora(quantized: true),
            _ => Testing.TinyLlama.Dora(quantized: false),
        };
        model.To(Accel);
        var trainer = new Trainer(model, _ => (Testing.TinyLlama.Inputs, Testing.TinyLlama.Labels), 1,
            new TrainerOptions { Steps = WarmupSteps + CountedSteps, LearningRate = 1e-2, MaxGradNorm = 0.5 });
        trainer.Run(untilStep: WarmupSteps);
        for (int step = WarmupSteps; step < WarmupSteps + CountedSteps; step++)
        {
            var (misses, waits, hits) = Count(() => trainer.Run(untilStep: step + 1));
            Assert.True(misses == 0, $"{method} training step {step + 1}: {misses} pool misses after warm-up");
            Assert.True(waits <= 2, $"{method} training step {step + 1}: {waits} host waits (at most 2: the loss and the gradient norm)");
            Assert.True(hits > 20, $"{method} training step {step + 1}: only {hits} pooled buffers (the step must run on the device)");
        }

        Assert.All(trainer.Losses, l => Assert.True(double.IsFinite(l)));
        model.To(Device.Cpu);
    }

    [Fact]
    public void DecodeStepsTakeEveryBufferFromThePoolAndWaitOnce()
    {
        // fp32 base (the 4-bit base's buffers are the same ops' and are counted by the QLoRA training step; its GEMV
        // is minutes on the simulated accelerator).
        var model = Lora(quantized: false);
        model.To(Accel);
        using var noGrad = Autograd.Tape.NoGrad();
        using var cache = model.CreateCache(64);
        var row = new float[model.Config.VocabSize];
        int token;
        using (DeviceScope.Begin())
        {
            token = Step(model.Forward(Testing.TinyLlama.Inputs, 1, cache, null));
        }

        for (int step = 0; step < 2; step++)
        {
            using var warmup = DeviceScope.Begin();
            token = Step(model.Forward([token], 1, cache, null));
        }

        for (int step = 0; step < 5; step++)
        {
            int next = token;
            var (misses, waits, hits) = Count(() => next = Step(model.Forward([next], 1, cache, null)));
            Assert.True(misses == 0, $"decode step at position {cache.Length}: {misses} pool misses after warm-up");
            Assert.True(waits == 1, $"decode step at position {cache.Length}: {waits} host waits (one: the logits row)");
            Assert.True(hits > 10, $"decode step: only {hits} pooled buffers");
            token = next;
        }

        model.To(Device.Cpu);

        int Step(Tensor logits)
        {
            DeviceSync.Download(logits.View(logits.Device).SubView(logits.Count - row.Length, row.Length), row);
            return LlamaForCausalLM.ArgMax(row);
        }
    }

    [Fact]
    public void GenerationWaitsOncePerNewToken()
    {
        var model = Lora(quantized: false);
        model.To(Accel);
        var warm = model.Generate(Testing.TinyLlama.Inputs, 4);
        var (misses, waits, _) = Count(() => Assert.Equal(warm, model.Generate(Testing.TinyLlama.Inputs, 4)));
        Assert.Equal(4, waits);
        Assert.Equal(0, misses);
        model.To(Device.Cpu);
    }

    private static LlamaForCausalLM Lora(bool quantized)
    {
        var model = Testing.TinyLlama.Model();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        Peft.Lora.Apply(model, Testing.TinyLlama.Lora("all-linear"), seed: 2);
        Testing.TinyLlama.Randomize(model, "default", 5);
        return model;
    }

    /// <summary>Pool misses, host waits and pool hits while <paramref name="action"/> runs (each step in its own DeviceScope).</summary>
    private (long Misses, long Waits, long Hits) Count(Action action)
    {
        var pool = DeviceMemoryPool.Of(gpu.Accelerator);
        var before = pool.Stats;
        long waits = DeviceSync.Count(gpu.Accelerator);
        using (DeviceScope.Begin())
        {
            action();
        }

        var after = pool.Stats;
        return (after.Misses - before.Misses, DeviceSync.Count(gpu.Accelerator) - waits, after.Hits - before.Hits);
    }
}
