// VirtualRowsKernels through the prompt-learning ops (PrependRows, DropLeadingRows, the encoders' Relu / Tanh) on the
// shared ILGPU accelerator against the CPU kernel: forward and every input's gradient on awkward sizes (odd widths,
// one row, a column window, no virtual rows), and the launchers' shape errors with the CPU kernel's message.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuVirtualRowsTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>Copies and a batch sum in the CPU's order: bit-identical, so any tolerance above 0 only absorbs nothing.</summary>
    [Theory]
    [InlineData(3, 2, 1, 5, 11, 4)] // a window of 5 columns at 4 of an 11-wide table
    [InlineData(1, 1, 1, 1, 1, 0)] // one of everything
    [InlineData(2, 3, 4, 7, 7, 0)]
    [InlineData(2, 0, 3, 3, 5, 2)] // no virtual rows: a copy of x
    public void PrependRowsMatchesTheCpu(int batch, int n, int t, int d, int width, int column)
    {
        AssertSame(Accel, [Input(1, 1f, n, width), Input(2, 1f, batch * t, d)], p => Functional.PrependRows(p[0], p[1], batch, column), 0, 0, "PrependRows");
    }

    [Theory]
    [InlineData(2, 3, 2, 7)]
    [InlineData(1, 0, 1, 1)]
    [InlineData(3, 1, 3, 5)]
    public void DropLeadingRowsMatchesTheCpu(int batch, int count, int t, int d)
    {
        AssertSame(Accel, [Input(3, 1f, batch * (count + t), d)], p => Functional.DropLeadingRows(p[0], batch, count), 0, 0, "DropLeadingRows");
    }

    /// <summary>ReLU is exact; tanh is the device's (a few ulp), its backward reads the output.</summary>
    [Fact]
    public void EncoderActivationsMatchTheCpu()
    {
        AssertSame(Accel, [Input(4, 3f, 7, 5)], p => Functional.Relu(p[0]), 0, 0, "Relu");
        AssertSame(Accel, [Input(5, 3f, 1, 37)], p => Functional.Tanh(p[0]), 1e-6, 1e-5, "Tanh");
    }

    [Fact]
    public void ShapeErrorsHaveTheCpuMessage()
    {
        using var p = gpu.Upload(new float[2 * 11]);
        using var x = gpu.Upload(new float[3 * 5]);
        using var y = gpu.Upload(new float[20]);
        string cpu = Message<ArgumentException>(() => VirtualRows.Prepend(new float[22], new float[15], new float[20], 3, 2, 1, 11, 4, 5));
        Assert.Equal(cpu, Message<ArgumentException>(() => VirtualRowsKernels.Prepend(gpu.Accelerator, p.View, x.View, y.View, 3, 2, 1, 11, 4, 5)));
        Assert.Contains("do not fit batch 3", cpu, StringComparison.Ordinal);
        cpu = Message<ArgumentException>(() => VirtualRows.DropLeadingBackward(new float[15], new float[20], 3, 2, 1, 5));
        Assert.Equal(cpu, Message<ArgumentException>(() => VirtualRowsKernels.DropLeadingBackward(gpu.Accelerator, x.View, y.View, 3, 2, 1, 5)));
        cpu = Message<ArgumentException>(() => VirtualRows.TanhBackward(new float[15], new float[20], new float[15]));
        Assert.Equal(cpu, Message<ArgumentException>(() => VirtualRowsKernels.TanhBackward(gpu.Accelerator, x.View, y.View, x.View)));
    }
}
