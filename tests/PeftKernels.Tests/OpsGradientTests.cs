using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The ops that Linear composes (Functional.Gemm, LoraMatmul with a lora_B bias and with DoRA, LoraBranch on all rows and on
/// a row subset), each called directly and checked against central finite differences (AutogradTests.Check: L = Σ R ⊙ op).
/// </summary>
public class OpsGradientTests
{
    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    [Fact]
    public void GemmGradientsForInputWeightAndBias()
    {
        var x = Leaf(1, 1f, 4, 7);
        var w = Leaf(2, 1f, 5, 7);
        var b = Leaf(3, 1f, 5);
        AutogradTests.Check(() => Functional.Gemm(x, w, b), ("x", x), ("weight", w), ("bias", b));
    }

    [Fact]
    public void LoraMatmulGradientsWithALoraBias()
    {
        var x = Leaf(4, 1f, 3, 11);
        var w = Leaf(5, 1f, 6, 11);
        var bias = Leaf(6, 1f, 6);
        var a = Leaf(7, 1f, 2, 11);
        var b = Leaf(8, 1f, 6, 2);
        var loraBias = Leaf(9, 1f, 6);
        var factors = new LoraFactors(a, b, 1.5f, loraBias, Name: "bias");
        AutogradTests.Check(() => Functional.LoraMatmul(x, w, bias, factors, default),
            ("x", x), ("weight", w), ("bias", bias), ("lora_A", a), ("lora_B", b), ("lora_B bias", loraBias));
    }

    [Fact]
    public void DoraGradientsOfInputFactorsAndMagnitude()
    {
        var x = Leaf(10, 1f, 3, 9);
        var w = new Parameter(TestUtil.Random(5 * 9, 11), [5, 9]);
        var a = Leaf(12, 1f, 2, 9);
        var b = Leaf(13, 1f, 5, 2);
        var m = Leaf(14, 1f, 5);
        var factors = new LoraFactors(a, b, 0.75f, Magnitude: m, Name: "dora");

        // The norm is detached (as in PEFT), so a finite difference in A or B would also move it: only x and m, whose
        // derivatives do not go through the norm, are checked here (DoraTests checks A and B with the norm held).
        AutogradTests.Check(() => Functional.LoraMatmul(x, w, null, factors, default), ("x", x), ("magnitude", m));

        // dA and dB against the double reference backward, the norm held at its value.
        var g = TestUtil.Random(3 * 5, 30);
        (a.Grad, b.Grad) = (null, null);
        Autograd.Tape.Backward(Functional.LoraMatmul(x, w, null, factors, default), g);
        var (xd, wd, ad, bd, md) = (TestUtil.ToDouble(x.Data), TestUtil.ToDouble(w.Data), TestUtil.ToDouble(a.Data), TestUtil.ToDouble(b.Data), TestUtil.ToDouble(m.Data));
        var norms = DoraNormReference.RowNorms(wd, ad, bd, 0.75, 9, 5, 2);
        var (_, da, db, _) = DoraReference.Backward(TestUtil.ToDouble(g), xd, wd, ad, bd, md, norms, 0.75, 3, 9, 5, 2);
        TestUtil.AssertClose(a.Grad!, da, 1e-4, 1e-4, "dA");
        TestUtil.AssertClose(b.Grad!, db, 1e-4, 1e-4, "dB");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraBranchGradientsOnAllRowsAndOnARowSubset(bool subset)
    {
        var x = Leaf(15, 1f, 5, 8);
        var y0 = Leaf(16, 1f, 5, 6);
        var a = Leaf(17, 1f, 3, 8);
        var b = Leaf(18, 1f, 6, 3);
        var loraBias = Leaf(19, 1f, 6);
        var factors = new LoraFactors(a, b, 2f, loraBias, Name: "branch");
        int[]? rows = subset ? [4, 1, 2] : null;

        // y is consumed by the op, so each evaluation starts from a fresh tensor that passes its gradient to y0.
        Tensor Forward() => Functional.LoraBranch(Functional.Add(y0, Tensor.Zeros(5, 6)), x, factors, rows, default);
        AutogradTests.Check(Forward, ("x", x), ("y", y0), ("lora_A", a), ("lora_B", b), ("lora_B bias", loraBias));
    }

    [Fact]
    public void LoraBranchLeavesRowsOutsideItsSubsetUnchanged()
    {
        var x = new Tensor(TestUtil.Random(4 * 8, 20), 4, 8);
        var y = new Tensor(TestUtil.Random(4 * 6, 21), 4, 6);
        var before = (float[])y.Data.Clone();
        var factors = new LoraFactors(new Tensor(TestUtil.Random(3 * 8, 22), 3, 8), new Tensor(TestUtil.Random(6 * 3, 23), 6, 3), 1f);
        var result = Functional.LoraBranch(y, x, factors, [2], default).Data;
        foreach (int row in new[] { 0, 1, 3 })
        {
            Assert.Equal(before.AsSpan(row * 6, 6).ToArray(), result.AsSpan(row * 6, 6).ToArray());
        }

        Assert.NotEqual(before.AsSpan(12, 6).ToArray(), result.AsSpan(12, 6).ToArray());
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Functional.LoraBranch(y, x, factors, [4], default));
        Assert.Contains("outside [0, 4)", e.Message);
    }

    [Fact]
    public void OpsNameTheAdapterAndTheShapeThatDoNotFit()
    {
        var x = new Tensor(new float[2 * 8], 2, 8);
        var w = new Tensor(new float[6 * 8], 6, 8);
        var wrong = new LoraFactors(new Tensor(new float[3 * 7], 3, 7), new Tensor(new float[6 * 3], 6, 3), 1f, Name: "tenant-a");
        var e = Assert.Throws<ArgumentException>(() => Functional.LoraMatmul(x, w, null, wrong, default));
        Assert.Contains("adapter 'tenant-a'", e.Message);
        Assert.Contains("A [3, 7]", e.Message);
        var shape = Assert.Throws<ArgumentException>(() => Functional.Gemm(new Tensor(new float[2 * 7], 2, 7), w, null));
        Assert.Contains("needs 8", shape.Message);
    }
}
