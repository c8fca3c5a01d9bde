using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class RopeTests
{
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    /// <summary>
    /// Both sides use the same fp32 angle; the kernel rounds cos and sin to fp32 (≤ 2⁻²⁵ each) and rounds
    /// two products and a sum: ≤ ~4.5·2⁻²⁴ for inputs in [-1, 1]. 8·2⁻²⁴ leaves margin and is far below
    /// a wrong angle, sign or swapped half.
    /// </summary>
    private static readonly double Atol = 8 * Math.Pow(2, -24);

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static int[] Positions(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(0, 5000)).ToArray();
    }

    private static void CheckCase(int n, int heads, int headDim, SimdPath path, int threads, int seed)
    {
        var x = TestUtil.Random(n * heads * headDim, seed);
        var dy = TestUtil.Random(n * heads * headDim, seed + 1);
        var positions = Positions(n, seed + 2);
        var invFreq = Rope.InverseFrequencies(headDim, 10000);
        var options = new KernelOptions(threads, path);
        string what = $"n {n} heads {heads} headDim {headDim} {path} t{threads}";

        var y = Enumerable.Repeat(float.NaN, x.Length).ToArray();
        Rope.Forward(x, positions, invFreq, y, n, heads, headDim, options);
        TestUtil.AssertClose(y, RopeReference.Forward(TestUtil.ToDouble(x), positions, invFreq, n, heads, headDim), Atol, 0, "y " + what);

        var dx = Enumerable.Repeat(float.NaN, x.Length).ToArray();
        Rope.Backward(dy, positions, invFreq, dx, n, heads, headDim, options);
        TestUtil.AssertClose(dx, RopeReference.Backward(TestUtil.ToDouble(dy), positions, invFreq, n, heads, headDim), Atol, 0, "dx " + what);

        // No FMA anywhere: every path rounds the same operations, so they agree with the scalar path bit for bit.
        var yScalar = new float[x.Length];
        Rope.Forward(x, positions, invFreq, yScalar, n, heads, headDim, new KernelOptions(1, SimdPath.Scalar));
        Assert.Equal(yScalar, y);

        // In place gives the same bits as out of place.
        var inPlace = (float[])dy.Clone();
        Rope.Backward(inPlace, positions, invFreq, inPlace, n, heads, headDim, options);
        Assert.Equal(dx, inPlace);
        inPlace = (float[])x.Clone();
        Rope.Forward(inPlace, positions, invFreq, inPlace, n, heads, headDim, options);
        Assert.Equal(y, inPlace);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 3, 10, path, threads, s);
            CheckCase(2, 2, 2 * s, path, threads, s + 100); // half = s
            CheckCase(3, s, 6, path, threads, s + 200);
        }

        CheckCase(129, 4, 64, path, threads, 7); // parallel path: 33 024 elements
    }

    [Fact]
    public void PropertyBackwardUndoesForwardAndMatchesReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from n in Gen.Choose(1, 40)
            from heads in Gen.Choose(1, 6)
            from half in Gen.Choose(1, 80)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (n, heads, half, pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t =>
        {
            var path = paths[t.pathIndex % paths.Length];
            CheckCase(t.n, t.heads, 2 * t.half, path, t.threads, t.n + t.half);

            // Rᵀ·R = I: the backward of the forward gives x back, up to the rounding of both.
            int headDim = 2 * t.half;
            var x = TestUtil.Random(t.n * t.heads * headDim, t.half);
            var positions = Positions(t.n, t.heads);
            var invFreq = Rope.InverseFrequencies(headDim, 500000);
            var roundTrip = new float[x.Length];
            Rope.Forward(x, positions, invFreq, roundTrip, t.n, t.heads, headDim, new KernelOptions(t.threads, path));
            Rope.Backward(roundTrip, positions, invFreq, roundTrip, t.n, t.heads, headDim, new KernelOptions(t.threads, path));
            TestUtil.AssertClose(roundTrip, x, 2 * Atol, 0, "round trip");
        }).Check(TestUtil.Seeded(30, 4));
    }

    /// <summary>The specification itself: reference backward equals central differences of L = Σ g ⊙ y in double.</summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var (n, heads, headDim) = (3, 2, 6);
        var rng = new Random(6);
        double[] x = Enumerable.Range(0, n * heads * headDim).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] g = Enumerable.Range(0, n * heads * headDim).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        int[] positions = [0, 5, 1234];
        var invFreq = Rope.InverseFrequencies(headDim, 10000);
        double Loss() => RopeReference.Forward(x, positions, invFreq, n, heads, headDim).Select((v, i) => v * g[i]).Sum();

        var dx = RopeReference.Backward(g, positions, invFreq, n, heads, headDim);
        for (int i = 0; i < x.Length; i++)
        {
            double numeric = TestUtil.CentralDifference(x, i, 1e-6, Loss);
            Assert.True(Math.Abs(numeric - dx[i]) <= 1e-8 + (1e-7 * Math.Abs(numeric)), $"dx[{i}]: analytic {dx[i]}, numeric {numeric}");
        }
    }

    [Fact]
    public void PositionZeroIsTheIdentityAndOneQuarterTurnSwapsHalves()
    {
        float[] x = [1, 2, 3, 4];
        var y = new float[4];
        Rope.Forward(x, [0], [1f, 0.5f], y, 1, 1, 4);
        Assert.Equal(x, y);

        // invFreq π/2 at position 1: (x1, x2) → (−x2, x1), i.e. q·cos + rotate_half(q)·sin with cos = 0, sin = 1.
        Rope.Forward(x, [1], [MathF.PI / 2, 0f], y, 1, 1, 4);
        TestUtil.AssertClose(y, new double[] { -3, 2, 1, 4 }, 1e-6, 0, "quarter turn");
    }

    [Fact]
    public void InverseFrequenciesMatchHandComputedValues()
    {
        // 10000^(−2j/64): j = 0 → 1, j = 1 → 10000^(−1/32), j = 31 → 10000^(−31/32).
        var inv = Rope.InverseFrequencies(64, 10000);
        Assert.Equal(32, inv.Length);
        Assert.Equal(1f, inv[0]);
        Assert.Equal(0.7498942093324559, inv[1], 1e-7);
        Assert.Equal(1.333521432163324e-4, inv[31], 1e-11);
    }

    [Fact]
    public void Llama3ScalingMatchesHandComputedValues()
    {
        // Llama 3.1: theta 500000, factor 8, low 1, high 4, original context 8192, headDim 128:
        // wavelengths below 8192/4 = 2048 are kept, above 8192/1 = 8192 divided by 8, in between smoothed.
        var inv = Rope.InverseFrequenciesLlama3(128, 500000, 8, 1, 4, 8192);
        var plain = Rope.InverseFrequencies(128, 500000);
        Assert.Equal(64, inv.Length);
        Assert.Equal(1f, inv[0]); // wavelen 2π: kept
        Assert.Equal(plain[28], inv[28]); // inv 3.2114460e-3, wavelen 1956.5 < 2048: kept

        // j = 30: inv = 500000^(−60/128) = 2.1311195e-3, wavelen 2948.30: smooth = (8192/2948.30 − 1)/3 = 0.592849,
        // (1 − smooth)·inv/8 + smooth·inv = 1.3718936e-3.
        Assert.Equal(1.3718935677611381e-3, inv[30], 2e-9);

        // j = 35: inv = 7.644970e-4, wavelen 8218.7 > 8192: inv/8 = 9.556212e-5.
        Assert.Equal(9.556212353964683e-5, inv[35], 1e-10);

        // j = 63: inv = 2.4551408e-6 (wavelen 2.56e6): divided by 8.
        Assert.Equal(3.068925988914511e-7, inv[63], 1e-12);
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] x = new float[12], y = new float[12], inv = new float[2];
        int[] pos = [0, 1, 2];
        var ex = Assert.Throws<ArgumentException>(() => Rope.Forward(new float[10], pos, inv, new float[10], 3, 1, 5));
        Assert.Equal("headDim", ex.ParamName);
        Assert.Contains("even", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Rope.Forward(x, [0, -4, 2], inv, y, 3, 1, 4));
        Assert.Equal("positions", ex.ParamName);
        Assert.Contains("positions[1] is -4", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Rope.Forward(new float[11], pos, inv, y, 3, 1, 4));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("expected 12 (n·heads·headDim)", ex.Message);
        Assert.Equal("invFreq", Assert.Throws<ArgumentException>(() => Rope.Forward(x, pos, new float[4], y, 3, 1, 4)).ParamName);
        Assert.Equal("positions", Assert.Throws<ArgumentException>(() => Rope.Forward(x, [0, 1], inv, y, 3, 1, 4)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => Rope.Forward(x, pos, inv, new float[13], 3, 1, 4)).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentException>(() => Rope.Forward(x, pos, inv, y, 3, 0, 4)).ParamName);
        Assert.Equal("dx", Assert.Throws<ArgumentException>(() => Rope.Backward(x, pos, inv, new float[3], 3, 1, 4)).ParamName);

        var buffer = new float[13];
        ex = Assert.Throws<ArgumentException>(() => Rope.Forward(buffer.AsSpan(0, 12), pos, inv, buffer.AsSpan(1, 12), 3, 1, 4));
        Assert.Equal("y", ex.ParamName);
        Assert.Contains("in place", ex.Message);

        Assert.Equal("theta", Assert.Throws<ArgumentException>(() => Rope.InverseFrequencies(64, 0)).ParamName);
        Assert.Equal("headDim", Assert.Throws<ArgumentException>(() => Rope.InverseFrequencies(63, 10000)).ParamName);
        Assert.Equal("highFreqFactor", Assert.Throws<ArgumentException>(() => Rope.InverseFrequenciesLlama3(64, 10000, 8, 4, 4, 8192)).ParamName);
        Assert.Equal("originalMaxPositionEmbeddings", Assert.Throws<ArgumentException>(() => Rope.InverseFrequenciesLlama3(64, 10000, 8, 1, 4, 0)).ParamName);
    }
}
