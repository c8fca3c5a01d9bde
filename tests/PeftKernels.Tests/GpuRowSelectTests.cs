// RowSelectKernels through Functional.GatherRows / ScatterRows on the shared ILGPU accelerator against the CPU kernel:
// repeated rows (their gradients add up, in the CPU's order: bit-identical), one row, no rows, odd widths; rows out of
// range with the CPU's exception and message; the launchers' shape errors with the CPU kernel's message.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Ops;
using Xunit;
using static PeftKernels.Tests.GpuOpHarness;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuRowSelectTests(GpuFixture gpu)
{
    private Device Accel => Device.FromAccelerator(gpu.Accelerator);

    public static TheoryData<int[], int, int> GatherCases() => new()
    {
        { [2, 0, 2, 4, 2], 5, 3 }, // row 2 three times: its gradient is the sum of three rows
        { [0], 1, 7 },
        { [], 4, 3 },
        { [3, 1], 4, 1 },
    };

    [Theory]
    [MemberData(nameof(GatherCases))]
    public void GatherRowsMatchesTheCpu(int[] rows, int n, int cols)
    {
        AssertSame(Accel, [Input(10, 1f, n, cols)], p => Functional.GatherRows(p[0], rows), 0, 0, "GatherRows");
    }

    [Theory]
    [InlineData(new[] { 3, 0, 4 }, 6, 5)]
    [InlineData(new[] { 0 }, 1, 3)]
    [InlineData(new[] { 1, 0 }, 2, 9)]
    public void ScatterRowsMatchesTheCpu(int[] rows, int n, int cols)
    {
        var cpu = AssertSame(Accel, [Input(11, 1f, rows.Length, cols)], p => Functional.ScatterRows(p[0], rows, n), 0, 0, "ScatterRows");
        Assert.Equal(rows.Length * cols, cpu.Y.Count(v => v != 0));
    }

    [Fact]
    public void RowsOutOfRangeFailAsOnTheCpu()
    {
        var x = new Parameter(TestUtil.Random(12, 12), [4, 3], trainable: true);
        string cpu = Assert.Throws<ArgumentOutOfRangeException>(() => Functional.GatherRows(x, [1, 4])).Message;
        x.MoveTo(Accel);
        Assert.Equal(cpu, Assert.Throws<ArgumentOutOfRangeException>(() => Functional.GatherRows(x, [1, 4])).Message);
        Assert.Contains("rows[1] = 4 is outside [0, 4)", cpu, StringComparison.Ordinal);
        Assert.Contains("rows[0] = -1", Assert.Throws<ArgumentOutOfRangeException>(() => Functional.ScatterRows(x, [-1, 0, 2, 3], 4)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ShapeErrorsHaveTheCpuMessage()
    {
        using var x = gpu.Upload(new float[12]);
        using var y = gpu.Upload(new float[5]);
        using var rows = gpu.Upload(new[] { 1, 2 });
        string cpu = Message<ArgumentException>(() => RowSelect.Gather(new float[12], [1, 2], new float[5], 4, 3));
        Assert.Equal(cpu, Message<ArgumentException>(() => RowSelectKernels.Gather(gpu.Accelerator, x.View, rows.View, y.View, 4, 3)));
        Assert.Contains("y has length 5; expected 6 (rows·cols)", cpu, StringComparison.Ordinal);
        var groups = RowSelectKernels.Group([1, 2], 4);
        using var targets = gpu.Upload(groups.Targets);
        using var offsets = gpu.Upload(groups.Offsets);
        using var order = gpu.Upload(groups.Order);
        cpu = Message<ArgumentException>(() => RowSelect.ScatterAdd(new float[5], [1, 2], new float[12], 4, 3));
        Assert.Equal(cpu, Message<ArgumentException>(() => RowSelectKernels.ScatterAdd(gpu.Accelerator, y.View, targets.View, offsets.View, order.View, x.View, 4, 3)));
    }
}
