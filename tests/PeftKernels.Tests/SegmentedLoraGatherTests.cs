// The segmented LoRA's gathered forward and accumulating backward (docs/formats/mixlora.md#cost):
//   SegmentedLoraTraining.ForwardGather      = RowSelectReference.Gather then SegmentedLoraReference.Sgmv (double), on every
//                                              SIMD path and 1 or 2 threads, ranks 1–17, empty and 1-row segments, rows
//                                              outside every segment, repeated and out-of-order source rows; and
//                                              RowSelect.Gather + ForwardAccumulate bit for bit (y and h), with dropout too
//   SegmentedLoraTraining.Backward(accumulateDx) = the old dx + the reference's dx on the segments' rows, other rows
//                                              untouched, on every path and thread count; with dropout = the overwriting
//                                              backward's dx added to the old dx
//   Functional.SegmentedLoraBranchGathered   gradients (source, x, A, B) by central finite differences, also onto a source
//                                              and an x that already have a gradient; equals GatherRows + SegmentedLoraBranch
//   bad input: the row count and an out-of-range row are refused with the reason
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;

namespace PeftKernels.Tests;

public class SegmentedLoraGatherTests
{
    private const int InF = 37, OutF = 29, N = 24, SourceRows = 11;

    // Rows 0–1 before the first segment; segments of 0, 1, 7, 0, 3, 9 and 1 rows; rows 23.. after the last.
    private static readonly int[] Starts = SegmentedLoraTrainingTests.Starts;
    private static readonly int[] Ranks = SegmentedLoraTrainingTests.Ranks;

    // Source rows for the 24 rows of y: repeats, out of order, first and last row of the source.
    private static readonly int[] Rows = [.. Enumerable.Range(0, N).Select(i => ((i * 7) + 3) % SourceRows)];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static (float[][] A, float[][] B, float[] Scales) Adapters(int seed) => SegmentedLoraTrainingTests.Adapters(seed);

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void GatheredForwardMatchesTheReference(SimdPath path, int threads)
    {
        var (a, b, scales) = Adapters(10);
        var x = TestUtil.Random(N * InF, 1);
        var source = TestUtil.Random(SourceRows * OutF, 2);
        var options = new KernelOptions(threads, path);
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var y = Enumerable.Repeat(float.NaN, N * OutF).ToArray(); // every element must be written
        SegmentedLoraTraining.ForwardGather(source, Rows, SourceRows, x, Starts, a, b, scales, new ulong[Ranks.Length], 0f, y, h, N, InF, OutF, options);

        var y0 = RowSelectReference.Gather(TestUtil.ToDouble(source), Rows, OutF);
        var (yRef, _) = SegmentedLoraReference.Sgmv(TestUtil.ToDouble(x), Starts, [.. Enumerable.Range(0, Ranks.Length)], [.. scales.Select(s => (double)s)],
            [.. a.Select(TestUtil.ToDouble)], [.. b.Select(TestUtil.ToDouble)], y0, N, InF, OutF);
        TestUtil.AssertClose(y, yRef, 1e-4, 1e-4, "y");
    }

    [Theory]
    [InlineData(0f, 1)]
    [InlineData(0f, 2)]
    [InlineData(0.3f, 1)]
    [InlineData(0.3f, 2)]
    public void GatheredForwardEqualsGatherThenForwardBitForBit(float dropout, int threads)
    {
        var (a, b, scales) = Adapters(20);
        var x = TestUtil.Random(N * InF, 3);
        var source = TestUtil.Random(SourceRows * OutF, 4);
        ulong[] seeds = [.. Ranks.Select((_, t) => (ulong)(200 + t))];
        var options = new KernelOptions(threads);
        long hLength = SegmentedLoraTraining.HLength(Starts, Ranks);
        var (y1, h1, y2, h2) = (new float[N * OutF], new float[hLength], new float[N * OutF], new float[hLength]);
        SegmentedLoraTraining.ForwardGather(source, Rows, SourceRows, x, Starts, a, b, scales, seeds, dropout, y1, h1, N, InF, OutF, options);
        RowSelect.Gather(source, Rows, y2, SourceRows, OutF);
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, dropout, y2, h2, N, InF, OutF, options);
        Assert.Equal(y2, y1);
        Assert.Equal(h2, h1);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AccumulatingBackwardAddsTheReferenceDx(SimdPath path, int threads)
    {
        var (a, b, scales) = Adapters(30);
        var x = TestUtil.Random(N * InF, 5);
        var g = TestUtil.Random(N * OutF, 6);
        var options = new KernelOptions(threads, path);
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var seeds = new ulong[Ranks.Length];
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, 0f, new float[N * OutF], h, N, InF, OutF, options);
        var old = TestUtil.Random(N * InF, 7);
        var dx = (float[])old.Clone();
        var da = a.Select(m => (float[]?)new float[m.Length]).ToArray();
        SegmentedLoraTraining.Backward(g, x, Starts, h, a, b, scales, seeds, 0f, dx, da, null, N, InF, OutF, options, accumulateDx: true);

