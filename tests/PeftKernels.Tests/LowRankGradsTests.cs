// Kernels.Cpu.LowRankGrads (dB = s·gᵀ·h and dh = s·g·B in one pass over g) against the double reference
// (LowRankGradsReference): ranks that fill no vector, exactly one or two, and leave a tail (1, 3, 8, 16, 17, 33);
// row counts below, at and past a block of 4 (0, 1, 3, 4, 5, 9); odd widths; every SIMD path. dB and dh are
// overwritten (NaN-filled outputs); bad lengths are refused with the reason.
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
}
