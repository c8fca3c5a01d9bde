// Shared pieces of the device adapter tests (DeviceDoraTests, DeviceIa3Tests,
// DeviceMultiAdapterTests) beside the fixtures in tests/Shared/TinyLlama.cs (one-layer tiny
// Llamas with randomized adapters, a loss + gradients run): a two-step
// Trainer run on a given device, and the CPU-vs-device comparisons with their tolerances.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

internal static class DeviceAdapterTestUtil
{
    /// <summary>
    /// As DeviceTrainingTests: fp32 on both sides in another summation order, 1e-4 relative (plus 1e-4 of the tensor's
    /// largest entry for entries that nearly cancel); at least <paramref name="atLeast"/> gradients are non-zero.
    /// </summary>
    public static void AssertSameGradients((float Loss, float[][] Grads) cpu, (float Loss, float[][] Grads) device, int atLeast, string what)
    {
        Assert.Equal(cpu.Loss, device.Loss, 1e-4 * Math.Abs(cpu.Loss));
        Assert.Equal(cpu.Grads.Length, device.Grads.Length);
        Assert.True(cpu.Grads.Count(g => g.Any(v => v != 0)) >= atLeast, $"{what}: at least {atLeast} gradients are non-zero");
        for (int i = 0; i < cpu.Grads.Length; i++)
        {
            double scale = cpu.Grads[i].Length == 0 ? 0 : cpu.Grads[i].Max(MathF.Abs);
            TestUtil.AssertClose(device.Grads[i], cpu.Grads[i], 1e-4 * scale, 1e-4, $"{what} gradient {i}");
        }
    }

    /// <summary>Two Trainer steps (clipping, AdamW on the host) from the same start on the CPU and on <paramref name="device"/>.</summary>
    public static void AssertSameTraining(Func<LlamaForCausalLM> create, Device device, string what)
    {
        static (IReadOnlyList<double> Losses, float[][] Values) Train(LlamaForCausalLM model, Device on)
        {
            model.To(on);
            var trainer = new Trainer(model, _ => (Testing.TinyLlama.Inputs, Testing.TinyLlama.Labels), 1, new TrainerOptions { Steps = 2, LearningRate = 1e-2, MaxGradNorm = 0.5 });
            trainer.Run();
            var values = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
            model.To(Device.Cpu);
            return (trainer.Losses, values);
        }

        var initial = create().NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (float[])p.Parameter.Data.Clone()).ToArray();
        var cpu = Train(create(), Device.Cpu);
        var other = Train(create(), device);

        // As DeviceTrainingTests: losses 1e-4 relative; AdamW moves entries by about ±lr per step, so a 1e-4 relative
        // gradient difference moves them by ≲ 1e-6 over 2 steps at lr 1e-2; 1e-5 leaves room for the clipping norm.
        for (int s = 0; s < 2; s++)
        {
            Assert.Equal(cpu.Losses[s], other.Losses[s], 1e-4 * Math.Abs(cpu.Losses[s]));
        }

        Assert.True(cpu.Losses[1] < cpu.Losses[0], $"{what}: a step lowers the loss on its own batch");
        for (int i = 0; i < cpu.Values.Length; i++)
        {
            Assert.Contains(cpu.Values[i].Zip(initial[i]), p => p.First != p.Second);
            TestUtil.AssertClose(other.Values[i], cpu.Values[i], 1e-5, 1e-4, $"{what} parameter {i} after 2 steps");
        }
    }
}