        var (dxRef, daRef, _) = SegmentedLoraReference.SgmvBackward(TestUtil.ToDouble(g), TestUtil.ToDouble(x), Starts, [.. scales.Select(s => (double)s)],
            [.. a.Select(TestUtil.ToDouble)], [.. b.Select(TestUtil.ToDouble)], N, InF, OutF);
        var expected = dxRef.Select((v, i) => v + old[i]).ToArray();
        TestUtil.AssertClose(dx, expected, 1e-4, 1e-4, "dx");
        // Rows outside every segment keep their old values exactly.
        Assert.Equal(old.AsSpan(0, Starts[0] * InF).ToArray(), dx.AsSpan(0, Starts[0] * InF).ToArray());
        Assert.Equal(old.AsSpan(Starts[^1] * InF).ToArray(), dx.AsSpan(Starts[^1] * InF).ToArray());
        for (int t = 0; t < Ranks.Length; t++)
        {
            TestUtil.AssertClose(da[t]!, daRef[t], 1e-4, 1e-4, $"dA[{t}]");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void AccumulatingBackwardWithDropoutAddsTheOverwritingOne(int threads)
    {
        var (a, b, scales) = Adapters(40);
        var x = TestUtil.Random(N * InF, 8);
        var g = TestUtil.Random(N * OutF, 9);
        ulong[] seeds = [.. Ranks.Select((_, t) => (ulong)(300 + t))];
        const float p = 0.3f;
        var options = new KernelOptions(threads);
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, p, new float[N * OutF], h, N, InF, OutF, options);
        var fresh = new float[N * InF];
        SegmentedLoraTraining.Backward(g, x, Starts, h, a, b, scales, seeds, p, fresh, null, null, N, InF, OutF, options);
        var old = TestUtil.Random(N * InF, 10);
        var dx = (float[])old.Clone();
        SegmentedLoraTraining.Backward(g, x, Starts, h, a, b, scales, seeds, p, dx, null, null, N, InF, OutF, options, accumulateDx: true);
        Assert.Equal(fresh.Select((v, i) => old[i] + v).ToArray(), dx);
    }

    [Fact]
    public void GatheredOpGradientsByFiniteDifferences()
    {
        int[] starts = [1, 3, 3, 6];
        int[] rows = [2, 0, 2, 1, 4, 0, 3];
        var x = new Parameter(TestUtil.Random(7 * 5, 40), [7, 5], trainable: true);
        var source = new Parameter(TestUtil.Random(5 * 4, 41), [5, 4], trainable: true);
        int[] ranks = [2, 1, 3];
        var aList = ranks.Select((r, t) => new Parameter(TestUtil.Random(r * 5, 42 + t), [r, 5], trainable: true)).ToArray();
        var bList = ranks.Select((r, t) => new Parameter(TestUtil.Random(4 * r, 52 + t), [4, r], trainable: true)).ToArray();
        var factors = ranks.Select((_, t) => new LoraFactors(aList[t], bList[t], 0.5f + t, Name: $"e{t}")).ToArray();

        // Fresh gradients: the op writes each source row once (ScatterSum) and x's dx into a new buffer.
        Tensor Plain() => Functional.SegmentedLoraBranchGathered(source, rows, x, factors, starts, 0f, null);
        AutogradTests.Check(Plain, ("x", x), ("source", source), ("A0", aList[0]), ("B0", bList[0]), ("A2", aList[2]), ("B2", bList[2]));

        // Onto gradients already there: ops recorded after this one use x and source, so their backward writes both gradients first.
        var w = new Tensor(TestUtil.Random(4 * 5, 60), 4, 5);
        Tensor Shared()
        {
            var seg = Functional.SegmentedLoraBranchGathered(source, rows, x, factors, starts, 0f, null);
            var fromX = Functional.Gemm(x, w, null);
            var fromSource = Functional.GatherRows(source, rows);
            return Functional.Add(Functional.Add(seg, fromX), fromSource);
        }

        AutogradTests.Check(Shared, ("x", x), ("source", source), ("A2", aList[2]), ("B2", bList[2]));
    }

    [Fact]
    public void BadInputIsRefusedWithTheReason()
    {
        var (a, b, scales) = Adapters(50);
        var x = new float[N * InF];
        var y = new float[N * OutF];
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var seeds = new ulong[Ranks.Length];
        var source = new float[SourceRows * OutF];
        var e1 = Assert.Throws<ArgumentException>(() => SegmentedLoraTraining.ForwardGather(source, Rows.AsSpan(1), SourceRows, x, Starts, a, b, scales, seeds, 0f, y, h, N, InF, OutF));
        Assert.Contains("source rows for the 24 rows", e1.Message);
        int[] bad = [.. Rows];
        bad[5] = SourceRows;
        var e2 = Assert.Throws<ArgumentOutOfRangeException>(() => SegmentedLoraTraining.ForwardGather(source, bad, SourceRows, x, Starts, a, b, scales, seeds, 0f, y, h, N, InF, OutF));
        Assert.Contains("rows[5] = 11", e2.Message);
        var factors = new[] { new LoraFactors(new Tensor(new float[2 * InF], 2, InF), new Tensor(new float[OutF * 2], OutF, 2), 1f) };
        var e3 = Assert.Throws<ArgumentException>(() => Functional.SegmentedLoraBranchGathered(new Tensor(source, SourceRows, OutF), [0, 1], new Tensor(x, N, InF), factors, [0, N], 0f, null));
        Assert.Contains("2 gathered rows", e3.Message);
    }
}
