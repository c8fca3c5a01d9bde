// The buffer reuse of MixLoRA's host path (docs/formats/mixlora.md#cost): gradients written into storage that is
// already there instead of fresh [k·n, ·] buffers.
//   SwiGlu.Backward with dgate over gate and dup over up     = the same kernel into separate buffers, bit for bit,
//                                                              on every SIMD path, 1 and 2 threads, awkward sizes
//   Functional.SwiGluIntoInputs                               = Functional.SwiGlu's output and gradients; central
//                                                              finite differences through temporaries
//   MoeRouting.RoutedSumBackward(accumulate: true)            = the old gradient + the reference's w·g rows, with dw;
//                                                              dpart may be part's own storage
//   Functional.RoutedSum onto a part that already has a grad  gradients by central finite differences
//   RowSelect.ScatterSum                                      = RowSelectReference.Scatter, and ScatterAdd into zeros
//                                                              bit for bit (repeated, missing and out-of-order rows)
//   Functional.GatherRows onto an x that already has a grad   gradients by central finite differences
using PeftKernels.Autograd;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;
using CpuSwiGlu = PeftKernels.Kernels.Cpu.SwiGlu;

namespace PeftKernels.Tests;

public class MixLoraBufferReuseTests
{
    private static readonly int[] Sizes = [1, 7, 15, 16, 17, 33, 129, 40_000];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static Parameter Leaf(int seed, float range, params int[] shape) =>
        new(TestUtil.Random(shape.Aggregate(1, (a, d) => a * d), seed, range), shape, trainable: true);

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SwiGluBackwardOverItsInputsEqualsSeparateBuffers(SimdPath path, int threads)
    {
        var options = new KernelOptions(threads, path);
        foreach (int count in Sizes)
        {
            var gate = TestUtil.Random(count, count, 12f);
            var up = TestUtil.Random(count, count + 1);
            var dy = TestUtil.Random(count, count + 2);
            var dgate = new float[count];
            var dup = new float[count];
            CpuSwiGlu.Backward(dy, gate, up, dgate, dup, options);

            var (g2, u2) = ((float[])gate.Clone(), (float[])up.Clone());
            CpuSwiGlu.Backward(dy, g2, u2, g2, u2, options);
            Assert.Equal(dgate, g2);
            Assert.Equal(dup, u2);
        }
    }

    [Fact]
    public void SwiGluIntoInputsEqualsSwiGluAndPassesFiniteDifferences()
    {
        int rows = 5, cols = 19;
        var a = Leaf(1, 3f, rows, cols);
        var b = Leaf(2, 1f, rows, cols);
        var fa = TestUtil.Random(rows * cols, 3, 2f);
        var fb = TestUtil.Random(rows * cols, 4, 2f);
        var dy = TestUtil.Random(rows * cols, 5);

        // The reference: the plain op over the same temporaries.
        var expected = Functional.SwiGlu(Functional.ScaleElements(a, fa), Functional.ScaleElements(b, fb));
        Tape.Backward(expected, dy);
        var (da, db) = (a.Grad!, b.Grad!);
        a.Grad = null;
        b.Grad = null;

        var gate = Functional.ScaleElements(a, fa);
        var up = Functional.ScaleElements(b, fb);
        var gateValues = (float[])gate.Data.Clone();
        var y = Functional.SwiGluIntoInputs(gate, up);
        Assert.Equal(expected.Data, y.Data);
        Assert.Equal(gateValues, gate.Data); // the forward leaves the inputs alone
        Tape.Backward(y, dy);
        Assert.Equal(da, a.Grad);
        Assert.Equal(db, b.Grad);
        a.Grad = null;
        b.Grad = null;

        AutogradTests.Check(() => Functional.SwiGluIntoInputs(Functional.ScaleElements(a, fa), Functional.ScaleElements(b, fb)), ("a", a), ("b", b));
    }

