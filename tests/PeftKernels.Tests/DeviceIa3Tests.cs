// IA³ on a device (the ILGPU CPU accelerator of the shared fixture, a one-layer tiny Llama)
// against the CPU device: the gradients of the output-scaling (k_proj, v_proj) and input-scaling
// (down_proj) vectors, and two Trainer steps.
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class DeviceIa3Tests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Fact]
    public void GradientsOnTheAcceleratorMatchTheCpu()
    {
        var cpu = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Ia3(), Device.Cpu);
        var device = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Ia3(), Accel);
        DeviceAdapterTestUtil.AssertSameGradients(cpu, device, 3, "IA³");
    }

    [Fact]
    public void TrainerStepsOnTheAcceleratorMatchTheCpu() =>
        DeviceAdapterTestUtil.AssertSameTraining(Testing.TinyLlama.Ia3, Accel, "IA³");

    [CudaFact]
    public void GradientsOnCudaMatchTheCpu()
    {
        var cpu = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Ia3(), Device.Cpu);
        var cuda = Testing.TinyLlama.LossAndGrads(Testing.TinyLlama.Ia3(), Device.Cuda());
        DeviceAdapterTestUtil.AssertSameGradients(cpu, cuda, 3, "CUDA IA³");
    }
}
