// SegmentedLoraKernels (GPU SGMV and BGMV) on ILGPU's CPU accelerator against SegmentedLoraReference
// and the CPU SegmentedLora: 1, 7 and 64 adapters of mixed ranks (1 … 128) in one batch, awkward
// sizes, no-adapter rows, per-row scales with 0 and negatives, rows in shuffled adapter order; SGMV
// with empty segments, a no-adapter segment and rows outside every segment; SGMV = BGMV bit for bit
// on the same rows; a longer scratch; and the argument checks (launchers and host checks, the host
// checks with the CPU kernel's messages).
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;
using IntView = ILGPU.Runtime.ArrayView1D<int, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuSegmentedLoraTests(GpuFixture gpu)
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] RankSet = [1, 3, 16, 64, 128];
    private static readonly float[] ScaleSet = [0f, -1.5f, 0.5f, 2.25f, -0.75f, 1f];

    /// <summary>K adapters with ranks from RankSet (the first two 1 and 128 when K ≥ 2), packed.</summary>
    private static (float[][] A, float[][] B, SegmentedLoraPack Pack) MakeAdapters(int k, int inF, int outF, int seed)
    {
        var rng = new Random(seed);
        var ranks = Enumerable.Range(0, k).Select(i => k > 1 && i < 2 ? (i == 0 ? 1 : 128) : RankSet[rng.Next(RankSet.Length)]).ToArray();
        var a = ranks.Select((r, i) => TestUtil.Random(r * inF, seed + (2 * i) + 1)).ToArray();
        var b = ranks.Select((r, i) => TestUtil.Random(outF * r, seed + (2 * i) + 2)).ToArray();
        return (a, b, SegmentedLoraPack.Pack(a, b, inF, outF));
    }

    private static double[][] ToDouble(float[][] m) => [.. m.Select(TestUtil.ToDouble)];

    /// <summary>As SegmentedLoraTests: |y − ref| ≤ 2·((in + r + 2)·u·|s|·|B|·|A|·|x| + u·|ref|); the CPU kernel within twice that.</summary>
    private static void AssertMatches(float[] y, float[] cpu, (double[] Y, double[] Mag) reference, int inF, int maxRank, string what)
    {
        for (int e = 0; e < y.Length; e++)
        {
            double bound = 2 * (((inF + maxRank + 2) * U * reference.Mag[e]) + (U * Math.Abs(reference.Y[e])));
            double diff = Math.Abs(y[e] - reference.Y[e]);
            Assert.True(diff <= bound, $"{what}: element {e} is {y[e]}, reference {reference.Y[e]} (|diff| {diff:G3} > {bound:G3})");
            double cpuDiff = Math.Abs(y[e] - cpu[e]);
            Assert.True(cpuDiff <= 2 * bound, $"{what}: element {e} is {y[e]}, CPU {cpu[e]} (|diff| {cpuDiff:G3} > {2 * bound:G3})");
        }
    }

    /// <summary>Rows whose adapter is −1 or whose scale is 0 keep y0's bits.</summary>
    private static void AssertUntouched(float[] y, float[] y0, int[] adapterOfRow, float[] scales, int outF, string what)
    {
        for (int i = 0; i < adapterOfRow.Length; i++)
        {
            if (adapterOfRow[i] < 0 || scales[i] == 0f)
            {
                Assert.True(y0.AsSpan(i * outF, outF).SequenceEqual(y.AsSpan(i * outF, outF)), $"{what}: row {i} (adapter {adapterOfRow[i]}, scale {scales[i]}) changed");
            }
        }
    }

    private float[] RunBgmv(SegmentedLoraPack pack, float[] x, int[] adapterOfRow, float[] scales, float[] y0, int n, int inF, int outF, int extraScratch = 0)
    {
        int maxRank = SegmentedLoraKernels.CheckAdapters(pack.Ranks, pack.AOffsets, pack.BOffsets, pack.Factors.Length, inF, outF);
        SegmentedLoraKernels.CheckRows(adapterOfRow, pack.Ranks.Length);
        using var f = gpu.Upload(pack.Factors);
        using var r = gpu.Upload(pack.Ranks);
        using var ao = gpu.Upload(pack.AOffsets);
        using var bo = gpu.Upload(pack.BOffsets);
        using var dx = gpu.Upload(x);
        using var rows = gpu.Upload(adapterOfRow);
        using var s = gpu.Upload(scales);
        using var y = gpu.Upload(y0);
        using var h = gpu.Poisoned((n * maxRank) + extraScratch);
        SegmentedLoraKernels.Bgmv(gpu.Accelerator, dx.View, rows.View, s.View, f.View, r.View, ao.View, bo.View, maxRank, y.View, h.View, n, inF, outF);
        return gpu.Download(y.View);
    }

    private float[] RunSgmv(SegmentedLoraPack pack, float[] x, int[] starts, int[] segAdapters, float[] segScales, float[] y0, int n, int inF, int outF)
    {
        int maxRank = SegmentedLoraKernels.CheckAdapters(pack.Ranks, pack.AOffsets, pack.BOffsets, pack.Factors.Length, inF, outF);
        SegmentedLoraKernels.CheckSegments(starts, segAdapters, n, pack.Ranks.Length);
        using var f = gpu.Upload(pack.Factors);
        using var r = gpu.Upload(pack.Ranks);
        using var ao = gpu.Upload(pack.AOffsets);
        using var bo = gpu.Upload(pack.BOffsets);
        using var dx = gpu.Upload(x);
        using var st = gpu.Upload(starts);
        using var sa = gpu.Upload(segAdapters);
        using var ss = gpu.Upload(segScales);
        using var y = gpu.Upload(y0);
        using var h = gpu.Poisoned(n * maxRank);
        SegmentedLoraKernels.Sgmv(gpu.Accelerator, dx.View, st.View, sa.View, ss.View, f.View, r.View, ao.View, bo.View, maxRank, y.View, h.View, n, inF, outF);
        return gpu.Download(y.View);
    }

    [Theory]
    [InlineData(6, 37, 130, 1)]
    [InlineData(9, 130, 37, 7)]
    [InlineData(12, 37, 37, 64)]
    public void BgmvMatchesReferenceAndCpu(int n, int inF, int outF, int k)
    {
        var (a, b, pack) = MakeAdapters(k, inF, outF, (k * 100) + n);
        var rng = new Random(k + n);

        // Shuffled adapter order (adapters 0 and 1, ranks 1 and 128, among them), −1 rows, and every scale of ScaleSet (0 and negatives).
        var adapterOfRow = Enumerable.Range(0, n).Select(i => i % 5 == 3 ? -1 : (i * 13) % k).OrderBy(_ => rng.Next()).ToArray();
        var scales = Enumerable.Range(0, n).Select(i => ScaleSet[i % ScaleSet.Length]).ToArray();
        var x = TestUtil.Random(n * inF, 1);
        var y0 = TestUtil.Random(n * outF, 2);

        var y = RunBgmv(pack, x, adapterOfRow, scales, y0, n, inF, outF, extraScratch: 5);
        var cpu = (float[])y0.Clone();
        SegmentedLora.Bgmv(x, adapterOfRow, scales, pack.Adapters, cpu, n, inF, outF);
        var reference = SegmentedLoraReference.Bgmv(TestUtil.ToDouble(x), adapterOfRow, TestUtil.ToDouble(scales), ToDouble(a), ToDouble(b),
            TestUtil.ToDouble(y0), n, inF, outF);
        string what = $"BGMV n {n} in {inF} out {outF} K {k}";
        AssertMatches(y, cpu, reference, inF, pack.Ranks.Max(), what);
        AssertUntouched(y, y0, adapterOfRow, scales, outF, what);
        Assert.Contains(adapterOfRow, v => v < 0);
        Assert.NotEqual(y0, y);
    }

    [Theory]
    [InlineData(10, 37, 130, 1)]
    [InlineData(11, 130, 37, 7)]
    [InlineData(14, 37, 37, 64)]
    public void SgmvMatchesReferenceCpuAndBgmv(int n, int inF, int outF, int k)
    {
        var (a, b, pack) = MakeAdapters(k, inF, outF, (k * 100) + n + 1);

        // Row 0 before the first segment, an empty segment first and in the middle, a no-adapter segment, a scale-0 segment,
        // adapters 0 and 1 (ranks 1 and 128 when K ≥ 2; rank 128 on one row only, the simulated device is slow), the last row after the end.
        int[] starts = [1, 1, 3, 5, 5, 6, n - 2, n - 1];
        int[] segAdapters = [k - 1, 0, -1, k / 2, k - 1, k - 1, 1 % k];
        float[] segScales = [1f, -1.5f, 2f, 0.5f, 0f, 0.75f, 1.25f];
        var x = TestUtil.Random(n * inF, 3);
        var y0 = TestUtil.Random(n * outF, 4);

        var y = RunSgmv(pack, x, starts, segAdapters, segScales, y0, n, inF, outF);
        var cpu = (float[])y0.Clone();
        SegmentedLora.Sgmv(x, starts, segAdapters, segScales, pack.Adapters, cpu, n, inF, outF);
        var reference = SegmentedLoraReference.Sgmv(TestUtil.ToDouble(x), starts, segAdapters, TestUtil.ToDouble(segScales), ToDouble(a), ToDouble(b),
            TestUtil.ToDouble(y0), n, inF, outF);
        string what = $"SGMV n {n} in {inF} out {outF} K {k}";
        AssertMatches(y, cpu, reference, inF, pack.Ranks.Max(), what);

        // The same rows as BGMV (each row its segment's adapter and scale, −1 outside); through BGMV: the same bits.
        var adapterOfRow = Enumerable.Repeat(-1, n).ToArray();
        var rowScales = new float[n];
        for (int t = 0; t < segAdapters.Length; t++)
        {
            for (int i = starts[t]; i < starts[t + 1]; i++)
            {
                (adapterOfRow[i], rowScales[i]) = (segAdapters[t], segScales[t]);
            }
        }

        AssertUntouched(y, y0, adapterOfRow, rowScales, outF, what);
        Assert.Equal(-1, adapterOfRow[0]);
        Assert.Equal(-1, adapterOfRow[n - 1]);
        if (k == 64)
        {
            Assert.Equal(RunBgmv(pack, x, adapterOfRow, rowScales, y0, n, inF, outF), y); // one case: the simulated device is slow
        }
    }

    [Fact]
    public void NoRowsNoAdaptersOrAllNoAdapterRowsLeaveYAlone()
    {
        const int n = 3, inF = 5, outF = 4;
        var (_, _, pack) = MakeAdapters(2, inF, outF, 9);
        var x = TestUtil.Random(n * inF, 5);
        var y0 = TestUtil.Random(n * outF, 6);
        Assert.Equal(y0, RunBgmv(pack, x, [-1, -1, -1], [1f, 2f, 3f], y0, n, inF, outF));
        Assert.Equal(y0, RunSgmv(pack, x, [0, 3], [-1], [1f], y0, n, inF, outF));
        Assert.Equal(y0, RunSgmv(pack, x, [1, 1, 1], [0, 1], [1f, 1f], y0, n, inF, outF));
        Assert.Equal(y0, RunSgmv(pack, x, [2], [], [], y0, n, inF, outF));
        var none = SegmentedLoraPack.Pack([], [], inF, outF);
        Assert.Equal(y0, RunBgmv(none, x, [-1, -1, -1], [1f, 1f, 1f], y0, n, inF, outF));
        Assert.Empty(RunBgmv(pack, [], [], [], [], 0, inF, outF));
    }

    /// <summary>The host checks throw what the CPU kernel throws on the same bad input.</summary>
    private static void AssertSameError(Action gpuCheck, Action cpuKernel, string expected)
    {
        var onGpu = Assert.Throws<ArgumentException>(gpuCheck);
        var onCpu = Assert.Throws<ArgumentException>(cpuKernel);
        Assert.Contains(expected, onGpu.Message);
        Assert.Equal(onCpu.Message, onGpu.Message);
        Assert.Equal(onCpu.ParamName, onGpu.ParamName);
    }

    [Fact]
    public void HostChecksGiveTheCpuKernelsErrors()
    {
        const int n = 4, inF = 3, outF = 2;
        var pack = SegmentedLoraPack.Pack([new float[2 * inF], new float[inF]], [new float[outF * 2], new float[outF]], inF, outF);
        var x = new float[n * inF];
        var y = new float[n * outF];
        var scales = new float[n];

        AssertSameError(() => SegmentedLoraKernels.CheckRows([0, 1, 2, -1], 2),
            () => SegmentedLora.Bgmv(x, [0, 1, 2, -1], scales, pack.Adapters, y, n, inF, outF), "adapterOfRow[2] = 2 is outside [-1, 2)");
        AssertSameError(() => SegmentedLoraKernels.CheckRows([0, -2, 1, 1], 2),
            () => SegmentedLora.Bgmv(x, [0, -2, 1, 1], scales, pack.Adapters, y, n, inF, outF), "adapterOfRow[1] = -2");
        AssertSameError(() => SegmentedLoraKernels.CheckSegments([0, 3, 2], [0, 1], n, 2),
            () => SegmentedLora.Sgmv(x, [0, 3, 2], [0, 1], [1f, 1f], pack.Adapters, y, n, inF, outF), "segment starts must not decrease");
        AssertSameError(() => SegmentedLoraKernels.CheckSegments([0, 5], [0], n, 2),
            () => SegmentedLora.Sgmv(x, [0, 5], [0], [1f], pack.Adapters, y, n, inF, outF), "is past n = 4");
        AssertSameError(() => SegmentedLoraKernels.CheckSegments([-1, 2], [0], n, 2),
            () => SegmentedLora.Sgmv(x, [-1, 2], [0], [1f], pack.Adapters, y, n, inF, outF), "segmentStarts[0] = -1 is negative");
        AssertSameError(() => SegmentedLoraKernels.CheckSegments([0, 2, 4], [0, 5], n, 2),
            () => SegmentedLora.Sgmv(x, [0, 2, 4], [0, 5], [1f, 1f], pack.Adapters, y, n, inF, outF), "segmentAdapters[1] = 5 is outside [-1, 2)");
        AssertSameError(() => SegmentedLoraKernels.CheckSegments([0, 4], [0, 1], n, 2),
            () => SegmentedLora.Sgmv(x, [0, 4], [0, 1], [1f, 1f], pack.Adapters, y, n, inF, outF), "segmentStarts has length 2; expected 3");

        int pool = pack.Factors.Length;
        AssertSameError(() => SegmentedLoraKernels.CheckAdapters([2, 1], [0, pool - 1], [6, 12], pool, inF, outF),
            () => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales, new SegmentedLoraAdapters(pack.Factors, [2, 1], [0, pool - 1], [6, 12]), y, n, inF, outF),
            "aOffsets[1] = 14: adapter 1's A [1, 3] needs floats [14, 17) but the pool (factors) has 15");
        AssertSameError(() => SegmentedLoraKernels.CheckAdapters([2, 1], [0, 10], [6, 14], pool, inF, outF),
            () => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales, new SegmentedLoraAdapters(pack.Factors, [2, 1], [0, 10], [6, 14]), y, n, inF, outF),
            "bOffsets[1] = 14");
        AssertSameError(() => SegmentedLoraKernels.CheckAdapters([2, 0], [0, 10], [6, 13], pool, inF, outF),
            () => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales, new SegmentedLoraAdapters(pack.Factors, [2, 0], [0, 10], [6, 13]), y, n, inF, outF),
            "ranks[1] = 0; an adapter's rank must be ≥ 1");
        AssertSameError(() => SegmentedLoraKernels.CheckAdapters([2, 1], [0], [6, 13], pool, inF, outF),
            () => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales, new SegmentedLoraAdapters(pack.Factors, [2, 1], [0], [6, 13]), y, n, inF, outF),
            "aOffsets has length 1; expected 2");
        Assert.Equal(2, SegmentedLoraKernels.CheckAdapters(pack.Ranks, pack.AOffsets, pack.BOffsets, pool, inF, outF));
    }

    [Fact]
    public void LauncherChecksLengthsAndScratch()
    {
        const int n = 4, inF = 3, outF = 2;
        var pack = SegmentedLoraPack.Pack([new float[2 * inF], new float[inF]], [new float[outF * 2], new float[outF]], inF, outF);
        using var f = gpu.Upload(pack.Factors);
        using var r = gpu.Upload(pack.Ranks);
        using var ao = gpu.Upload(pack.AOffsets);
        using var bo = gpu.Upload(pack.BOffsets);
        using var x = gpu.Upload(new float[n * inF]);
        using var y = gpu.Upload(new float[n * outF]);
        using var rows = gpu.Upload(new int[n]);
        using var s = gpu.Upload(new float[n]);
        using var h = gpu.Upload(new float[n * 2]);
        using var starts = gpu.Upload(new[] { 0, 2, 4 });
        using var segs = gpu.Upload(new[] { 0, 1 });
        var acc = gpu.Accelerator;

        void Bgmv(FloatView xv, IntView rv, FloatView sv, IntView aov, int maxRank, FloatView yv, FloatView hv) =>
            SegmentedLoraKernels.Bgmv(acc, xv, rv, sv, f.View, r.View, aov, bo.View, maxRank, yv, hv, n, inF, outF);

        var e = Assert.Throws<ArgumentException>(() => Bgmv(x.View.SubView(1, 11), rows.View, s.View, ao.View, 2, y.View, h.View));
        Assert.Contains("x has length 11; expected 12 (n·inFeatures)", e.Message);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View.SubView(1, 3), s.View, ao.View, 2, y.View, h.View));
        Assert.Contains("adapterOfRow has length 3; expected 4", e.Message);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View, s.View.SubView(2, 2), ao.View, 2, y.View, h.View));
        Assert.Equal("scales", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View, s.View, ao.View, 2, y.View.SubView(1, 7), h.View));
        Assert.Contains("y has length 7; expected 8 (n·outFeatures)", e.Message);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View, s.View, ao.View.SubView(1, 1), 2, y.View, h.View));
        Assert.Contains("aOffsets has length 1; expected 2", e.Message);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View, s.View, ao.View, 2, y.View, h.View.SubView(1, 7)));
        Assert.Contains("h has length 7; expected at least 8", e.Message);
        e = Assert.Throws<ArgumentException>(() => Bgmv(x.View, rows.View, s.View, ao.View, 0, y.View, h.View));
        Assert.Equal("maxRank", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => SegmentedLoraKernels.Sgmv(acc, x.View, starts.View.SubView(1, 2), segs.View, s.View.SubView(0, 2),
            f.View, r.View, ao.View, bo.View, 2, y.View, h.View, n, inF, outF));
        Assert.Contains("segmentStarts has length 2; expected 3", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLoraKernels.Sgmv(acc, x.View, starts.View, segs.View, s.View,
            f.View, r.View, ao.View, bo.View, 2, y.View, h.View, n, inF, outF));
        Assert.Equal("segmentScales", e.ParamName);
        Assert.Throws<ArgumentNullException>(() => SegmentedLoraKernels.Sgmv(null!, x.View, starts.View, segs.View, s.View.SubView(0, 2),
            f.View, r.View, ao.View, bo.View, 2, y.View, h.View, n, inF, outF));
    }
}
