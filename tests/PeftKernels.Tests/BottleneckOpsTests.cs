using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The ops the bottleneck adapters add (Activation, Scale, GatherRows / ScatterRows, FusionMix, FusionRegularization): forward and
/// backward against the double references, on awkward sizes, and central finite differences through the autograd.
/// </summary>
public class BottleneckOpsTests
{
    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    [Theory]
    [InlineData(ActivationKind.Relu, "relu")]
    [InlineData(ActivationKind.Silu, "silu")]
    [InlineData(ActivationKind.Tanh, "tanh")]
    public void ActivationMatchesTheReferenceOnAwkwardSizes(ActivationKind kind, string name)
    {
        foreach (int count in new[] { 1, 7, 33, 257 })
        {
            var z = TestUtil.Random(count, count, 4f);
            var g = TestUtil.Random(count, count + 1);
            var y = new float[count];
            var dz = new float[count];
            Activation.Forward(kind, z, y);
            Activation.Backward(kind, g, z, dz);
            TestUtil.AssertClose(y, ActivationReference.Forward(name, TestUtil.ToDouble(z)), 1e-6, 1e-5, $"{name} y [{count}]");
            TestUtil.AssertClose(dz, ActivationReference.Backward(name, TestUtil.ToDouble(g), TestUtil.ToDouble(z)), 1e-6, 1e-5, $"{name} dz [{count}]");
        }
    }

    [Theory]
    [InlineData(ActivationKind.Silu)]
    [InlineData(ActivationKind.Tanh)]
    [InlineData(ActivationKind.Relu)]
    public void ActivationGradientsByFiniteDifferences(ActivationKind kind)
    {
        // Values kept away from relu's kink at 0 so the central difference is well defined there.
        var z = Leaf(2, 2f, 3, 5);
        for (int i = 0; i < z.Data.Length; i++)
        {
            z.Data[i] += z.Data[i] >= 0 ? 0.1f : -0.1f;
        }

        AutogradTests.Check(() => Functional.Activation(z, kind), ("z", z));
    }

    [Fact]
    public void ActivationOfLargeInputsStaysFinite()
    {
        var y = new float[4];
        var dz = new float[4];
        float[] z = [float.PositiveInfinity, float.NegativeInfinity, 200f, -200f];
        Activation.Forward(ActivationKind.Silu, z, y);
        Activation.Backward(ActivationKind.Silu, [1, 1, 1, 1], z, dz);
        Assert.All(dz, v => Assert.True(float.IsFinite(v)));
        Assert.Equal(200f, y[2]);
        Assert.Equal(0f, y[3], 1e-6f);
    }

    [Fact]
    public void ScaleMatchesTheReferenceAndItsGradients()
    {
        var x = Leaf(3, 1f, 5, 3);
        var s = Leaf(4, 1f, 1);
        var y = Functional.Scale(x, s);
        TestUtil.AssertClose(y.Data, ScaleReference.Forward(TestUtil.ToDouble(x.Data), s.Data[0]), 1e-6, 1e-6, "s·x");
        var g = TestUtil.Random(15, 5);
        Tape.Backward(y, g);
        var (dx, ds) = ScaleReference.Backward(TestUtil.ToDouble(g), TestUtil.ToDouble(x.Data), s.Data[0]);
        TestUtil.AssertClose(x.Grad!, dx, 1e-6, 1e-5, "dx");
        Assert.Equal(ds, s.Grad![0], 4);
        (x.Grad, s.Grad) = (null, null);
        AutogradTests.Check(() => Functional.Scale(x, s), ("x", x), ("s", s));
        Assert.Throws<ArgumentException>(() => Functional.Scale(x, Tensor.Zeros(2)));
    }

    [Fact]
    public void GatherAndScatterRowsMatchTheReferenceAndAreAdjoint()
    {
        int[] rows = [4, 0, 2];
        var x = Leaf(5, 1f, 5, 3);
        var gathered = Functional.GatherRows(x, rows);
        TestUtil.AssertClose(gathered.Data, RowSelectReference.Gather(TestUtil.ToDouble(x.Data), rows, 3), 0, 0, "gather");
        var small = Leaf(6, 1f, 3, 3);
        var scattered = Functional.ScatterRows(small, rows, 5);
        TestUtil.AssertClose(scattered.Data, RowSelectReference.Scatter(TestUtil.ToDouble(small.Data), rows, 5, 3), 0, 0, "scatter");
        Tape.Clear();
        AutogradTests.Check(() => Functional.GatherRows(x, [1, 1, 3]), ("x", x));
        AutogradTests.Check(() => Functional.ScatterRows(small, rows, 5), ("x", small));
        Assert.Throws<ArgumentException>(() => Functional.ScatterRows(small, [1, 1, 2], 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => Functional.GatherRows(x, [5]));
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(3, 5, 2)]
    [InlineData(7, 9, 3)]
    public void FusionMixMatchesTheReference(int n, int hidden, int adapters)
    {
        var q = TestUtil.Random(n * hidden, 7, 2f);
        var k = TestUtil.Random(adapters * n * hidden, 8, 2f);
        var v = TestUtil.Random(adapters * n * hidden, 9, 2f);
        var g = TestUtil.Random(n * hidden, 10);
        var y = new float[n * hidden];
        var p = new float[n * adapters];
        FusionMix.Forward(q, k, v, y, p, n, hidden, adapters, 1.5f);
        TestUtil.AssertClose(y, FusionMixReference.Forward(TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), n, hidden, adapters, 1.5), 1e-5, 1e-4, "y");
        var (dq, dk, dv) = (new float[q.Length], new float[k.Length], new float[v.Length]);
        FusionMix.Backward(g, q, k, v, p, dq, dk, dv, n, hidden, adapters, 1.5f);
        var expected = FusionMixReference.Backward(TestUtil.ToDouble(g), TestUtil.ToDouble(q), TestUtil.ToDouble(k), TestUtil.ToDouble(v), n, hidden, adapters, 1.5);
        TestUtil.AssertClose(dq, expected.Dq, 1e-5, 1e-4, "dq");
        TestUtil.AssertClose(dk, expected.Dk, 1e-5, 1e-4, "dk");
        TestUtil.AssertClose(dv, expected.Dv, 1e-5, 1e-4, "dv");
    }

    [Fact]
    public void FusionMixGradientsByFiniteDifferences()
    {
        var q = Leaf(11, 1f, 3, 4);
        var k1 = Leaf(12, 1f, 3, 4);
        var k2 = Leaf(13, 1f, 3, 4);
        var v1 = Leaf(14, 1f, 3, 4);
        var v2 = Leaf(15, 1f, 3, 4);
        AutogradTests.Check(() => Functional.FusionMix(q, [k1, k2], [v1, v2]), ("q", q), ("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2));
        Assert.Throws<ArgumentException>(() => Functional.FusionMix(q, [k1], [v1, v2]));
    }

    [Fact]
    public void FusionRegularizationIsTheSquaredDistanceFromTheIdentity()
    {
        var v = Leaf(16, 1f, 4, 4);
        Assert.Equal(FusionMixReference.Regularization(TestUtil.ToDouble(v.Data), 4), Functional.FusionRegularization(v).Item(), 4);
        AutogradTests.Check(() => Functional.FusionRegularization(v), ("V", v));
        var identity = new Parameter([1f, 0f, 0f, 1f], [2, 2]);
        Assert.Equal(0f, Functional.FusionRegularization(identity).Item());
        Assert.Throws<ArgumentException>(() => Functional.FusionRegularization(Tensor.Zeros(2, 3)));
    }
}
