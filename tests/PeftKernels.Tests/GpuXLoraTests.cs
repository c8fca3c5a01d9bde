// XLoraKernels through Functional.ScaleRows, XLoraGate and ReluDropout on the shared ILGPU accelerator against the host
// bodies: the per-token row scaling (gradients into x and the scalings' column), the gate in each of its settings
// (softmax with a temperature, top-k with ties, softmax over the top k, groups per row), ReLU-dropout with the same
// seeded mask as the CPU (bit-identical), and the launchers' shape errors.
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuXLoraTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    [Theory]
    [InlineData(3, 5, 4, 2)]
    [InlineData(1, 1, 1, 0)]
    [InlineData(6, 9, 2, 1)]
    public void ScaleRowsMatchesTheCpu(int n, int d, int c, int column)
    {
        var cpu = AssertSame(Accel, [Input(40, 1f, n, d), Input(41, 1f, n, c)], p => Functional.ScaleRows(p[0], p[1], column), 1e-6, 1e-5, "ScaleRows");
        Assert.All(Enumerable.Range(0, n * c).Where(i => i % c != column), i => Assert.Equal(0f, cpu.Grads[1]![i]));
    }

    public static TheoryData<int, int, XLoraGateOptions> GateCases() => new()
    {
        { 3, 4, new XLoraGateOptions(4) },
        { 2, 8, new XLoraGateOptions(4, Temperature: 2f, TopK: 2) }, // two groups per row
        { 3, 5, new XLoraGateOptions(5, TopK: 2, SoftmaxTopK: true) },
        { 1, 3, new XLoraGateOptions(3, Softmax: false, TopK: 1) },
        { 4, 3, new XLoraGateOptions(3, Temperature: 0.5f, TopK: 2, SoftmaxTopK: true) },
    };

    /// <summary>Softmaxes over a handful of entries with the device's exp: a few ulp.</summary>
    [Theory]
    [MemberData(nameof(GateCases))]
    public void GateMatchesTheCpu(int rows, int width, XLoraGateOptions options)
    {
        AssertSame(Accel, [Input(42, 2f, rows, width)], p => Functional.XLoraGate(p[0], options), 1e-6, 1e-5, $"gate {options}");
    }

    /// <summary>Equal logits: the top-k keeps the lower indices on both devices.</summary>
    [Fact]
    public void GateTiesKeepTheLowerIndex()
    {
        (float[], int[]) tied = ([0.5f, 0.5f, 0.5f, 0.1f, 0.3f, 0.3f, 0.3f, 0.3f], [2, 4]);
        var cpu = AssertSame(Accel, [tied], p => Functional.XLoraGate(p[0], new XLoraGateOptions(4, Softmax: false, TopK: 2)), 0, 0, "tied gate");
        Assert.Equal([0.5f, 0.5f, 0f, 0f, 0.3f, 0.3f, 0f, 0f], cpu.Y);
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(0.3f)]
    public void ReluDropoutMatchesTheCpu(float p)
    {
        AssertSame(Accel, [Input(43, 1f, 7, 9)], t => Functional.ReluDropout(t[0], p, 1234UL), 0, 0, $"ReLU-dropout p {p}");
    }

    [Fact]
    public void ShapeErrorsNameTheView()
    {
        using var x = gpu.Upload(new float[6]);
        using var s = gpu.Upload(new float[5]);
        using var keep = gpu.Upload(new int[6]);
        Assert.Equal("s", Assert.Throws<ArgumentException>(() => XLoraKernels.ScaleRows(gpu.Accelerator, x.View, s.View, x.View, 2, 3, 3, 1)).ParamName);
        Assert.Contains("column 3 is outside [0, 3)", Message<ArgumentException>(() => XLoraKernels.ScaleRows(gpu.Accelerator, x.View, s.View, x.View, 2, 3, 3, 3)), StringComparison.Ordinal);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => XLoraKernels.Gate(gpu.Accelerator, x.View, x.View, keep.View, s.View, 2, 3, 1f, true, 3, false)).ParamName);
        Assert.Equal("p", Assert.Throws<ArgumentException>(() => XLoraKernels.ReluDropout(gpu.Accelerator, x.View, x.View, 1f, 0)).ParamName);
    }
}
