// FusionMixKernels through Functional.FusionMix and FusionRegularization on the shared ILGPU accelerator against the CPU
// kernel: the softmax mix over N adapters and the gradients of the query, every key and every value, on odd sizes
// (one row, one adapter, a temperature), the value regularization and its gradient, and the launchers' shape errors
// with the CPU kernel's message.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuFusionMixTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    /// <summary>Dots of H terms in another order and the device's exp: a few ulp of values near 1.</summary>
    [Theory]
    [InlineData(3, 5, 3, 1f)]
    [InlineData(1, 7, 2, 2f)]
    [InlineData(4, 3, 1, 1f)]
    public void FusionMixMatchesTheCpu(int n, int h, int adapters, float temperature)
    {
        var inputs = new List<(float[], int[])> { Input(20, 1f, n, h) };
        for (int i = 0; i < 2 * adapters; i++)
        {
            inputs.Add(Input(21 + i, 1f, n, h));
        }

        AssertSame(Accel, [.. inputs], p => Functional.FusionMix(p[0], p[1..(1 + adapters)], p[(1 + adapters)..], temperature), 1e-5, 1e-4, $"fusion n {n} H {h} N {adapters}");
    }

    [Theory]
    [InlineData(4)]
    [InlineData(1)]
    [InlineData(17)] // 289 elements: more than the sum's 256 threads
    public void RegularizationMatchesTheCpu(int d)
    {
        AssertSame(Accel, [Input(30, 1f, d, d)], p => Functional.FusionRegularization(p[0]), 1e-5, 1e-5, $"regularization d {d}");
    }

    [Fact]
    public void ShapeErrorsHaveTheCpuMessage()
    {
        using var q = gpu.Upload(new float[6]);
        using var k = gpu.Upload(new float[12]);
        using var p = gpu.Upload(new float[3]);
        string cpu = Message<ArgumentException>(() => FusionMix.Forward(new float[6], new float[12], new float[12], new float[6], new float[3], 2, 3, 2, 1f));
        Assert.Equal(cpu, Message<ArgumentException>(() => FusionMixKernels.Forward(gpu.Accelerator, q.View, k.View, k.View, q.View, p.View, 2, 3, 2, 1f)));
        Assert.Contains("p has length 3; expected 4 (n·N)", cpu, StringComparison.Ordinal);
        cpu = Message<ArgumentException>(() => FusionMix.Forward(new float[6], new float[12], new float[12], new float[6], new float[4], 2, 3, 2, 0f));
        using var p4 = gpu.Upload(new float[4]);
        Assert.Equal(cpu, Message<ArgumentException>(() => FusionMixKernels.Forward(gpu.Accelerator, q.View, k.View, k.View, q.View, p4.View, 2, 3, 2, 0f)));
    }
}
