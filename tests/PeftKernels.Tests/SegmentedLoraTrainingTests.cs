// Segmented LoRA for training (Kernels.Cpu.SegmentedLoraTraining, Functional.SegmentedLoraBranch): forward and backward
// against the double reference (SegmentedLoraReference.Sgmv / SgmvBackward) with ranks 1–17, segments of 0, 1 and odd
// rows, rows before the first and after the last segment, every SIMD path and 1 or 2 threads; dropout equals the
// kernel without dropout on each segment's dropped rows; the op's gradients by central finite differences; each
// segment equals a LoraBranch on the same rows (the MixLoRA per-expert path it replaces: y bit for bit, the gradients
// within fp32 rounding, as dB and dh come from one pass over g); bad input.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using PeftKernels.Nn;
using PeftKernels.Ops;
using Xunit;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Tests;

public class SegmentedLoraTrainingTests
{
    private const int InF = 37, OutF = 29, N = 24;

    // Rows 0–1 before the first segment; segments of 0, 1, 7, 0, 3, 9 and 1 rows; rows 23.. after the last.
    internal static readonly int[] Starts = [2, 2, 3, 10, 10, 13, 22, 23];
    internal static readonly int[] Ranks = [3, 1, 17, 2, 16, 7, 5];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>The adapters of the segments (ranks <see cref="Ranks"/>, in 37, out 29); shared with SegmentedLoraGatherTests.</summary>
    internal static (float[][] A, float[][] B, float[] Scales) Adapters(int seed)
    {
        var a = Ranks.Select((r, t) => TestUtil.Random(r * InF, seed + (2 * t))).ToArray();
        var b = Ranks.Select((r, t) => TestUtil.Random(OutF * r, seed + (2 * t) + 1)).ToArray();
        float[] scales = [.. Ranks.Select((_, t) => t % 3 == 0 ? -1.5f : 0.25f + t)];
        return (a, b, scales);
    }

    private static double[][] ToDouble(float[][] m) => [.. m.Select(TestUtil.ToDouble)];

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ForwardAndBackwardMatchTheReference(SimdPath path, int threads)
    {
        var (a, b, scales) = Adapters(10);
        var x = TestUtil.Random(N * InF, 1);
        var y = TestUtil.Random(N * OutF, 2);
        var g = TestUtil.Random(N * OutF, 3);
        var options = new KernelOptions(threads, path);
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var seeds = new ulong[Ranks.Length];
        var y0 = (float[])y.Clone();
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, 0f, y, h, N, InF, OutF, options);

        var (xd, ad, bd, sd) = (TestUtil.ToDouble(x), ToDouble(a), ToDouble(b), scales.Select(s => (double)s).ToArray());
        var (yRef, _) = SegmentedLoraReference.Sgmv(xd, Starts, [.. Enumerable.Range(0, Ranks.Length)], sd, ad, bd, TestUtil.ToDouble(y0), N, InF, OutF);
        TestUtil.AssertClose(y, yRef, 1e-4, 1e-4, "y");

