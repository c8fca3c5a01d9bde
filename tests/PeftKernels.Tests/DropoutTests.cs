using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class DropoutTests
{
    /// <summary>Exact: keep·x·(1/(1 − p)) is one fp32 multiply by the fp32-rounded scale; the reference multiplies in double, so they agree to one rounding.</summary>
    private static void CheckAgainstReference(int count, float p, ulong seed, int threads)
    {
        var x = TestUtil.Random(count, (int)seed + count);
        var y = Enumerable.Repeat(float.NaN, count).ToArray();
        Dropout.Apply(x, y, p, seed, new KernelOptions(threads));
        var expected = DropoutReference.Apply(TestUtil.ToDouble(x), p, seed);
        TestUtil.AssertClose(y, expected, 0, 2e-7, $"drop(x) n {count} p {p} t{threads}");
    }

    /// <summary>The kernel is scalar (no SIMD paths); 40 001 elements take the two-thread split.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void MatchesTheReferenceMaskOnAwkwardSizes(int threads)
    {
        foreach (int n in new[] { 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 40_001 })
        {
            CheckAgainstReference(n, 0.3f, 17, threads);
        }
    }

    [Fact]
    public void RandomCasesMatchTheReference()
    {
        var gen = Gen.Choose(0, 300).SelectMany(n => Gen.Choose(1, 95).Select(percent => (n, percent)));
        Prop.ForAll(gen.ToArbitrary(), t => CheckAgainstReference(t.n, t.percent / 100f, (ulong)((t.n * 31) + t.percent), 1))
            .Check(TestUtil.Seeded(60, 7));
    }

    [Fact]
    public void InPlaceEqualsOutOfPlaceAndZeroProbabilityCopies()
    {
        var x = TestUtil.Random(100, 3);
        var y = new float[100];
        Dropout.Apply(x, y, 0.5f, 9);
        var z = (float[])x.Clone();
        Dropout.Apply(z, z, 0.5f, 9);
        Assert.Equal(y, z);
        Assert.Contains(0f, y);
        Dropout.Apply(x, y, 0f, 9);
        Assert.Equal(x, y);
    }

    [Fact]
    public void BadInputNamesTheArgument()
    {
        var e = Assert.Throws<ArgumentException>(() => Dropout.Apply(new float[4], new float[3], 0.1f, 0));
        Assert.Contains("y has length 3; expected 4", e.Message);
        var p = Assert.Throws<ArgumentException>(() => Dropout.Apply(new float[4], new float[4], 1f, 0));
        Assert.Contains("dropout must be in [0, 1), got 1", p.Message);
    }
}
