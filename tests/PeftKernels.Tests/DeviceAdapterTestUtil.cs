// Shared pieces of the device adapter tests (DeviceDoraTests, DeviceIa3Tests,
// DeviceMultiAdapterTests): one-layer tiny Llamas with randomized adapters of each method, a
// loss + gradients run and a two-step Trainer run on a given device, and the CPU-vs-device
// comparisons with their tolerances.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Training;
using Xunit;

namespace PeftKernels.Tests;

internal static class DeviceAdapterTestUtil
{
    public static readonly int[] Inputs = [1, 7, 3, 39, 12, 5];
    public static readonly int[] Labels = [7, 3, 39, 12, 5, 2];

    /// <summary>The tiny Llama (HeadDim 16) with one decoder layer: the simulated accelerator is slow.</summary>
    public static LlamaForCausalLM OneLayer() => LlamaModelTests.TinyModel(LlamaConfig.Tiny(40) with { HeadDim = 16, NumHiddenLayers = 1 });

    /// <summary>
    /// DoRA on q_proj and down_proj (r 4), B random and m = norm·(1 + U(−0.3, 0.3)) so that m / norm ≠ 1 (as PeftDoraTests);
    /// with <paramref name="withLora"/> also a plain LoRA adapter "b" on q_proj and v_proj (r 2), active beside it.
    /// </summary>
    public static LlamaForCausalLM Dora(bool quantized, bool withLora = false)
    {
        var model = OneLayer();
        if (quantized)
        {
            model.QuantizeLinears();
        }

        var peft = new PeftModel(model, PeftModelTests.Config("q_proj,down_proj", r: 4, alpha: 8) with { UseDora = true });
        PeftModelTests.Randomize(model, "default", 5);
        if (withLora)
        {
            peft.AddAdapter("b", PeftModelTests.Config("q_proj,v_proj", r: 2), seed: 7);
            PeftModelTests.Randomize(model, "b", 8);
            peft.SetAdapter("default", "b");
        }

        int seed = 11;
        foreach (var (module, a) in Lora.Adapters(model, "default"))
        {
            var linear = (Linear)model.NamedModules().First(m => m.Name == module).Module;
            var norms = linear.WeightNorms(a);
            var noise = TestUtil.Random(norms.Length, seed++, 0.3f);
            for (int o = 0; o < norms.Length; o++)
            {
                a.Magnitude!.Data[o] = norms[o] * (1 + noise[o]);
            }
        }

        return model;
    }

    /// <summary>IA³ on PEFT's Llama defaults (k_proj, v_proj: output scaling; down_proj: input scaling), l = 1 + U(−0.3, 0.3).</summary>
    public static LlamaForCausalLM Ia3()
    {
        var model = OneLayer();
        new PeftModel(model).AddAdapter("default", new Ia3Config());
        int seed = 3;
        foreach (var adapter in model.NamedModules().Select(m => m.Module).OfType<Linear>().SelectMany(l => l.Ia3Adapters))
        {
            var noise = TestUtil.Random(adapter.Features, seed++, 0.3f);
            for (int i = 0; i < noise.Length; i++)
            {
                adapter.L.Data[i] = 1 + noise[i];
            }
        }

        return model;
    }

    /// <summary>LoRA adapters "a" (q, v, down) and "b" (all linear layers, r 2), both randomized; "a" active.</summary>
    public static (LlamaForCausalLM Model, PeftModel Peft) TwoAdapters(double dropout = 0)
    {
        var model = OneLayer();
        var peft = new PeftModel(model, PeftModelTests.Config("q_proj,v_proj,down_proj") with { LoraDropout = dropout }, "a");
        peft.AddAdapter("b", PeftModelTests.Config("all-linear", r: 2) with { LoraDropout = dropout }, seed: 3);
        PeftModelTests.Randomize(model, "a", 4);
        PeftModelTests.Randomize(model, "b", 5);
        return (model, peft);
    }

    /// <summary>The loss on Inputs → Labels and the gradients of the trainable parameters (empty when one got none), computed on the device.</summary>
    public static (float Loss, float[][] Grads) LossAndGrads(LlamaForCausalLM model, Device device)
    {
        model.To(device);
        var loss = model.Loss(Inputs, Labels);
        float value = loss.Item();
        loss.Backward();
        var grads = model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => p.Parameter.Grad ?? []).ToArray();
        model.To(Device.Cpu);
        return (value, grads);
    }

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
            var trainer = new Trainer(model, _ => (Inputs, Labels), 1, new TrainerOptions { Steps = 2, LearningRate = 1e-2, MaxGradNorm = 0.5 });
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
