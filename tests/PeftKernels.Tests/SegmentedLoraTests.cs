// The segmented multi-adapter LoRA kernels (SGMV, BGMV) against their double reference: 1–64 adapters of
// ranks 1–128 in one batch, no-adapter rows, awkward sizes, every SIMD path and 1 or 2 threads; results
// bit-identical for any thread count and between SGMV and BGMV; a mixed batch equals each row alone
// through LoraBranch within fp32 rounding; free offsets in the pool; and the argument checks.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Tests;

public class SegmentedLoraTests
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] RankSet = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 127, 128];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    public static TheoryData<SimdPath> AllPaths()
    {
        var data = new TheoryData<SimdPath>();
        foreach (var path in TestUtil.Paths)
        {
            data.Add(path);
        }

        return data;
    }

    /// <summary>K adapters with ranks drawn from RankSet (the first ones 1 and 128 when K ≥ 2).</summary>
    private static (float[][] A, float[][] B, int[] Ranks) MakeAdapters(int k, int inF, int outF, int seed)
    {
        var rng = new Random(seed);
        var ranks = Enumerable.Range(0, k).Select(i => i == 0 && k > 1 ? 1 : i == 1 ? 128 : RankSet[rng.Next(RankSet.Length)]).ToArray();
        var a = ranks.Select((r, i) => TestUtil.Random(r * inF, seed + (2 * i) + 1)).ToArray();
        var b = ranks.Select((r, i) => TestUtil.Random(outF * r, seed + (2 * i) + 2)).ToArray();
        return (a, b, ranks);
    }

    private static float[] Scales(int count, int seed) =>
        TestUtil.Random(count, seed).Select(v => v < -0.5f ? -1.5f : 0.25f + (2 * Math.Abs(v))).ToArray();

    private static double[][] ToDouble(float[][] m) => [.. m.Select(TestUtil.ToDouble)];

    /// <summary>|y − ref| ≤ 2·((in + r + 2)·u·|s|·|B|·|A|·|x| + u·|ref|): fp32 dots of length in, then of length r, then s· and +=.</summary>
    private static void AssertMatches(float[] y, (double[] Y, double[] Mag) reference, int inF, int maxRank, string what)
    {
        for (int i = 0; i < y.Length; i++)
        {
            double bound = 2 * (((inF + maxRank + 2) * U * reference.Mag[i]) + (U * Math.Abs(reference.Y[i])));
            double diff = Math.Abs(y[i] - reference.Y[i]);
            Assert.True(diff <= bound, $"{what}: element {i} is {y[i]}, reference {reference.Y[i]} (|diff| {diff:G3} > {bound:G3})");
        }
    }

    private static void CheckBgmv(int n, int inF, int outF, int k, SimdPath path, int threads, int seed)
    {
        var (a, b, ranks) = MakeAdapters(k, inF, outF, seed);
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
        var rng = new Random(seed + 500);
        var adapterOfRow = Enumerable.Range(0, n).Select(_ => rng.Next(-1, k)).ToArray();
        var x = TestUtil.Random(n * inF, seed + 501);
        var y0 = TestUtil.Random(n * outF, seed + 502);
        var scales = Scales(n, seed + 503);
        var y = (float[])y0.Clone();
        SegmentedLora.Bgmv(x, adapterOfRow, scales, pack.Adapters, y, n, inF, outF, new KernelOptions(threads, path));

        var reference = SegmentedLoraReference.Bgmv(TestUtil.ToDouble(x), adapterOfRow, TestUtil.ToDouble(scales), ToDouble(a), ToDouble(b),
            TestUtil.ToDouble(y0), n, inF, outF);
        AssertMatches(y, reference, inF, ranks.Max(), $"BGMV n {n} in {inF} out {outF} K {k} {path} t{threads}");
        for (int i = 0; i < n; i++)
        {
            if (adapterOfRow[i] < 0)
            {
                Assert.Equal(y0.AsSpan(i * outF, outF), y.AsSpan(i * outF, outF));
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void BgmvMatchesReference(SimdPath path, int threads)
    {
        int seed = 1;
        foreach (var (n, inF, outF) in new[] { (1, 1, 1), (3, 7, 5), (17, 33, 65), (64, 65, 31), (5, 768, 768) })
        {
            foreach (int k in new[] { 1, 3, 8, 64 })
            {
                CheckBgmv(n, inF, outF, k, path, threads, seed++);
            }
        }
    }

    /// <summary>Segments of n rows: empty ones, a no-adapter one, and rows before the first and after the last.</summary>
    private static (int[] Starts, int[] Adapters) Segments(int n, int k, int seed)
    {
        var rng = new Random(seed);
        var cuts = new List<int> { Math.Min(2, n) };
        while (cuts[^1] < n - 1)
        {
            cuts.Add(Math.Min(n - 1, cuts[^1] + rng.Next(0, 9)));
        }

        var adapters = Enumerable.Range(0, cuts.Count - 1).Select(t => t == 1 ? -1 : rng.Next(0, k)).ToArray();
        return ([.. cuts], adapters);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SgmvMatchesReference(SimdPath path, int threads)
    {
        int seed = 100;
        foreach (var (n, inF, outF, k) in new[] { (1, 3, 2, 1), (9, 7, 5, 2), (40, 33, 65, 8), (150, 65, 31, 64), (12, 768, 768, 5) })
        {
            var (a, b, ranks) = MakeAdapters(k, inF, outF, seed);
            var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
            var (starts, segAdapters) = Segments(n, k, seed + 1);
            var x = TestUtil.Random(n * inF, seed + 2);
            var y0 = TestUtil.Random(n * outF, seed + 3);
            var scales = Scales(segAdapters.Length, seed + 4);
            var y = (float[])y0.Clone();
            SegmentedLora.Sgmv(x, starts, segAdapters, scales, pack.Adapters, y, n, inF, outF, new KernelOptions(threads, path));

            var reference = SegmentedLoraReference.Sgmv(TestUtil.ToDouble(x), starts, segAdapters, TestUtil.ToDouble(scales),
                ToDouble(a), ToDouble(b), TestUtil.ToDouble(y0), n, inF, outF);
            AssertMatches(y, reference, inF, ranks.Max(), $"SGMV n {n} in {inF} out {outF} K {k} {path} t{threads}");
            Assert.Equal(y0.AsSpan(0, starts[0] * outF), y.AsSpan(0, starts[0] * outF));
            Assert.Equal(y0.AsSpan(starts[^1] * outF), y.AsSpan(starts[^1] * outF));
            seed += 10;
        }
    }

    [Theory]
    [MemberData(nameof(AllPaths))]
    public void BitIdenticalForAnyThreadCountAndBetweenSgmvAndBgmv(SimdPath path)
    {
        const int n = 96, inF = 70, outF = 45, k = 12;
        var (a, b, _) = MakeAdapters(k, inF, outF, 7);
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
        var (starts, segAdapters) = Segments(n, k, 8);
        var segScales = Scales(segAdapters.Length, 9);
        var x = TestUtil.Random(n * inF, 10);
        var y0 = TestUtil.Random(n * outF, 11);

        // The same rows as BGMV: each row its segment's adapter and scale, −1 outside the segments.
        var adapterOfRow = Enumerable.Repeat(-1, n).ToArray();
        var rowScales = new float[n];
        for (int t = 0; t < segAdapters.Length; t++)
        {
            for (int i = starts[t]; i < starts[t + 1]; i++)
            {
                (adapterOfRow[i], rowScales[i]) = (segAdapters[t], segScales[t]);
            }
        }

        var first = (float[])y0.Clone();
        SegmentedLora.Sgmv(x, starts, segAdapters, segScales, pack.Adapters, first, n, inF, outF, new KernelOptions(1, path));
        Assert.NotEqual(y0, first);
        foreach (int threads in new[] { 2, 3, 5 })
        {
            var y = (float[])y0.Clone();
            SegmentedLora.Sgmv(x, starts, segAdapters, segScales, pack.Adapters, y, n, inF, outF, new KernelOptions(threads, path));
            Assert.Equal(first, y);
        }

        foreach (int threads in new[] { 1, 2, 3 })
        {
            var y = (float[])y0.Clone();
            SegmentedLora.Bgmv(x, adapterOfRow, rowScales, pack.Adapters, y, n, inF, outF, new KernelOptions(threads, path));
            Assert.Equal(first, y);
        }
    }

    [Theory]
    [MemberData(nameof(AllPaths))]
    public void MixedBatchEqualsEachRowAloneThroughLoraBranch(SimdPath path)
    {
        const int n = 64, inF = 96, outF = 80, k = 64;
        var (a, b, ranks) = MakeAdapters(k, inF, outF, 20);
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
        var adapterOfRow = Enumerable.Range(0, n).Select(i => i % 9 == 4 ? -1 : (i * 37) % k).ToArray();
        var scales = Scales(n, 21);
        var x = TestUtil.Random(n * inF, 22);
        var y0 = TestUtil.Random(n * outF, 23);
        var y = (float[])y0.Clone();
        var options = new KernelOptions(2, path);
        SegmentedLora.Bgmv(x, adapterOfRow, scales, pack.Adapters, y, n, inF, outF, options);
        var reference = SegmentedLoraReference.Bgmv(TestUtil.ToDouble(x), adapterOfRow, TestUtil.ToDouble(scales), ToDouble(a), ToDouble(b),
            TestUtil.ToDouble(y0), n, inF, outF);

        for (int i = 0; i < n; i++)
        {
            var alone = y0.AsSpan(i * outF, outF).ToArray();
            int adapter = adapterOfRow[i];
            if (adapter >= 0)
            {
                int r = ranks[adapter];
                CpuLoraBranch.ForwardAccumulate(x.AsSpan(i * inF, inF), null, a[adapter], b[adapter], [], scales[i], alone, new float[r],
                    1, inF, outF, r, new LoraOptions(Kernel: options));
            }

            // Each is within the fp32 bound of AssertMatches of the exact value, so they differ by at most twice it.
            for (int o = 0; o < outF; o++)
            {
                int e = (i * outF) + o;
                double bound = 4 * (((inF + ranks.Max() + 2) * U * reference.Mag[e]) + (U * Math.Abs(reference.Y[e])));
                double diff = Math.Abs(y[e] - alone[o]);
                Assert.True(diff <= bound, $"row {i} adapter {adapter} out {o} {path}: batch {y[e]}, alone {alone[o]} (|diff| {diff:G3} > {bound:G3})");
            }

            if (adapter < 0)
            {
                Assert.Equal(alone, y.AsSpan(i * outF, outF).ToArray());
            }
        }
    }

    [Fact]
    public void NoAdapterRowsAreNeitherReadNorWritten()
    {
        const int n = 6, inF = 5, outF = 3;
        var (a, b, _) = MakeAdapters(2, inF, outF, 30);
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);
        var x = TestUtil.Random(n * inF, 31);
        x.AsSpan(2 * inF, inF).Fill(float.NaN);
        var y0 = TestUtil.Random(n * outF, 32);
        var y = (float[])y0.Clone();
        SegmentedLora.Bgmv(x, [0, 1, -1, 1, -1, 0], [1f, 2f, 3f, 4f, 5f, 6f], pack.Adapters, y, n, inF, outF);
        Assert.Equal(y0.AsSpan(2 * outF, outF), y.AsSpan(2 * outF, outF));
        Assert.Equal(y0.AsSpan(4 * outF, outF), y.AsSpan(4 * outF, outF));
        Assert.DoesNotContain(y, float.IsNaN);
        Assert.NotEqual(y0.AsSpan(0, outF).ToArray(), y.AsSpan(0, outF).ToArray());

        var all = (float[])y0.Clone();
        SegmentedLora.Bgmv(x, Enumerable.Repeat(-1, n).ToArray(), new float[n], pack.Adapters, all, n, inF, outF);
        SegmentedLora.Sgmv(x, [0, n], [-1], [1f], pack.Adapters, all, n, inF, outF);
        Assert.Equal(y0, all);
    }

    [Fact]
    public void AdaptersMayLieAnywhereInThePool()
    {
        const int n = 10, inF = 19, outF = 23;
        var (a, b, ranks) = MakeAdapters(3, inF, outF, 40);
        var pack = SegmentedLoraPack.Pack(a, b, inF, outF);

        // An engine's slots: B before A, gaps between them (NaN: never read), adapters in reverse order.
        var factors = Enumerable.Repeat(float.NaN, 3 * (a.Sum(v => v.Length) + b.Sum(v => v.Length) + 11)).ToArray();
        var aOffsets = new int[3];
        var bOffsets = new int[3];
        int at = 7;
        for (int i = 2; i >= 0; i--)
        {
            bOffsets[i] = at;
            b[i].CopyTo(factors, at);
            at += b[i].Length + 5;
            aOffsets[i] = at;
            a[i].CopyTo(factors, at);
            at += a[i].Length + 3;
        }

        var rows = new[] { 2, 0, 1, -1, 1, 1, 2, 0, 0, 2 };
        var scales = Scales(n, 41);
        var x = TestUtil.Random(n * inF, 42);
        var expected = TestUtil.Random(n * outF, 43);
        var y = (float[])expected.Clone();
        SegmentedLora.Bgmv(x, rows, scales, pack.Adapters, expected, n, inF, outF);
        SegmentedLora.Bgmv(x, rows, scales, new SegmentedLoraAdapters(factors, ranks, aOffsets, bOffsets), y, n, inF, outF);
        Assert.Equal(expected, y);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        const int n = 4, inF = 3, outF = 2;
        var pack = SegmentedLoraPack.Pack([new float[2 * inF], new float[inF]], [new float[outF * 2], new float[outF]], inF, outF);
        var x = new float[n * inF];
        var y = new float[n * outF];
        var scales = new float[n];

        var e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 1, 2, -1], scales, pack.Adapters, y, n, inF, outF));
        Assert.Equal("adapterOfRow", e.ParamName);
        Assert.Contains("adapterOfRow[2] = 2 is outside [-1, 2)", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, -2, 1, 1], scales, pack.Adapters, y, n, inF, outF));
        Assert.Contains("adapterOfRow[1] = -2 is outside [-1, 2)", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0], scales, pack.Adapters, y, n, inF, outF));
        Assert.Contains("adapterOfRow has length 3; expected 4", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0, 0], new float[3], pack.Adapters, y, n, inF, outF));
        Assert.Equal("scales", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales, pack.Adapters, new float[7], n, inF, outF));
        Assert.Contains("y has length 7; expected 8 (n·outFeatures)", e.Message);

        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [0, 3, 2], [0, 1], [1f, 1f], pack.Adapters, y, n, inF, outF));
        Assert.Contains("segmentStarts[2] = 2 is less than segmentStarts[1] = 3; segment starts must not decrease", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [0, 5], [0], [1f], pack.Adapters, y, n, inF, outF));
        Assert.Contains("segmentStarts[1] = 5 (the end of the last segment) is past n = 4", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [-1, 2], [0], [1f], pack.Adapters, y, n, inF, outF));
        Assert.Contains("segmentStarts[0] = -1 is negative", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [0, 2, 4], [0, 5], [1f, 1f], pack.Adapters, y, n, inF, outF));
        Assert.Contains("segmentAdapters[1] = 5 is outside [-1, 2)", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [0, 4], [0, 1], [1f, 1f], pack.Adapters, y, n, inF, outF));
        Assert.Equal("segmentStarts", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Sgmv(x, [0, 4], [0], [1f, 1f], pack.Adapters, y, n, inF, outF));
        Assert.Equal("segmentScales", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales,
            new SegmentedLoraAdapters(pack.Factors, [2, 1], [0, pack.Factors.Length - 1], [6, 12]), y, n, inF, outF));
        Assert.Equal("aOffsets", e.ParamName);
        Assert.Contains("aOffsets[1] = 14: adapter 1's A [1, 3] needs floats [14, 17) but the pool (factors) has 15", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales,
            new SegmentedLoraAdapters(pack.Factors, [2, 0], [0, 10], [6, 13]), y, n, inF, outF));
        Assert.Contains("ranks[1] = 0; an adapter's rank must be ≥ 1", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLora.Bgmv(x, [0, 0, 0, 0], scales,
            new SegmentedLoraAdapters(pack.Factors, [2, 1], [0], [6, 13]), y, n, inF, outF));
        Assert.Contains("aOffsets has length 1; expected 2", e.Message);

        e = Assert.Throws<ArgumentException>(() => SegmentedLoraPack.Pack([new float[2 * inF]], [new float[outF * 3]], inF, outF));
        Assert.Contains("Adapter 0 has rank 2 in A [2, 3] but rank 3 in B [2, 3]", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLoraPack.Pack([new float[4]], [new float[outF]], inF, outF));
        Assert.Contains("A of adapter 0 has length 4; expected rank·inFeatures", e.Message);
        e = Assert.Throws<ArgumentException>(() => SegmentedLoraPack.Pack([new float[inF]], [], inF, outF));
        Assert.Contains("There are 1 A factors but 0 B factors", e.Message);
    }
}
