using PeftKernels.Autograd;
using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// MixLoRA's routing ops (Functional.Softmax, TopKRouting, LoadBalancingLoss, GatherRows, RoutedSum, ScaleElements): forward
/// and backward against the double reference (MoeRoutingReference) and central finite differences, on awkward sizes.
/// </summary>
public class MixLoraOpsTests
{
    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    [Theory]
    [InlineData(1, 1)]
    [InlineData(7, 5)]
    [InlineData(3, 13)]
    public void SoftmaxMatchesTheReferenceAndFiniteDifferences(int n, int e)
    {
        var z = Leaf(1, 3f, n, e);
        var p = Functional.Softmax(z);
        TestUtil.AssertClose(p.Data, MoeRoutingReference.Softmax(TestUtil.ToDouble(z.Data), n, e), 1e-6, 1e-5, "p");
        var g = TestUtil.Random(n * e, 2);
        Tape.Backward(p, g);
        var dz = MoeRoutingReference.SoftmaxBackward(TestUtil.ToDouble(g), MoeRoutingReference.Softmax(TestUtil.ToDouble(z.Data), n, e), n, e);
        TestUtil.AssertClose(z.Grad!, dz, 1e-6, 1e-5, "dz");
        z.Grad = null;
        AutogradTests.Check(() => Functional.Softmax(z), ("z", z));
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 5, 2)]
    [InlineData(4, 8, 3)]
    [InlineData(3, 4, 4)]
    public void TopKRoutingMatchesTheReferenceAndFiniteDifferences(int n, int e, int k)
    {
        // Well-separated probabilities (a permutation of distinct levels per row) so a step of ε never changes the choice.
        var data = new float[n * e];
        var rng = new Random(3);
        for (int t = 0; t < n; t++)
        {
            var levels = Enumerable.Range(1, e).OrderBy(_ => rng.Next()).ToArray();
            for (int j = 0; j < e; j++)
            {
                data[(t * e) + j] = 0.2f * levels[j];
            }
        }

        var p = new Parameter(data, [n, e], trainable: true);
        var route = Functional.TopKRouting(p, k);
        var (sel, w) = MoeRoutingReference.TopK(TestUtil.ToDouble(data), n, e, k);
        Assert.Equal(sel, route.Selected);
        TestUtil.AssertClose(route.Weights.Data, w, 1e-6, 1e-5, "w");
        var g = TestUtil.Random(n * k, 4);
        Tape.Backward(route.Weights, g);
        TestUtil.AssertClose(p.Grad!, MoeRoutingReference.TopKBackward(TestUtil.ToDouble(g), TestUtil.ToDouble(data), sel, n, e, k), 1e-6, 1e-5, "dp");
        p.Grad = null;
        AutogradTests.Check(() => Functional.TopKRouting(p, k).Weights, ("p", p));
    }

    [Fact]
    public void TopKRoutingBreaksTiesTowardTheLowerExpertAndRefusesABadK()
    {
        var p = new Tensor([0.25f, 0.25f, 0.25f, 0.25f], 1, 4);
        Assert.Equal([0, 1], Functional.TopKRouting(p, 2).Selected);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Functional.TopKRouting(p, 5));
        Assert.Contains("k = 5", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LoadBalancingLossPoolsLayersAndMatchesTheReference()
    {
        int n = 5, e = 4, k = 2;
        var z1 = Leaf(5, 2f, n, e);
        var z2 = Leaf(6, 2f, n, e);
        int[] Selected(Tensor z) => MoeRoutingReference.TopK(MoeRoutingReference.Softmax(TestUtil.ToDouble(z.Data), n, e), n, e, k).Selected;

        // The choices are constants of the loss (counts), so they are taken once from the unperturbed probabilities; coef 1 keeps the
        // gradients large against the finite-difference tolerance.
        var sel = new[] { Selected(z1), Selected(z2) };
        Tensor Loss() => Functional.LoadBalancingLoss([Functional.Softmax(z1), Functional.Softmax(z2)], sel, k, 1f);

        var probs = new[] { MoeRoutingReference.Softmax(TestUtil.ToDouble(z1.Data), n, e), MoeRoutingReference.Softmax(TestUtil.ToDouble(z2.Data), n, e) };
        double expected = MoeRoutingReference.LoadBalancingLoss(probs, sel, n, e, k, 1.0);
        Assert.Equal(expected, Loss().Item(), 6);
        Tape.Clear();

        // Balanced routing with uniform probabilities gives coef·k (F sums to k, P = 1/E).
        var uniform = new Tensor(Enumerable.Repeat(0.25f, 8).ToArray(), 2, 4);
        Assert.Equal(0.01 * 2, Functional.LoadBalancingLoss([uniform], [[0, 1, 2, 3]], 2, 0.01f).Item(), 6);
        AutogradTests.Check(Loss, ("z1", z1), ("z2", z2));
    }

    [Fact]
    public void GatherRowsAndRoutedSumGradientsOnRepeatedAndMissingRows()
    {
        int n = 5, c = 3, k = 2;
        var x = Leaf(7, 1f, n, c);
        var part0 = Leaf(8, 1f, 3, c);
        var part1 = Leaf(9, 1f, 2, c);
        var w = Leaf(10, 1f, n, k);
        int[][] rows = [[0, 2, 4], [2, 3]];
        int[][] slots = [[0, 1, 0], [0, 1]];
        AutogradTests.Check(() => Functional.GatherRows(x, [4, 1, 1]), ("x", x));
        AutogradTests.Check(() => Functional.RoutedSum([part0, part1], rows, slots, w, n), ("part0", part0), ("part1", part1), ("w", w));
        var y = Functional.RoutedSum([part0, part1], rows, slots, w, n);
        var expected = MoeRoutingReference.RoutedSum([TestUtil.ToDouble(part0.Data), TestUtil.ToDouble(part1.Data)], rows, slots, TestUtil.ToDouble(w.Data), n, c, k);
        TestUtil.AssertClose(y.Data, expected, 1e-6, 1e-5, "routed sum");
        Assert.All(y.Data.AsSpan(1 * c, c).ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void ScaleElementsGradientAndShapeCheck()
    {
        var x = Leaf(11, 1f, 3, 4);
        var f = TestUtil.Random(12, 12, 2f);
        AutogradTests.Check(() => Functional.ScaleElements(x, f), ("x", x));
        Assert.Throws<ArgumentException>(() => Functional.ScaleElements(x, new float[5]));
    }
}
