// Functional.RoutedSegmentedLoraBranch (MixLoRA's down deltas into y; docs/formats/mixlora.md#cost):
//   = Add(y, RoutedSum([SegmentedLoraBranch(zeros, x)])) in value and in every gradient (y, x, w, A_t, B_t), within fp32
//     rounding, with 1 and 2 threads, an empty segment and rows outside every segment
//   gradients by central finite differences, fresh and onto an x that already has a gradient
//   bad input refused with the reason
using PeftKernels.Autograd;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

public class RoutedSegmentedLoraTests
{
    // 6 tokens, top-2: 12 routed rows; segments [1, 4), [4, 4), [4, 11); rows 0 and 11 outside every segment.
    private const int Tokens = 6, K = 2, InF = 7, OutF = 5;
    private static readonly int[] Starts = [1, 4, 4, 11];
    private static readonly int[] TokenOf = [3, 0, 2, 5, 1, 4, 0, 3, 2, 5, 1, 4];
    private static readonly int[] SlotOf = [0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 1];

    private static Parameter Leaf(int seed, params int[] shape) => new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed), shape, trainable: true);

    private static LoraFactors[] Factors(int seed) =>
        [.. new[] { 2, 1, 3 }.Select((r, t) => new LoraFactors(Leaf(seed + t, r, InF), Leaf(seed + 10 + t, OutF, r), 0.5f + t, Name: $"e{t}"))];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void EqualsTheComposedOpsInValueAndGradients(int threads)
    {
        var kernel = new KernelOptions(threads);
        var factors = Factors(10);
        var (y0, x, w) = (Leaf(1, Tokens, OutF), Leaf(2, TokenOf.Length, InF), Leaf(3, Tokens, K));
        var dy = TestUtil.Random(Tokens * OutF, 4);

        float[][] Run(bool fused)
        {
            foreach (var p in new[] { y0, x, w }.Concat(factors.SelectMany(f => new[] { (Parameter)f.A, (Parameter)f.B })))
            {
                p.Grad = null;
            }

            var y = Functional.Add(y0, Tensor.Zeros(Tokens, OutF));
            var output = fused
                ? Functional.RoutedSegmentedLoraBranch(y, x, TokenOf, SlotOf, w, factors, Starts, 0f, null, kernel)
                : Functional.Add(y, Functional.RoutedSum([Functional.SegmentedLoraBranch(Tensor.Zeros(TokenOf.Length, OutF), x, factors, Starts, 0f, null, kernel)],
                    [TokenOf], [SlotOf], w, Tokens));
            var value = (float[])output.Data.Clone();
            Tape.Backward(output, dy);
            // The empty segment's adapter gets no gradient in either form.
            Assert.Null(factors[1].A.Grad);
            Assert.Null(factors[1].B.Grad);
            return [value, y0.Grad!, x.Grad!, w.Grad!, factors[0].A.Grad!, factors[0].B.Grad!, factors[2].A.Grad!, factors[2].B.Grad!];
        }

        var expected = Run(false);
        var actual = Run(true);
        for (int i = 0; i < expected.Length; i++)
        {
            TestUtil.AssertClose(actual[i], TestUtil.ToDouble(expected[i]), 1e-5, 1e-5, $"output {i}");
        }
    }

    [Fact]
    public void GradientsByFiniteDifferences()
    {
        var factors = Factors(20);
        var (y0, x, w) = (Leaf(21, Tokens, OutF), Leaf(22, TokenOf.Length, InF), Leaf(23, Tokens, K));
        Tensor Fresh() => Functional.RoutedSegmentedLoraBranch(Functional.Add(y0, Tensor.Zeros(Tokens, OutF)), x, TokenOf, SlotOf, w, factors, Starts, 0f, null);
        AutogradTests.Check(Fresh, ("y", y0), ("x", x), ("w", w), ("A0", (Parameter)factors[0].A), ("B0", (Parameter)factors[0].B), ("A2", (Parameter)factors[2].A),
            ("B2", (Parameter)factors[2].B));

        // x used again by a later op: its gradient is there first, and the op adds dx into it.
        var v = new Tensor(TestUtil.Random(OutF * InF, 24), OutF, InF);
        Tensor Shared()
        {
            var routed = Functional.RoutedSegmentedLoraBranch(Functional.Add(y0, Tensor.Zeros(Tokens, OutF)), x, TokenOf, SlotOf, w, factors, Starts, 0f, null);
            return Functional.Add(routed, Functional.RoutedSum([Functional.Gemm(x, v, null)], [TokenOf], [SlotOf], w, Tokens));
        }

        AutogradTests.Check(Shared, ("x", x), ("w", w), ("A2", (Parameter)factors[2].A));
    }

    [Fact]
    public void BadInputIsRefusedWithTheReason()
    {
        var factors = Factors(30);
        var (y, x, w) = (Tensor.Zeros(Tokens, OutF), Tensor.Zeros(TokenOf.Length, InF), Tensor.Zeros(Tokens, K));
        var e1 = Assert.Throws<ArgumentException>(() => Functional.RoutedSegmentedLoraBranch(y, x, TokenOf[1..], SlotOf, w, factors, Starts, 0f, null));
        Assert.Contains("11 tokens", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Functional.RoutedSegmentedLoraBranch(y, x, TokenOf, SlotOf, w, factors, [0, 4, 11], 0f, null));
        Assert.Contains("segment starts", e2.Message);
        int[] badSlots = [.. SlotOf];
        badSlots[3] = K;
        var e3 = Assert.Throws<ArgumentException>(() => Functional.RoutedSegmentedLoraBranch(y, x, TokenOf, badSlots, w, factors, Starts, 0f, null));
        Assert.Contains("slot 2", e3.Message);
    }
}
