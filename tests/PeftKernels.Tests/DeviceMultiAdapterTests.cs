// Several LoRA adapters on a device, against the same model on the CPU device (the ILGPU CPU
// accelerator of the shared fixture, a one-layer tiny Llama): two active adapters summed (logits, and
// gradients with dropout on: the branch masks must be the CPU's), and a per-row batch mixing
// adapter "a", adapter "b" and "__base__" rows.
using PeftKernels.Autograd;
using PeftKernels.Nn;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class DeviceMultiAdapterTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Fact]
    public void TwoActiveAdaptersAreSummedOnTheAccelerator()
    {
        var (model, peft) = Testing.TinyLlama.TwoAdapters();
        peft.SetAdapter("a", "b");
        float[] Logits(Device device)
        {
            model.To(device);
            using var scope = Tape.NoGrad();
            var logits = model.Forward(Testing.TinyLlama.Inputs).Data;
            model.To(Device.Cpu);
            return logits;
        }

        var cpu = Logits(Device.Cpu);
        var device = Logits(Accel);
        peft.SetAdapter("a");
        var onlyA = Logits(Device.Cpu);

        // fp32 through a layer of short dots, in another order: 1e-4 of the logit range (as LlamaModelTests).
        double range = cpu.Max(MathF.Abs);
        TestUtil.AssertClose(device, cpu, 1e-4 * range, 1e-4, "a + b logits");
        Assert.True(cpu.Zip(onlyA).Max(p => Math.Abs(p.First - p.Second)) > 1e-2 * range, "adapter b changes the logits");
    }

    [Fact]
    public void TwoActiveAdaptersWithDropoutTrainAsOnTheCpu() => AssertDropoutGradientsMatchTheCpu(Accel);

    [Fact]
    public void PerRowAdaptersMatchTheCpu() => AssertPerRowBatchMatchesTheCpu(Accel);

    [CudaFact]
    public void SeveralAdaptersOnCudaMatchTheCpu()
    {
        AssertDropoutGradientsMatchTheCpu(Device.Cuda());
        AssertPerRowBatchMatchesTheCpu(Device.Cuda());
    }

    private static void AssertDropoutGradientsMatchTheCpu(Device on)
    {
        (float Loss, float[][] Grads) Run(Device device)
        {
            var (model, peft) = Testing.TinyLlama.TwoAdapters(dropout: 0.25);
            peft.SetAdapter("a", "b");
            model.Train();
            return Testing.TinyLlama.LossAndGrads(model, device);
        }

        // The same masks on both devices (seeded by storage index), so the same tolerance as without dropout.
        DeviceAdapterTestUtil.AssertSameGradients(Run(Device.Cpu), Run(on), 20, "a + b with dropout"); // a: 3 layers, b: 7, × (A, B)
    }

    private static void AssertPerRowBatchMatchesTheCpu(Device on)
    {
        var (model, peft) = Testing.TinyLlama.TwoAdapters();
        string[] names = ["b", ForwardContext.BaseAdapterName, "a"];
        const int T = 4;
        int[] tokens = [.. Enumerable.Range(0, names.Length * T).Select(i => (i * 7) % 40)];
        float[] Logits(Device device)
        {
            model.To(device);
            using var scope = Tape.NoGrad();
            var logits = peft.Forward(tokens, names.Length, names).Data;
            model.To(Device.Cpu);
            return logits;
        }

        var cpu = Logits(Device.Cpu);
        var device = Logits(on);

        // As above: fp32 reassociation through the layer, 1e-4 of each sequence's logit range.
        int rowFloats = T * 40;
        for (int s = 0; s < names.Length; s++)
        {
            var expected = cpu.AsSpan(s * rowFloats, rowFloats);
            double range = expected.ToArray().Max(MathF.Abs);
            TestUtil.AssertClose(device.AsSpan(s * rowFloats, rowFloats), expected, 1e-4 * range, 1e-4, $"sequence {s} ({names[s]})");
        }

        Assert.NotEqual(cpu.AsSpan(0, rowFloats).ToArray(), cpu.AsSpan(2 * rowFloats, rowFloats).ToArray());
    }
}