        var dx = Enumerable.Repeat(float.NaN, N * InF).ToArray(); // every element must be written
        var da = a.Select(m => (float[]?)Enumerable.Repeat(float.NaN, m.Length).ToArray()).ToArray();
        var db = b.Select(m => (float[]?)Enumerable.Repeat(float.NaN, m.Length).ToArray()).ToArray();
        SegmentedLoraTraining.Backward(g, x, Starts, h, a, b, scales, seeds, 0f, dx, da, db, N, InF, OutF, options);
        var (dxRef, daRef, dbRef) = SegmentedLoraReference.SgmvBackward(TestUtil.ToDouble(g), xd, Starts, sd, ad, bd, N, InF, OutF);
        TestUtil.AssertClose(dx, dxRef, 1e-4, 1e-4, "dx");
        for (int t = 0; t < Ranks.Length; t++)
        {
            TestUtil.AssertClose(da[t]!, daRef[t], 1e-4, 1e-4, $"dA[{t}]");
            TestUtil.AssertClose(db[t]!, dbRef[t], 1e-4, 1e-4, $"dB[{t}]");
        }
    }

    [Fact]
    public void EachSegmentEqualsALoraBranchOnItsRows()
    {
        var (a, b, scales) = Adapters(20);
        var x = TestUtil.Random(N * InF, 4);
        var y = TestUtil.Random(N * OutF, 5);
        var g = TestUtil.Random(N * OutF, 6);
        var options = new KernelOptions(1);
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var expectedY = (float[])y.Clone();
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, new ulong[Ranks.Length], 0f, y, h, N, InF, OutF, options);
        var dx = new float[N * InF];
        var da = a.Select(m => (float[]?)new float[m.Length]).ToArray();
        var db = b.Select(m => (float[]?)new float[m.Length]).ToArray();
        SegmentedLoraTraining.Backward(g, x, Starts, h, a, b, scales, new ulong[Ranks.Length], 0f, dx, da, db, N, InF, OutF, options);
        for (int t = 0; t < Ranks.Length; t++)
        {
            int m = Starts[t + 1] - Starts[t], r = Ranks[t];
            if (m == 0)
            {
                Assert.All(da[t]!, v => Assert.Equal(0f, v));
                continue;
            }

            var lo = new LoraOptions(0, 0, options);
            var xs = x.AsSpan(Starts[t] * InF, m * InF);
            var hs = new float[m * r];
            CpuLoraBranch.ForwardAccumulate(xs, null, a[t], b[t], default, scales[t], expectedY.AsSpan(Starts[t] * OutF, m * OutF), hs, m, InF, OutF, r, lo);
            var (dxs, das, dbs) = (new float[m * InF], new float[r * InF], new float[OutF * r]);
            CpuLoraBranch.Backward(g.AsSpan(Starts[t] * OutF, m * OutF), xs, null, hs, a[t], b[t], scales[t], dxs, das, dbs, m, InF, OutF, r, lo);
            // The backward with dB takes dB and dh from one pass over g (LowRankGrads): another summation order than LoraBranch's GEMMs.
            TestUtil.AssertClose(dx.AsSpan(Starts[t] * InF, m * InF), dxs, 1e-5, 1e-5, $"dx[{t}]");
            TestUtil.AssertClose(da[t]!, das, 1e-5, 1e-5, $"dA[{t}]");
            TestUtil.AssertClose(db[t]!, dbs, 1e-5, 1e-5, $"dB[{t}]");
        }

        Assert.Equal(expectedY, y);
    }

    [Fact]
    public void DropoutEqualsNoDropoutOnEachSegmentsDroppedRows()
    {
        var (a, b, scales) = Adapters(30);
        var x = TestUtil.Random(N * InF, 7);
        var g = TestUtil.Random(N * OutF, 8);
        ulong[] seeds = [.. Ranks.Select((_, t) => (ulong)(100 + t))];
        const float p = 0.3f;
        var options = new KernelOptions(1);
        var dropped = (float[])x.Clone();
        for (int t = 0; t < Ranks.Length; t++)
        {
            var xs = dropped.AsSpan(Starts[t] * InF, (Starts[t + 1] - Starts[t]) * InF);
            Dropout.Apply(xs, xs, p, seeds[t], options);
        }

        var hLength = SegmentedLoraTraining.HLength(Starts, Ranks);
        var (y1, h1, y2, h2) = (new float[N * OutF], new float[hLength], new float[N * OutF], new float[hLength]);
        SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, p, y1, h1, N, InF, OutF, options);
        SegmentedLoraTraining.ForwardAccumulate(dropped, Starts, a, b, scales, seeds, 0f, y2, h2, N, InF, OutF, options);
        Assert.Equal(y2, y1);
        var (dx1, dx2) = (new float[N * InF], new float[N * InF]);
        var da1 = a.Select(m => (float[]?)new float[m.Length]).ToArray();
        var da2 = a.Select(m => (float[]?)new float[m.Length]).ToArray();
        SegmentedLoraTraining.Backward(g, x, Starts, h1, a, b, scales, seeds, p, dx1, da1, null, N, InF, OutF, options);
        SegmentedLoraTraining.Backward(g, dropped, Starts, h2, a, b, scales, seeds, 0f, dx2, da2, null, N, InF, OutF, options);
        for (int t = 0; t < Ranks.Length; t++)
        {
            Assert.Equal(da2[t], da1[t]);
            var dxs = dx2.AsSpan(Starts[t] * InF, (Starts[t + 1] - Starts[t]) * InF);
            Dropout.Apply(dxs, dxs, p, seeds[t], options);
        }

        Assert.Equal(dx2, dx1);
    }

    [Fact]
    public void OpGradientsByFiniteDifferences()
    {
        int[] starts = [1, 3, 3, 6];
        var x = new Parameter(TestUtil.Random(7 * 5, 40), [7, 5], trainable: true);
        var y0 = new Parameter(TestUtil.Random(7 * 4, 41), [7, 4], trainable: true);
        int[] ranks = [2, 1, 3];
        var aList = ranks.Select((r, t) => new Parameter(TestUtil.Random(r * 5, 42 + t), [r, 5], trainable: true)).ToArray();
        var bList = ranks.Select((r, t) => new Parameter(TestUtil.Random(4 * r, 52 + t), [4, r], trainable: true)).ToArray();
        var factors = ranks.Select((_, t) => new LoraFactors(aList[t], bList[t], 0.5f + t, Name: $"e{t}")).ToArray();

        // y is consumed by the op, so each evaluation starts from a fresh tensor that passes its gradient to y0.
        Tensor Forward() => Functional.SegmentedLoraBranch(Functional.Add(y0, Tensor.Zeros(7, 4)), x, factors, starts, 0f, null);
        AutogradTests.Check(Forward, ("x", x), ("y", y0), ("A0", aList[0]), ("B0", bList[0]), ("A2", aList[2]), ("B2", bList[2]));

        // The adapter of the empty segment gets no gradient at all.
        (factors[1].A.Grad, factors[1].B.Grad) = (null, null);
        Autograd.Tape.Backward(Forward(), TestUtil.Random(7 * 4, 60));
        Assert.Null(factors[1].A.Grad);
        Assert.Null(factors[1].B.Grad);
        Assert.NotNull(factors[2].A.Grad);
    }

    [Fact]
    public void BadInputIsRefusedWithTheReason()
    {
        var (a, b, scales) = Adapters(50);
        var x = new float[N * InF];
        var y = new float[N * OutF];
        var h = new float[SegmentedLoraTraining.HLength(Starts, Ranks)];
        var seeds = new ulong[Ranks.Length];
        int[] backwards = [.. Starts];
        (backwards[3], backwards[4]) = (backwards[4] + 1, backwards[3]);
        var e1 = Assert.Throws<ArgumentException>(() => SegmentedLoraTraining.ForwardAccumulate(x, backwards, a, b, scales, seeds, 0f, y, h, N, InF, OutF));
        Assert.Contains("segment start", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, 0f, y, new float[3], N, InF, OutF));
        Assert.Contains("h has 3 floats", e2.Message);
        var shortB = b.Select((m, t) => t == 2 ? new float[m.Length - 1] : m).ToArray();
        var e3 = Assert.Throws<ArgumentException>(() => SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, shortB, scales, seeds, 0f, y, h, N, InF, OutF));
        Assert.Contains("adapter 2", e3.Message);
        var e4 = Assert.Throws<ArgumentException>(() => SegmentedLoraTraining.ForwardAccumulate(x, Starts, a, b, scales, seeds, 1f, y, h, N, InF, OutF));
        Assert.Contains("dropout", e4.Message);
        var factors = new[] { new LoraFactors(new Tensor(new float[2 * InF], 2, InF), new Tensor(new float[OutF * 2], OutF, 2), 1f) };
        var e5 = Assert.Throws<ArgumentException>(() => Functional.SegmentedLoraBranch(new Tensor(y, N, OutF), new Tensor(x, N, InF), factors, [0, 3, 5], 0f, null));
        Assert.Contains("segment starts", e5.Message);
    }
}
