// ActivationKernels through Functional.Activation (the bottleneck non-linearity) on the shared ILGPU accelerator against
// the CPU kernel: each kind, forward and gradient, on odd shapes including one row and large |z| (σ saturating), and the
// launchers' shape errors with the CPU kernel's message.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuActivationTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>ReLU is exact; silu and tanh use the device's exp / tanh (a few ulp).</summary>
    [Theory]
    [InlineData(ActivationKind.Relu, 0.0)]
    [InlineData(ActivationKind.Silu, 1e-6)]
    [InlineData(ActivationKind.Tanh, 1e-6)]
    public void ActivationMatchesTheCpu(ActivationKind kind, double atol)
    {
        var z = Input(6, 30f, 5, 7);
        AssertSame(Accel, [z], p => Functional.Activation(p[0], kind), atol, atol * 10, $"{kind} 5×7");
        AssertSame(Accel, [Input(7, 2f, 1, 3)], p => Functional.Activation(p[0], kind), atol, atol * 10, $"{kind} one row");
    }

    [Fact]
    public void ShapeErrorsHaveTheCpuMessage()
    {
        using var z = gpu.Upload(new float[6]);
        using var y = gpu.Upload(new float[5]);
        string cpu = Message<ArgumentException>(() => Activation.Forward(ActivationKind.Silu, new float[6], new float[5]));
        Assert.Equal(cpu, Message<ArgumentException>(() => ActivationKernels.Forward(gpu.Accelerator, ActivationKind.Silu, z.View, y.View)));
        cpu = Message<ArgumentException>(() => Activation.Backward(ActivationKind.Relu, new float[6], new float[6], new float[5]));
        Assert.Equal(cpu, Message<ArgumentException>(() => ActivationKernels.Backward(gpu.Accelerator, ActivationKind.Relu, z.View, z.View, y.View)));
        Assert.Contains("dz has length 5; expected 6", cpu, StringComparison.Ordinal);
    }
}