    [Fact]
    public void SwiGluIntoInputsRefusesOneStorageForBoth()
    {
        var t = Leaf(6, 1f, 2, 3);
        var e = Assert.Throws<ArgumentException>(() => Functional.SwiGluIntoInputs(t, t));
        Assert.Contains("share one storage", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RoutedSumBackwardAccumulatesIntoAnExistingGradient()
    {
        int n = 6, c = 21, k = 2;
        int[] rows = [0, 2, 2, 5, 3];
        int[] slots = [1, 0, 1, 0, 1];
        var part = TestUtil.Random(rows.Length * c, 7);
        var w = TestUtil.Random(n * k, 8);
        var g = TestUtil.Random(n * c, 9);
        var old = TestUtil.Random(rows.Length * c, 10);

        var dpart = (float[])old.Clone();
        var dw = new float[n * k];
        MoeRouting.RoutedSumBackward(g, part, rows, slots, w, dpart, dw, n, c, k, accumulate: true);

        var dwRef = new double[n * k];
        var dpartRef = new double[part.Length];
        for (int i = 0; i < rows.Length; i++)
        {
            int at = (rows[i] * k) + slots[i];
            for (int j = 0; j < c; j++)
            {
                double gj = g[(rows[i] * c) + j];
                dpartRef[(i * c) + j] = old[(i * c) + j] + ((double)w[at] * gj);
                dwRef[at] += part[(i * c) + j] * gj;
            }
        }

        TestUtil.AssertClose(dpart, dpartRef, 1e-6, 1e-6, "dpart");
        TestUtil.AssertClose(dw, dwRef, 1e-5, 1e-5, "dw");

        // dpart over part's own storage: dw still sees the forward's part (each row's dot is taken before the row is overwritten).
        var shared = (float[])part.Clone();
        var dw2 = new float[n * k];
        MoeRouting.RoutedSumBackward(g, shared, rows, slots, w, shared, dw2, n, c, k);
        Assert.Equal(dw, dw2);
        var dpartFresh = new float[part.Length];
        MoeRouting.RoutedSumBackward(g, part, rows, slots, w, dpartFresh, [], n, c, k);
        Assert.Equal(dpartFresh, shared);
    }

    [Fact]
    public void RoutedSumOntoAPartWithAGradientPassesFiniteDifferences()
    {
        int n = 4, c = 5, k = 2;
        var part = Leaf(11, 1f, 6, c);
        var w = Leaf(12, 1f, n, k);
        int[] rows = [0, 1, 1, 2, 3, 3];
        int[] slots = [0, 0, 1, 1, 0, 1];

        // The gather is recorded after the routed sum, so its backward writes part's gradient first and the routed sum adds to it.
        Tensor Forward() => Functional.Add(Functional.RoutedSum([part], [rows], [slots], w, n), Functional.GatherRows(part, [5, 0, 2, 2]));
        AutogradTests.Check(Forward, ("part", part), ("w", w));
    }

    [Fact]
    public void ScatterSumEqualsTheReferenceAndScatterAddIntoZeros()
    {
        int n = 7, cols = 19;
        int[] rows = [3, 0, 3, 6, 3, 0, 5];
        var x = TestUtil.Random(rows.Length * cols, 13);
        var y = Enumerable.Repeat(float.NaN, n * cols).ToArray(); // every element must be written
        RowSelect.ScatterSum(x, rows, y, n, cols);
        TestUtil.AssertClose(y, RowSelectReference.Scatter(TestUtil.ToDouble(x), rows, n, cols), 1e-6, 1e-6, "scatter-sum");
        var zeros = new float[n * cols];
        RowSelect.ScatterAdd(x, rows, zeros, n, cols);
        Assert.Equal(zeros, y);
        Assert.Throws<ArgumentOutOfRangeException>(() => RowSelect.ScatterSum(x, [.. rows[..^1], 7], y, n, cols));
    }

    [Fact]
    public void GatherRowsOntoAnXWithAGradientPassesFiniteDifferences()
    {
        var x = Leaf(14, 1f, 5, 4);
        var f = TestUtil.Random(20, 15, 2f);

        // The gather is recorded first, so the scale's backward writes x's gradient before the gather adds its rows to it.
        Tensor Forward()
        {
            var gathered = Functional.GatherRows(x, [4, 1, 1, 0, 2]);
            return Functional.Add(gathered, Functional.ScaleElements(x, f));
        }

        AutogradTests.Check(Forward, ("x", x));
    }
}
