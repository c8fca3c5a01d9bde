using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>X-LoRA's ops (Functional.ScaleRows, XLoraGate, ReluDropout): forward and backward against the double reference, finite differences.</summary>
public class XLoraOpsTests
{
    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    [Theory]
    [InlineData(1, 1, 1, 0)]
    [InlineData(5, 7, 3, 2)]
    [InlineData(3, 33, 6, 5)]
    public void ScaleRowsMatchesTheReferenceAndFiniteDifferences(int n, int d, int c, int column)
    {
        var x = Leaf(1, 1f, n, d);
        var s = Leaf(2, 1f, n, c);
        var y = Functional.ScaleRows(x, s, column);
        var (xd, sd) = (TestUtil.ToDouble(x.Data), TestUtil.ToDouble(s.Data));
        TestUtil.AssertClose(y.Data, XLoraReference.ScaleRows(xd, sd, n, d, c, column), 1e-6, 1e-6, "y");

        var g = TestUtil.Random(n * d, 3);
        Autograd.Tape.Backward(y, g);
        var (dx, ds) = XLoraReference.ScaleRowsBackward(TestUtil.ToDouble(g), xd, sd, n, d, c, column);
        TestUtil.AssertClose(x.Grad!, dx, 1e-5, 1e-5, "dx");
        TestUtil.AssertClose(s.Grad!, ds, 1e-5, 1e-5, "ds");
        (x.Grad, s.Grad) = (null, null);
        AutogradTests.Check(() => Functional.ScaleRows(x, s, column), ("x", x), ("s", s));
    }

    [Theory]
    [InlineData(3, 1, 4, 1.0f, true, 0, false)]
    [InlineData(4, 3, 3, 0.7f, true, 0, false)]
    [InlineData(2, 2, 5, 1.3f, true, 2, false)]
    [InlineData(3, 1, 4, 0.5f, true, 2, true)]
    [InlineData(3, 2, 3, 1.0f, false, 1, true)]
    [InlineData(2, 1, 6, 1.0f, false, 0, false)]
    [InlineData(5, 1, 1, 2.0f, true, 1, true)]
    public void GateMatchesTheReferenceAndFiniteDifferences(int n, int groups, int e, float temperature, bool softmax, int topK, bool softmaxTopK)
    {
        var options = new XLoraGateOptions(e, temperature, softmax, topK, softmaxTopK);
        var z = Leaf(4 + e, 2f, n, groups * e);
        var y = Functional.XLoraGate(z, options);
        var zd = TestUtil.ToDouble(z.Data);
        var (expected, keep, _) = XLoraReference.Gate(zd, n, groups, e, temperature, softmax, topK, softmaxTopK);
        TestUtil.AssertClose(y.Data, expected, 1e-6, 1e-5, "gate");
        Assert.Equal(n * groups * (topK == 0 ? e : Math.Min(topK, e)), keep.Count(k => k));

        var g = TestUtil.Random(y.Data.Length, 5);
        Autograd.Tape.Backward(y, g);
        TestUtil.AssertClose(z.Grad!, XLoraReference.GateBackward(TestUtil.ToDouble(g), zd, n, groups, e, temperature, softmax, topK, softmaxTopK),
            1e-5, 1e-4, "dz");
        z.Grad = null;
        AutogradTests.Check(() => Functional.XLoraGate(z, options), ("logits", z));
    }

    [Fact]
    public void GateTopOneWithSoftmaxTopKIsExactlyOneHot()
    {
        var z = new Tensor([0.2f, 3f, -1f, 5f, 5f, 1f], 2, 3);
        var y = Functional.XLoraGate(z, new XLoraGateOptions(3, TopK: 1, SoftmaxTopK: true)).Data;

        // Row 2 ties 5 and 5: the lower expert index wins.
        Assert.Equal([0f, 1f, 0f, 1f, 0f, 0f], y);
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(0.3f)]
    public void ReluDropoutMatchesTheReferenceAndFiniteDifferences(float p)
    {
        var x = Leaf(6, 1f, 7, 9);
        var y = Functional.ReluDropout(x, p, 42);
        var ones = Functional.ReluDropout(new Tensor(Enumerable.Repeat(1f, 63).ToArray(), 7, 9), p, 42).Data;
        var m = TestUtil.ToDouble(ones);
        Assert.Equal(p > 0, m.Any(v => v == 0));
        var xd = TestUtil.ToDouble(x.Data);
        TestUtil.AssertClose(y.Data, XLoraReference.ReluDropout(xd, m), 1e-6, 1e-6, "y");
        var g = TestUtil.Random(63, 7);
        Autograd.Tape.Backward(y, g);
        TestUtil.AssertClose(x.Grad!, XLoraReference.ReluDropoutBackward(TestUtil.ToDouble(g), xd, m), 1e-6, 1e-6, "dx");
        x.Grad = null;
        AutogradTests.Check(() => Functional.ReluDropout(x, p, 42), ("x", x));
    }

    [Fact]
    public void BadArgumentsAreRefusedByName()
    {
        var x = Leaf(8, 1f, 2, 3);
        Assert.Contains("column", Assert.Throws<ArgumentException>(() => Functional.ScaleRows(x, Leaf(9, 1f, 2, 2), 2)).Message, StringComparison.Ordinal);
        Assert.Contains("groups of E", Assert.Throws<ArgumentException>(() => Functional.XLoraGate(x, new XLoraGateOptions(2))).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => Functional.ReluDropout(x, 1f, 0));
    }
}
