// Kernels.Cpu.LowRankGrads (dB = s·gᵀ·h and dh = s·g·B in one pass over g) against the double reference
// (LowRankGradsReference): ranks that fill no vector, exactly one or two, and leave a tail (1, 3, 8, 16, 17, 33);
// row counts below, at and past a block of 4 (0, 1, 3, 4, 5, 9); odd widths; every SIMD path. dB and dh are
// overwritten (NaN-filled outputs); bad lengths are refused with the reason. The threaded pass of the fused LoRA
// backward (Compute with KernelOptions: out cut into chunks of 128) and dA = dhᵀ·u (ComputeA) likewise, on widths
// below, at and across a chunk or unit, with 1, 2 and 3 threads giving the same bits.
using PeftKernels.Kernels;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class LowRankGradsTests
{
    public static TheoryData<SimdPath> Paths()
    {
        var data = new TheoryData<SimdPath>();
        foreach (var path in TestUtil.Paths)
        {
            data.Add(path);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void MatchesTheReferenceOnAwkwardSizes(SimdPath path)
    {
        foreach (int r in new[] { 1, 3, 8, 16, 17, 33 })
        {
            foreach (int m in new[] { 0, 1, 3, 4, 5, 9 })
            {
                foreach (int outF in new[] { 1, 7, 37 })
                {
                    int seed = (r * 1000) + (m * 10) + outF;
                    var g = TestUtil.Random(m * outF, seed);
                    var h = TestUtil.Random(m * r, seed + 1);
                    var b = TestUtil.Random(outF * r, seed + 2);
                    float scale = r % 2 == 0 ? 0.5f : -1.75f;
                    var db = Enumerable.Repeat(float.NaN, outF * r).ToArray();
                    var dh = Enumerable.Repeat(float.NaN, m * r).ToArray();
                    LowRankGrads.Compute(g, h, b, scale, db, dh, m, outF, r, path);
                    var (dbRef, dhRef) = LowRankGradsReference.Compute(TestUtil.ToDouble(g), TestUtil.ToDouble(h), TestUtil.ToDouble(b), scale, m, outF, r);
                    string what = $"{path} m {m} out {outF} r {r}";
                    TestUtil.AssertClose(db, dbRef, 1e-5, 1e-5, "dB " + what);
                    TestUtil.AssertClose(dh, dhRef, 1e-5, 1e-5, "dh " + what);
                }
            }
        }
    }

    [Fact]
    public void BadLengthsAreRefusedWithTheReason()
    {
        var e = Assert.Throws<ArgumentException>(() => LowRankGrads.Compute(new float[6], new float[4], new float[6], 1f, new float[6], new float[3], 2, 3, 2));
        Assert.Contains("dh 3", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => LowRankGrads.Compute([], [], [], 1f, [], [], 0, 3, 0));
        Assert.Contains("r = 0", e.Message, StringComparison.Ordinal);
    }

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ThreadedPassMatchesTheReferenceAcrossChunks(SimdPath path, int threads)
    {
        foreach (int r in new[] { 1, 5, 16, 17 })
        {
            foreach (int m in new[] { 0, 1, 6, 37 })
            {
                foreach (int outF in new[] { 1, 127, 128, 129, 300, 769 })
                {
                    int seed = (r * 7919) + (m * 31) + outF;
                    var g = TestUtil.Random(m * outF, seed);
                    var h = TestUtil.Random(m * r, seed + 1);
                    var b = TestUtil.Random(outF * r, seed + 2);
                    float scale = r % 2 == 0 ? 2f : -0.75f;
                    var db = Enumerable.Repeat(float.NaN, outF * r).ToArray();
                    var dh = Enumerable.Repeat(float.NaN, m * r).ToArray();
                    LowRankGrads.Compute(g, h, b, scale, db, dh, m, outF, r, new KernelOptions(threads, path));
                    var (dbRef, dhRef) = LowRankGradsReference.Compute(TestUtil.ToDouble(g), TestUtil.ToDouble(h), TestUtil.ToDouble(b), scale, m, outF, r);
                    string what = $"{path} {threads} threads m {m} out {outF} r {r}";
                    TestUtil.AssertClose(db, dbRef, 1e-5, 1e-5, "dB " + what);
                    TestUtil.AssertClose(dh, dhRef, TestUtil.DotAtol(outF) * 4, 1e-5, "dh " + what);
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Paths))]
    public void ThreadedPassAndDaGiveTheSameBitsOnAnyThreadCount(SimdPath path)
    {
        const int m = 45, outF = 517, inF = 203, r = 13;
        var g = TestUtil.Random(m * outF, 11);
        var h = TestUtil.Random(m * r, 12);
        var b = TestUtil.Random(outF * r, 13);
        var u = TestUtil.Random(m * inF, 14);
        (float[] Db, float[] Dh, float[] Da) Run(int threads)
        {
            var db = new float[outF * r];
            var dh = new float[m * r];
            var da = new float[r * inF];
            LowRankGrads.Compute(g, h, b, 1.5f, db, dh, m, outF, r, new KernelOptions(threads, path));
            LowRankGrads.ComputeA(dh, u, da, m, inF, r, new KernelOptions(threads, path));
            return (db, dh, da);
        }

        var one = Run(1);
        foreach (int threads in new[] { 2, 3 })
        {
            var other = Run(threads);
            Assert.Equal(one.Db, other.Db);
            Assert.Equal(one.Dh, other.Dh);
            Assert.Equal(one.Da, other.Da);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void DaMatchesTheReferenceOnAwkwardSizes(SimdPath path, int threads)
    {
        foreach (int r in new[] { 1, 3, 4, 5, 16, 17 })
        {
            foreach (int m in new[] { 0, 1, 6, 33 })
            {
                foreach (int inF in new[] { 1, 15, 33, 64, 65, 130, 770 })
                {
                    int seed = (r * 1009) + (m * 17) + inF;
                    var dh = TestUtil.Random(m * r, seed);
                    var u = TestUtil.Random(m * inF, seed + 1);
                    var da = Enumerable.Repeat(float.NaN, r * inF).ToArray();
                    LowRankGrads.ComputeA(dh, u, da, m, inF, r, new KernelOptions(threads, path));
                    var daRef = LowRankGradsReference.ComputeA(TestUtil.ToDouble(dh), TestUtil.ToDouble(u), m, inF, r);
                    TestUtil.AssertClose(da, daRef, TestUtil.DotAtol(m), 1e-5, $"dA {path} {threads} threads m {m} in {inF} r {r}");
                }
            }
        }
    }

    [Fact]
    public void DaBadLengthsAreRefusedWithTheReason()
    {
        var e = Assert.Throws<ArgumentException>(() => LowRankGrads.ComputeA(new float[5], new float[9], new float[6], 3, 3, 2, default));
        Assert.Contains("dh 5, u 9, dA 6", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => LowRankGrads.ComputeA(new float[6], new float[9], new float[5], 3, 3, 2, default));
        Assert.Contains("need dh [m, r], u [m, in], dA [r, in]", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => LowRankGrads.ComputeA([], [], [], 0, 0, 1, default));
        Assert.Contains("in = 0", e.Message, StringComparison.Ordinal);
    }
}
