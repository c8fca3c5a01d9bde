// The round-2 PEFT methods on a device (the shared ILGPU accelerator standing in for CUDA) against the CPU device, on the
// one-layer tiny Llama: prompt tuning, P-tuning, prefix tuning (with and without the projection), a bottleneck adapter
// (attention and output sites, learned scaling), AdapterFusion over two frozen adapters (its regularization in the loss),
// a per-row bottleneck switch (rows gathered and scattered), X-LoRA (a two-layer classifier with dropout, a top-1
// gate) and MixLoRA (top-2 routing, the load-balancing loss). For each: one training step's loss and every trainable
// parameter's gradient on the device equal the CPU's within fp32 reassociation, and greedy generation (cached decode)
// gives the same tokens.
using PeftKernels.Models;
using PeftKernels.Nn;
using PeftKernels.Peft;
using PeftKernels.Peft.Bottleneck;
using PeftKernels.Peft.XLora;
using PeftKernels.Testing;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class DeviceRound2MethodsTests(GpuFixture gpu)
{
    private static readonly int[] Prompt = [1, 7, 3];

    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>Loss and trainable gradients on <paramref name="device"/> (fresh gradients; the model ends on the CPU).</summary>
    private static (float Loss, float[][] Grads) LossAndGrads(LlamaForCausalLM model, Device device, int batch, ForwardContext? context)
    {
        model.ZeroGrad();
        model.To(device);
        try
        {
            var loss = model.Loss(TinyLlama.Inputs, TinyLlama.Labels, batch, context);
            float value = loss.Item();
            loss.Backward();
            return (value, [.. model.NamedParameters().Where(p => p.Parameter.Trainable).Select(p => (float[])(p.Parameter.Grad ?? []).Clone())]);
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }

    private static int[] Greedy(LlamaForCausalLM model, Device device)
    {
        model.To(device);
        try
        {
            return model.Generate(Prompt, 2);
        }
        finally
        {
            model.To(Device.Cpu);
        }
    }

    /// <summary>
    /// The step on both devices (in training mode: dropout and the auxiliary losses on), then generation in eval mode. fp32 on
    /// both sides, sums in another order through one layer: 1e-4 relative for the loss, 1e-4 of the largest gradient.
    /// </summary>
    private void AssertSameOnDevice(LlamaForCausalLM model, string what, int batch = 1, ForwardContext? context = null)
    {
        model.Train(true);
        var cpu = LossAndGrads(model, Device.Cpu, batch, context);
        var dev = LossAndGrads(model, Accel, batch, context);
        Assert.True(Math.Abs(cpu.Loss - dev.Loss) <= 1e-4 * Math.Abs(cpu.Loss), $"{what}: loss {dev.Loss} on the device, {cpu.Loss} on the CPU");
        Assert.Equal(cpu.Grads.Length, dev.Grads.Length);
        Assert.NotEmpty(cpu.Grads);
        double scale = cpu.Grads.Max(g => g.Length == 0 ? 0 : g.Max(MathF.Abs));
        Assert.True(scale > 0, $"{what}: the trainable parameters got no gradient");
        for (int i = 0; i < cpu.Grads.Length; i++)
        {
            TestUtil.AssertClose(dev.Grads[i], cpu.Grads[i], 1e-4 * scale, 1e-3, $"{what}: gradient {i}");
        }

        model.Train(false);
        if (context == null)
        {
            Assert.Equal(Greedy(model, Device.Cpu), Greedy(model, Accel));
        }
    }

    /// <summary>Random values in the trainable parameters (a fresh adapter starts at an identity or at zero gradients for some).</summary>
    private static void Randomize(LlamaForCausalLM model, int seed, float range)
    {
        foreach (var (_, p) in model.NamedParameters().Where(p => p.Parameter.Trainable))
        {
            TestUtil.Random(p.Data.Length, seed++, range).CopyTo(p.Data, 0);
        }
    }

    [Theory]
    [InlineData("prompt", false)]
    [InlineData("p-tuning", false)]
    [InlineData("prefix", false)]
    [InlineData("prefix", true)]
    public void PromptLearningTrainsAndGeneratesOnTheDevice(string method, bool projection)
    {
        var model = TinyLlama.OneLayer();
        var config = method switch
        {
            "prompt" => new PromptLearningConfig(PromptLearningConfig.PromptTuningType) { NumVirtualTokens = 3 },
            "p-tuning" => new PromptLearningConfig(PromptLearningConfig.PTuningType) { NumVirtualTokens = 2, EncoderHiddenSize = 5 },
            _ => new PromptLearningConfig(PromptLearningConfig.PrefixTuningType) { NumVirtualTokens = 2, PrefixProjection = projection, EncoderHiddenSize = 5 },
        };
        PromptLearningAdapter.Attach(model, config, seed: 4);
        Randomize(model, 10, 0.5f);
        AssertSameOnDevice(model, $"{method}{(projection ? " with projection" : "")}", batch: 2);
    }

    [Fact]
    public void BottleneckAdapterTrainsAndGeneratesOnTheDevice()
    {
        var model = TinyLlama.OneLayer();
        BottleneckAdapters.Attach(model, BottleneckConfig.Houlsby() with { ReductionFactor = 8, NonLinearity = "swish", ScalingKind = BottleneckScalingKind.Learned }, seed: 2);
        Randomize(model, 20, 0.2f);
        AssertSameOnDevice(model, "bottleneck");
    }

    [Fact]
    public void AdapterFusionTrainsOnTheDeviceAndAPerRowSwitchGathersRows()
    {
        var model = TinyLlama.OneLayer();
        var set = BottleneckAdapters.Of(model);
        set.Add("a", BottleneckConfig.Houlsby() with { ReductionFactor = 8 }, seed: 1, trainable: false);
        set.Add("b", BottleneckConfig.Pfeiffer() with { ReductionFactor = 8, ScalingKind = BottleneckScalingKind.Constant, Scaling = 0.5 }, seed: 2, trainable: false);
        BottleneckAdapterTests.Randomize(set, 50);
        var fuse = AdapterSetup.Fuse("a", "b");
        set.AddFusion(fuse, seed: 6);
        set.ActiveSetup = fuse;
        Randomize(model, 30, 0.1f);
        AssertSameOnDevice(model, "fusion");

        // Per row: sequence 0 runs adapter b alone, sequence 1 the base; Average exercises the constant Scale.
        set.RegisterSetup("avg", AdapterSetup.Average([3, 1], "a", "b"));
        AssertSameOnDevice(model, "per-row switch", batch: 2, context: new ForwardContext { AdapterNames = ["avg", ForwardContext.BaseAdapterName] });
    }

    [Fact]
    public void XLoraTrainsAndGeneratesOnTheDevice()
    {
        using var temp = new TempFolder();
        var model = XLoraTests.Base();
        var config = new XLoraConfig { XLoraDepth = 2, XLoraSize = 8, XLoraDropoutP = 0.2, TopKLora = 1, LayerwiseScalings = true };
        var xlora = XLoraModel.Attach(model, config, XLoraTests.SaveExperts(temp.Path), seed: 3);
        XLoraTests.RandomizeClassifier(xlora, 7);
        AssertSameOnDevice(model, "X-LoRA");
    }

    [Fact]
    public void MixLoraTrainsAndGeneratesOnTheDevice()
    {
        var (model, adapter) = MixLoraModelTests.Randomized(MixLoraModelTests.Config with { JitterNoise = 0.1 });
        AssertSameOnDevice(model, "MixLoRA");
        Assert.True(adapter.LastLoadBalancingLoss > 0, "the load-balancing loss was added on the device");
    }
}
