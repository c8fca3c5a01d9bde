// The CPU column sums (the one bias-gradient helper) against the double reference on awkward sizes,
// scaled and unscaled, accumulating into a non-zero dst; the row-order fp32 sum from zero exactly
// (what the autograd bias gradient computed before); and the argument checks.
using PeftKernels.Kernels.Reference;
using Xunit;
using CpuColumnSums = PeftKernels.Kernels.Cpu.ColumnSums;

namespace PeftKernels.Tests;

public class ColumnSumsTests
{
    public static TheoryData<int, int, float> Cases() => new()
    {
        { 1, 1, 1f },
        { 0, 5, 1f },
        { 3, 7, 0.5f },
        { 17, 33, 1f },
        { 65, 129, 0.37f },
        { 200, 16, -2f },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void AddMatchesReference(int rows, int cols, float scale)
    {
        var g = TestUtil.Random(rows * cols, 1, 2f);
        var start = TestUtil.Random(cols, 2);
        var sums = ColumnSumsReference.Sum(TestUtil.ToDouble(g), rows, cols, scale);
        var expected = sums.Select((v, j) => start[j] + v).ToArray();

        var dst = (float[])start.Clone();
        CpuColumnSums.Add(g, dst, rows, cols, scale);
        TestUtil.AssertClose(dst, expected, TestUtil.DotAtol(rows + 2) * 2 * Math.Abs(scale), 1e-6, $"{rows}x{cols} s {scale}");
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(9, 31)]
    [InlineData(40, 67)]
    public void UnscaledIntoZerosIsTheRowOrderSum(int rows, int cols)
    {
        var g = TestUtil.Random(rows * cols, 3);
        var expected = new float[cols];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                expected[j] += g[(i * cols) + j];
            }
        }

        var dst = new float[cols];
        CpuColumnSums.Add(g, dst, rows, cols);
        Assert.Equal(expected, dst);

        // Scaled: one rounding of scale·sum after the sum.
        var scaled = new float[cols];
        CpuColumnSums.Add(g, scaled, rows, cols, 0.37f);
        Assert.Equal(expected.Select(v => v * 0.37f).ToArray(), scaled);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var e = Assert.Throws<ArgumentException>(() => CpuColumnSums.Add(new float[6], new float[2], 2, 3));
        Assert.Equal("dst", e.ParamName);
        Assert.Contains("dst has length 2; expected 3 (cols)", e.Message);
        e = Assert.Throws<ArgumentException>(() => CpuColumnSums.Add(new float[5], new float[3], 2, 3));
        Assert.Equal("g", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => CpuColumnSums.Add(new float[6], new float[3], 2, 3, float.NaN));
        Assert.Equal("scale", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => CpuColumnSums.Add([], [], 0, 0));
        Assert.Equal("cols", e.ParamName);
    }
}
