using PeftKernels.Kernels.Reference;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The prompt-learning ops (PrependRows, DropLeadingRows, Relu, Tanh): CPU against the double reference, finite differences, errors.</summary>
public class VirtualRowsTests
{
    private static Parameter Leaf(int seed, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed), shape, trainable: true);

    [Theory]
    [InlineData(1, 1, 1, 1, 0, 1)]
    [InlineData(3, 5, 7, 37, 11, 13)]
    [InlineData(2, 4, 1, 9, 0, 9)]
    [InlineData(4, 0, 3, 5, 2, 3)]
    public void PrependAndDropMatchTheReferenceOnAwkwardSizes(int batch, int n, int t, int width, int column, int d)
    {
        var p = TestUtil.Random(n * width, 1);
        var x = TestUtil.Random(batch * t * d, 2);
        var y = new float[batch * (n + t) * d];
        Kernels.Cpu.VirtualRows.Prepend(p, x, y, batch, n, t, width, column, d);
        TestUtil.AssertClose(y, VirtualRowsReference.Prepend(TestUtil.ToDouble(p), TestUtil.ToDouble(x), batch, n, width, column, d), 0, 0, "prepend");

        var dy = TestUtil.Random(y.Length, 3);
        var dp = new float[n * width];
        var dx = new float[x.Length];
        Kernels.Cpu.VirtualRows.PrependBackward(dy, dp, dx, batch, n, t, width, column, d);
        var (rdp, rdx) = VirtualRowsReference.PrependBackward(TestUtil.ToDouble(dy), batch, n, t, width, column, d);
        TestUtil.AssertClose(dp, rdp, 1e-6, 1e-6, "dp");
        TestUtil.AssertClose(dx, rdx, 0, 0, "dx");

        var dropped = new float[x.Length];
        Kernels.Cpu.VirtualRows.DropLeading(y, dropped, batch, n, t, d);
        TestUtil.AssertClose(dropped, VirtualRowsReference.DropLeading(TestUtil.ToDouble(y), batch, n, d), 0, 0, "drop");
        Assert.Equal(x, dropped);
        var back = new float[y.Length];
        Kernels.Cpu.VirtualRows.DropLeadingBackward(x, back, batch, n, t, d);
        TestUtil.AssertClose(back, VirtualRowsReference.DropLeadingBackward(TestUtil.ToDouble(x), batch, n, d), 0, 0, "drop backward");
    }

    [Fact]
    public void ActivationsMatchTheReference()
    {
        var x = TestUtil.Random(37, 4, 3f);
        var dy = TestUtil.Random(37, 5);
        var relu = new float[37];
        var tanh = new float[37];
        var dx = new float[37];
        Kernels.Cpu.VirtualRows.Relu(x, relu);
        TestUtil.AssertClose(relu, VirtualRowsReference.Relu(TestUtil.ToDouble(x)), 0, 0, "relu");
        Kernels.Cpu.VirtualRows.ReluBackward(dy, x, dx);
        TestUtil.AssertClose(dx, VirtualRowsReference.ReluBackward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x)), 0, 0, "relu backward");
        Kernels.Cpu.VirtualRows.Tanh(x, tanh);
        TestUtil.AssertClose(tanh, VirtualRowsReference.Tanh(TestUtil.ToDouble(x)), 1e-6, 1e-6, "tanh");
        Kernels.Cpu.VirtualRows.TanhBackward(dy, tanh, dx);
        TestUtil.AssertClose(dx, VirtualRowsReference.TanhBackward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x)), 1e-5, 1e-5, "tanh backward");
    }

    [Fact]
    public void PrependRowsGradientsIntoTheSharedBlockAndTheRows()
    {
        var p = Leaf(6, 3, 10);
        var x = Leaf(7, 2 * 4, 4);
        AutogradTests.Check(() => Functional.PrependRows(p, x, 2, column: 5), ("prefix", p), ("x", x));
    }

    [Fact]
    public void DropLeadingRowsGradientScattersBack()
    {
        var x = Leaf(8, 3 * 5, 6);
        AutogradTests.Check(() => Functional.DropLeadingRows(x, 3, 2), ("x", x));
    }

    [Fact]
    public void ReluAndTanhGradients()
    {
        // Values kept away from ReLU's kink at 0 (finite differences straddle it otherwise).
        var data = TestUtil.Random(24, 9).Select(v => v >= 0 ? v + 0.1f : v - 0.1f).ToArray();
        var x = new Parameter(data, [4, 6], trainable: true);
        AutogradTests.Check(() => Functional.Relu(x), ("x", x));
        AutogradTests.Check(() => Functional.Tanh(x), ("x", x));
    }

    [Fact]
    public void AttentionOverPrependedKeysAndValuesHasTheRightGradients()
    {
        // Prefix tuning's attention: keys / values longer than the queries (the queries are the last positions); the
        // gradients flow through Attention's backward into the shared prefix block and the per-sequence keys and values.
        int batch = 2, t = 3, n = 2, heads = 4, kvHeads = 2, hd = 3, kvDim = kvHeads * hd;
        var q = Leaf(10, batch * t, heads * hd);
        var k = Leaf(11, batch * t, kvDim);
        var v = Leaf(12, batch * t, kvDim);
        var prefix = Leaf(13, n, 2 * kvDim);
        AutogradTests.Check(() => Functional.Attention(q, Functional.PrependRows(prefix, k, batch, 0), Functional.PrependRows(prefix, v, batch, kvDim),
            batch, heads, kvHeads, hd), ("q", q), ("k", k), ("v", v), ("prefix", prefix));
    }

    [Fact]
    public void BadShapesAreRefusedClearly()
    {
        var p = new Tensor(new float[12], 3, 4);
        var x = new Tensor(new float[10], 5, 2);
        Assert.Contains("batch 2", Assert.Throws<ArgumentException>(() => Functional.PrependRows(p, x, 2)).Message, StringComparison.Ordinal);
        Assert.Contains("window [3, 5)", Assert.Throws<ArgumentException>(() => Functional.PrependRows(p, x, 1, 3)).Message, StringComparison.Ordinal);
        Assert.Contains("at least 6 rows", Assert.Throws<ArgumentException>(() => Functional.DropLeadingRows(x, 1, 6)).Message, StringComparison.Ordinal);
    }
}
