using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class Ia3Tests
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static void CheckCase(int n, int features, SimdPath path, int threads, int seed, bool skipDx = false, bool skipDl = false)
    {
        var x = TestUtil.Random(n * features, seed, 2f);
        var l = TestUtil.Random(features, seed + 1, 1.5f);
        var dy = TestUtil.Random(n * features, seed + 2);
        var options = new KernelOptions(threads, path);
        string what = $"n {n} features {features} {path} t{threads}";

        var yRef = Ia3Reference.ScaleColumns(TestUtil.ToDouble(x), TestUtil.ToDouble(l), n, features);
        var y = Enumerable.Repeat(float.NaN, n * features).ToArray();
        Ia3.ScaleColumns(x, l, y, n, features, options);

        // One fp32 product per element: correctly rounded, so within 2⁻²⁴ of the exact value (relative).
        TestUtil.AssertClose(y, yRef, 0, U, "y " + what);

        var (dxRef, dlRef) = Ia3Reference.ScaleColumnsBackward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(l), n, features);
        var dx = skipDx ? [] : Enumerable.Repeat(float.NaN, n * features).ToArray();
        var dl = skipDl ? [] : Enumerable.Repeat(float.NaN, features).ToArray();
        Ia3.ScaleColumnsBackward(dy, skipDl ? [] : x, l, dx, dl, n, features, options);
        if (!skipDx)
        {
            TestUtil.AssertClose(dx, dxRef, 0, U, "dx " + what); // one product, as y
        }

        if (!skipDl)
        {
            // dl_j sums n products in fp32 (in-chunk running sums, then across chunks): each rounding is
            // ≤ 2⁻²⁴ of a partial sum ≤ Σ_i|dy·x|, at most n + chunks of them.
            double maxAbsSum = Enumerable.Range(0, features)
                .Max(j => Enumerable.Range(0, n).Sum(i => Math.Abs((double)dy[(i * features) + j] * x[(i * features) + j])));
            TestUtil.AssertClose(dl, dlRef, (n + 32) * U * maxAbsSum, U, "dl " + what);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 37, path, threads, s);
            CheckCase(3, s, path, threads, s + 100);
            CheckCase(s, s, path, threads, s + 200);
        }

        CheckCase(129, 300, path, threads, 7); // above the parallel threshold, 5 row chunks
        CheckCase(1000, 33, path, threads, 8); // many chunks, features not a vector multiple
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SkippedOutputsLeaveTheOtherCorrect(SimdPath path, int threads)
    {
        CheckCase(70, 513, path, threads, 3, skipDx: true);
        CheckCase(70, 513, path, threads, 4, skipDl: true);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void InPlaceAliasingGivesTheSameResult(SimdPath path, int threads)
    {
        var (n, f) = (100, 400);
        var x = TestUtil.Random(n * f, 1);
        var l = TestUtil.Random(f, 2);
        var dy = TestUtil.Random(n * f, 3);
        var options = new KernelOptions(threads, path);

        var y = new float[n * f];
        Ia3.ScaleColumns(x, l, y, n, f, options);
        var inPlace = (float[])x.Clone();
        Ia3.ScaleColumns(inPlace, l, inPlace, n, f, options);
        Assert.Equal(y, inPlace);

        var dx = new float[n * f];
        var dl = new float[f];
        Ia3.ScaleColumnsBackward(dy, x, l, dx, dl, n, f, options);
        var dyInPlace = (float[])dy.Clone();
        var dl2 = new float[f];
        Ia3.ScaleColumnsBackward(dyInPlace, x, l, dyInPlace, dl2, n, f, options);
        Assert.Equal(dx, dyInPlace);
        Assert.Equal(dl, dl2);
    }

    [Fact]
    public void DlIsBitIdenticalForAnyThreadCount()
    {
        var (n, f) = (777, 130);
        var x = TestUtil.Random(n * f, 5);
        var l = TestUtil.Random(f, 6);
        var dy = TestUtil.Random(n * f, 7);
        foreach (var path in TestUtil.Paths)
        {
            float[] Run(int threads)
            {
                var dl = new float[f];
                Ia3.ScaleColumnsBackward(dy, x, l, [], dl, n, f, new KernelOptions(threads, path));
                return dl;
            }

            var one = Run(1);
            Assert.Equal(one, Run(2));
            Assert.Equal(one, Run(3));
            Assert.Equal(one, Run(2));
        }
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from n in Gen.Choose(0, 300)
            from f in Gen.Choose(1, 300)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            from skip in Gen.Choose(0, 2)
            select (n, f, pathIndex, threads, skip);
        Prop.ForAll(gen.ToArbitrary(), t =>
            CheckCase(t.n, t.f, paths[t.pathIndex % paths.Length], t.threads, t.n + (7 * t.f), t.skip == 1, t.skip == 2))
            .Check(TestUtil.Seeded(40, 5));
    }

    [Fact]
    public void ZeroRowsWritesAZeroDl()
    {
        var l = new float[] { 1, 2, 3 };
        Ia3.ScaleColumns([], l, [], 0, 3);
        var dl = new float[] { 5, 5, 5 };
        Ia3.ScaleColumnsBackward([], [], l, [], dl, 0, 3);
        Assert.Equal(new float[3], dl);
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] x = new float[6], l = new float[3], y = new float[6];
        var ex = Assert.Throws<ArgumentException>(() => Ia3.ScaleColumns(new float[5], l, y, 2, 3));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("expected 6", ex.Message);
        Assert.Contains("n·features", ex.Message);
        Assert.Equal("l", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumns(x, new float[4], y, 2, 3)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumns(x, l, new float[7], 2, 3)).ParamName);
        Assert.Equal("n", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumns(x, l, y, -1, 3)).ParamName);
        Assert.Equal("features", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumns([], [], [], 2, 0)).ParamName);

        float[] dy = new float[6], dx = new float[6], dl = new float[3];
        Assert.Equal("dy", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumnsBackward(new float[7], x, l, dx, dl, 2, 3)).ParamName);
        ex = Assert.Throws<ArgumentException>(() => Ia3.ScaleColumnsBackward(dy, [], l, dx, dl, 2, 3));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("only when dl is empty", ex.Message);
        Assert.Equal("l", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumnsBackward(dy, x, new float[2], dx, dl, 2, 3)).ParamName);
        Assert.Equal("dx", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumnsBackward(dy, x, l, new float[5], dl, 2, 3)).ParamName);
        Assert.Equal("dl", Assert.Throws<ArgumentException>(() => Ia3.ScaleColumnsBackward(dy, x, l, dx, new float[4], 2, 3)).ParamName);
    }

    /// <summary>The specification: each reference backward equals central finite differences of L = Σ g ⊙ y in double.</summary>
    [Fact]
    public void ReferenceBackwardsMatchFiniteDifferences()
    {
        var (n, inF, outF) = (3, 5, 4);
        var rng = new Random(9);
        double[] Rand(int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] x = Rand(n * inF), w = Rand(outF * inF), bias = Rand(outF), lOut = Rand(outF), lIn = Rand(inF);
        double[] gOut = Rand(n * outF), gIn = Rand(n * inF);
        static double Dot(double[] a, double[] b) => a.Select((v, i) => v * b[i]).Sum();

        void Check(double[] param, double[] grad, Func<double> loss, string name)
        {
            for (int i = 0; i < param.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(param, i, 1e-6, loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-8 + (1e-7 * Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }

        var (dxs, dls) = Ia3Reference.ScaleColumnsBackward(gIn, x, lIn, n, inF);
        double ScaleLoss() => Dot(gIn, Ia3Reference.ScaleColumns(x, lIn, n, inF));
        Check(x, dxs, ScaleLoss, "columns dx");
        Check(lIn, dls, ScaleLoss, "columns dl");

        var (dxo, dlo) = Ia3Reference.OutputScalingBackward(gOut, x, w, bias, lOut, n, inF, outF);
        double OutputLoss() => Dot(gOut, Ia3Reference.OutputScalingForward(x, w, bias, lOut, n, inF, outF));
        Check(x, dxo, OutputLoss, "output dx");
        Check(lOut, dlo, OutputLoss, "output dl");

        var (dxi, dli) = Ia3Reference.InputScalingBackward(gOut, x, w, lIn, n, inF, outF);
        double InputLoss() => Dot(gOut, Ia3Reference.InputScalingForward(x, w, bias, lIn, n, inF, outF));
        Check(x, dxi, InputLoss, "input dx");
        Check(lIn, dli, InputLoss, "input dl");
    }

    /// <summary>The merged linear equals the scaled one: w ← diag(l)·w, b ← b ⊙ l (output), w ← w·diag(l) (input).</summary>
    [Fact]
    public void ReferenceMergeEqualsScaledForward()
    {
        var (n, inF, outF) = (4, 6, 5);
        var rng = new Random(10);
        double[] Rand(int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] x = Rand(n * inF), w = Rand(outF * inF), bias = Rand(outF), lOut = Rand(outF), lIn = Rand(inF);
        double[] ones = Enumerable.Repeat(1.0, outF).ToArray();

        var (wo, bo) = Ia3Reference.MergeOutputScaling(w, bias, lOut, inF, outF);
        var merged = Ia3Reference.OutputScalingForward(x, wo, bo, ones, n, inF, outF);
        var scaled = Ia3Reference.OutputScalingForward(x, w, bias, lOut, n, inF, outF);
        for (int i = 0; i < merged.Length; i++)
        {
            Assert.Equal(scaled[i], merged[i], 1e-12);
        }

        var wi = Ia3Reference.MergeInputScaling(w, lIn, inF, outF);
        merged = Ia3Reference.InputScalingForward(x, wi, bias, Enumerable.Repeat(1.0, inF).ToArray(), n, inF, outF);
        scaled = Ia3Reference.InputScalingForward(x, w, bias, lIn, n, inF, outF);
        for (int i = 0; i < merged.Length; i++)
        {
            Assert.Equal(scaled[i], merged[i], 1e-12);
        }
    }
}
