// DoRA on a device (the ILGPU CPU accelerator of the shared fixture, a one-layer tiny Llama)
// against the CPU device: the loss and the gradients of A, B and the magnitude over fp32 and
// 4-bit bases (the norm detached on both), with a plain LoRA adapter active beside it, and two
// Trainer steps.
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class DeviceDoraTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GradientsOnTheAcceleratorMatchTheCpu(bool quantized)
    {
        var cpu = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(quantized), Device.Cpu);
        var device = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(quantized), Accel);

        // q_proj and down_proj × (A, B, m): the magnitude gradients are among the 6.
        DeviceAdapterTestUtil.AssertSameGradients(cpu, device, 6, $"DoRA q{quantized}");
    }

    [Fact]
    public void DoraWithASecondActiveLoraAdapterMatchesTheCpu()
    {
        var cpu = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(false, withLora: true), Device.Cpu);
        var device = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(false, withLora: true), Accel);

        // DoRA fused, the LoRA branch added unscaled after it (as on the CPU): DoRA's 6 gradients and b's 4.
        DeviceAdapterTestUtil.AssertSameGradients(cpu, device, 10, "DoRA + LoRA");
    }

    [Fact]
    public void TrainerStepsOnTheAcceleratorMatchTheCpu() =>
        DeviceAdapterTestUtil.AssertSameTraining(() => Testing.TinyLlama.Dora(false), Accel, "DoRA");

    [CudaFact]
    public void GradientsOnCudaMatchTheCpu()
    {
        foreach (bool quantized in new[] { false, true })
        {
            var cpu = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(quantized), Device.Cpu);
            var cuda = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Dora(quantized), Device.Cuda());
            DeviceAdapterTestUtil.AssertSameGradients(cpu, cuda, 6, $"CUDA DoRA q{quantized}");
        }
    }
}
