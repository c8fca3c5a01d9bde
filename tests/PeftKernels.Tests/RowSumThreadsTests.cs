// The threaded row copies and sums of MixLoRA's host path (docs/formats/mixlora.md#cost), on awkward sizes below and
// above the threading threshold (RowSelect.ParallelFloats), repeated, missing and out-of-order rows:
//   RowSelect.Gather / ScatterSum / ScatterAdd         = RowSelectReference (double), and the same bits for 1, 2, 3 and 5
//                                                        threads (1 thread is the serial loop in j order)
//   MoeRouting.RoutedSum / RoutedSumBackward           = MoeRoutingReference.RoutedSum and its adjoint (double), and the same
//                                                        bits for 1, 2, 3 and 5 threads (accumulating or not, dpart over part,
//                                                        dw or dpart skipped)
// These kernels move rows with TensorPrimitives (no SimdPath of their own), so only the thread count varies.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class RowSumThreadsTests
{
    private static readonly int[] ThreadCounts = [1, 2, 3, 5];

    /// <summary>(targets n, cols, source rows): small (serial), and large enough to split (rows·cols ≥ RowSelect.ParallelFloats).</summary>
    public static TheoryData<int, int, int> Shapes() => new() { { 7, 19, 9 }, { 13, 1031, 97 }, { 5, 2049, 41 }, { 64, 1, 70_000 } };

    /// <summary>Source rows into n targets: repeats, out of order, target 1 never named (when n &gt; 2).</summary>
    private static int[] Rows(int count, int n) => [.. Enumerable.Range(0, count).Select(j => n > 2 && ((j * 5) + 3) % n == 1 ? 0 : ((j * 5) + 3) % n)];

    [Theory]
    [MemberData(nameof(Shapes))]
    public void GatherAndScattersMatchTheReferenceWithTheSameBitsForAnyThreadCount(int n, int cols, int count)
    {
        var rows = Rows(count, n);
        var source = TestUtil.Random(n * cols, 1);
        var x = TestUtil.Random(count * cols, 2);
        var old = TestUtil.Random(n * cols, 3);
        float[]? gather1 = null, sum1 = null, add1 = null;
        foreach (int threads in ThreadCounts)
        {
            var options = new KernelOptions(threads);
            var gathered = Enumerable.Repeat(float.NaN, count * cols).ToArray();
            RowSelect.Gather(source, rows, gathered, n, cols, options);
            var sum = Enumerable.Repeat(float.NaN, n * cols).ToArray(); // every element must be written
            RowSelect.ScatterSum(x, rows, sum, n, cols, options);
            var added = (float[])old.Clone();
            RowSelect.ScatterAdd(x, rows, added, n, cols, options);
            if (threads == 1)
            {
                Assert.Equal(RowSelectReference.Gather(TestUtil.ToDouble(source), rows, cols).Select(v => (float)v), gathered);
                var scattered = RowSelectReference.Scatter(TestUtil.ToDouble(x), rows, n, cols);
                double atol = TestUtil.DotAtol((count / n) + 1); // fp32 sums of up to count / n + 1 rows per target
                TestUtil.AssertClose(sum, scattered, atol, 1e-6, "scatter-sum");
                TestUtil.AssertClose(added, [.. scattered.Select((v, i) => v + old[i])], atol, 1e-6, "scatter-add");
                var zeros = new float[n * cols];
                RowSelect.ScatterAdd(x, rows, zeros, n, cols, options);
                Assert.Equal(zeros, sum); // scatter-sum = scatter-add into zeros, bit for bit
                (gather1, sum1, add1) = (gathered, sum, added);
                continue;
            }

            Assert.Equal(gather1, gathered);
            Assert.Equal(sum1, sum);
            Assert.Equal(add1, added);
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void RoutedSumAndItsBackwardMatchTheReferenceWithTheSameBitsForAnyThreadCount(int n, int c, int count)
    {
        const int k = 3;
        var rows = Rows(count, n);
        var slots = Enumerable.Range(0, count).Select(i => (i * 7) % k).ToArray();
        var part = TestUtil.Random(count * c, 4);
        var w = TestUtil.Random(n * k, 5);
        var g = TestUtil.Random(n * c, 6);
        var old = TestUtil.Random(count * c, 7);
        var start = TestUtil.Random(n * c, 8);
        var yRef = MoeRoutingReference.RoutedSum([TestUtil.ToDouble(part)], [rows], [slots], TestUtil.ToDouble(w), n, c, k);
        var (dpartRef, dwRef) = (new double[count * c], new double[n * k]);
        for (int i = 0; i < count; i++)
        {
            int at = (rows[i] * k) + slots[i];
            for (int j = 0; j < c; j++)
            {
                dpartRef[(i * c) + j] = (double)w[at] * g[(rows[i] * c) + j];
                dwRef[at] += (double)part[(i * c) + j] * g[(rows[i] * c) + j];
            }
        }

        float[][]? first = null;
        foreach (int threads in ThreadCounts)
        {
            var options = new KernelOptions(threads);
            var y = (float[])start.Clone();
            MoeRouting.RoutedSum(part, rows, slots, w, y, n, c, k, options);
            var (dpart, dw) = (new float[count * c], new float[n * k]);
            MoeRouting.RoutedSumBackward(g, part, rows, slots, w, dpart, dw, n, c, k, options: options);
            var dacc = (float[])old.Clone();
            var dw2 = new float[n * k];
            MoeRouting.RoutedSumBackward(g, part, rows, slots, w, dacc, dw2, n, c, k, accumulate: true, options);
            var shared = (float[])part.Clone(); // dpart over part's own storage: dw still sees the forward's part
            var dw3 = new float[n * k];
            MoeRouting.RoutedSumBackward(g, shared, rows, slots, w, shared, dw3, n, c, k, options: options);
            var dpartOnly = new float[count * c];
            MoeRouting.RoutedSumBackward(g, part, rows, slots, w, dpartOnly, [], n, c, k, options: options);
            var dwOnly = new float[n * k];
            MoeRouting.RoutedSumBackward(g, part, rows, slots, w, [], dwOnly, n, c, k, options: options);

            Assert.Equal(dw, dw2);
            Assert.Equal(dw, dw3);
            Assert.Equal(dw, dwOnly);
            Assert.Equal(dpart, shared);
            Assert.Equal(dpart, dpartOnly);
            var results = new[] { y, dpart, dw, dacc };
            if (first == null)
            {
                TestUtil.AssertClose(y, [.. yRef.Select((v, i) => v + start[i])], TestUtil.DotAtol((count / n) + 1), 1e-5, "routed sum");
                TestUtil.AssertClose(dpart, dpartRef, 1e-6, 1e-6, "dpart");
                TestUtil.AssertClose(dacc, [.. dpartRef.Select((v, i) => v + old[i])], 1e-6, 1e-6, "dpart accumulated");
                TestUtil.AssertClose(dw, dwRef, TestUtil.DotAtol(c * 4), 1e-5, "dw");
                first = results;
                continue;
            }

            for (int r = 0; r < results.Length; r++)
            {
                Assert.Equal(first[r], results[r]);
            }
        }
    }

    [Fact]
    public void BadRowsAreRefusedOnEveryPath()
    {
        int n = 4, cols = 20_000;
        var x = new float[3 * cols];
        var y = new float[n * cols];
        foreach (int threads in ThreadCounts)
        {
            var options = new KernelOptions(threads);
            Assert.Throws<ArgumentOutOfRangeException>(() => RowSelect.Gather(y, [0, 4, 1], x, n, cols, options));
            Assert.Throws<ArgumentOutOfRangeException>(() => RowSelect.ScatterSum(x, [0, 1, -1], y, n, cols, options));
            Assert.Throws<ArgumentOutOfRangeException>(() => RowSelect.ScatterAdd(x, [0, 1, 4], y, n, cols, options));
            var e = Assert.Throws<ArgumentException>(() => MoeRouting.RoutedSum(x, [0, 1, 4], [0, 0, 0], new float[n], y, n, cols, 1, options));
            Assert.Contains("outside", e.Message, StringComparison.Ordinal);
        }
    }
}
