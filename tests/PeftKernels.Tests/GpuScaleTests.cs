// ScaleKernels through Functional.Scale on the shared ILGPU accelerator against the host body: a learned scalar (a
// parameter on the device, gradient into it) and a constant (a host one-element tensor, uploaded), on odd shapes and
// one element; ds is a dot over every element in a fixed tree (rounding differs from the CPU's SIMD dot).
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuScaleTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Theory]
    [InlineData(7, 13)]
    [InlineData(1, 1)]
    [InlineData(33, 19)] // more elements than the 256 threads of the dot
    public void LearnedScaleMatchesTheCpu(int rows, int cols)
    {
        AssertSame(Accel, [Input(8, 1f, rows, cols), ([0.7f], [1])], p => Functional.Scale(p[0], p[1]), 1e-5, 1e-5, "learned scale");
    }

    [Fact]
    public void ConstantScaleMatchesTheCpu()
    {
        var constant = new Tensor([-1.5f], 1);
        var cpu = AssertSame(Accel, [Input(9, 1f, 3, 5)], p => Functional.Scale(p[0], constant), 0, 0, "constant scale");
        Assert.Null(constant.Grad);
        Assert.NotNull(cpu.Grads[0]);
    }

    [Fact]
    public void ShapeErrorsNameTheView()
    {
        using var x = gpu.Upload(new float[6]);
        using var s = gpu.Upload(new float[2]);
        Assert.Equal("s has length 2; expected 1 (one scalar). (Parameter 's')", Message<ArgumentException>(() => ScaleKernels.Forward(gpu.Accelerator, x.View, s.View, x.View)));
        Assert.Equal("ds", Assert.Throws<ArgumentException>(() => ScaleKernels.Backward(gpu.Accelerator, x.View, x.View, s.View.SubView(0, 1), default, s.View)).ParamName);
    }
}
