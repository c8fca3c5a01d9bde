using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class RmsNormTests
{
    private const float Eps = 1e-5f;
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static void CheckCase(int n, int dim, SimdPath path, int threads, int seed, bool skipDx = false, bool skipDw = false)
    {
        var x = TestUtil.Random(n * dim, seed, 2f);
        var w = TestUtil.Random(dim, seed + 1).Select(v => 1f + (0.5f * v)).ToArray();
        var dy = TestUtil.Random(n * dim, seed + 2);
        var options = new KernelOptions(threads, path);
        string what = $"n {n} dim {dim} {path} t{threads}";

        var (yRef, rstdRef) = RmsNormReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), Eps, n, dim);
        var y = Enumerable.Repeat(float.NaN, n * dim).ToArray();
        var rstd = Enumerable.Repeat(float.NaN, n).ToArray();
        RmsNorm.Forward(x, w, Eps, y, rstd, n, dim, options);

        // The fp32 sum of dim positive squares has relative error ≤ dim·2⁻²⁴ even when summed serially
        // (scalar path); rstd halves it (square root), y adds two roundings. y is a pure product, so
        // the bound is relative per element.
        double rtol = (dim + 8) * U;
        TestUtil.AssertClose(rstd, rstdRef, 0, rtol, "rstd " + what);
        TestUtil.AssertClose(y, yRef, 1e-30, rtol, "y " + what);

        var (dxRef, dwRef) = RmsNormReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(w), Eps, n, dim);
        var dx = skipDx ? [] : Enumerable.Repeat(float.NaN, n * dim).ToArray();
        var dw = skipDw ? [] : Enumerable.Repeat(float.NaN, dim).ToArray();
        RmsNorm.Backward(dy, x, w, rstd, dx, dw, n, dim, options);

        if (!skipDx)
        {
            // dx = r·(ŵg − x·c) cancels; c carries the fp32 dot Σ ŵg·x (error ≤ dim·2⁻²⁴·Σ|ŵg·x|, with
            // |ŵg·x| ≤ 3) and the fp32 rstd; the error is absolute on the scale of the terms (≤ ~4).
            TestUtil.AssertClose(dx, dxRef, 4 * (dim + 16) * U * 3, rtol, "dx " + what);
        }

        if (!skipDw)
        {
            // dw_j sums n terms |dy·x·r| ≤ 2·max rstd in fp32 (chunk partials, then across chunks): ≤ (n + chunks)·2⁻²⁴ of Σ|terms|.
            double maxRstd = rstdRef.Max();
            TestUtil.AssertClose(dw, dwRef, 2 * (n + 16) * U * n * 2 * maxRstd, rtol, "dw " + what);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 37, path, threads, s);
            CheckCase(5, s, path, threads, s + 100);
        }

        CheckCase(129, 300, path, threads, 7); // parallel path: 38 700 elements, 5 row chunks
        CheckCase(100, 768, path, threads, 8);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SkippedGradientsLeaveTheOtherCorrect(SimdPath path, int threads)
    {
        CheckCase(70, 65, path, threads, 3, skipDx: true);
        CheckCase(70, 65, path, threads, 4, skipDw: true);
        CheckCase(129, 300, path, threads, 5, skipDw: true);
    }

    [Fact]
    public void DweightIsBitIdenticalForAnyThreadCount()
    {
        var (n, dim) = (200, 250);
        var x = TestUtil.Random(n * dim, 1, 2f);
        var w = TestUtil.Random(dim, 2);
        var dy = TestUtil.Random(n * dim, 3);
        var rstd = new float[n];
        RmsNorm.Forward(x, w, Eps, new float[n * dim], rstd, n, dim);
        float[] Run(int threads)
        {
            var dw = new float[dim];
            RmsNorm.Backward(dy, x, w, rstd, new float[n * dim], dw, n, dim, new KernelOptions(threads));
            return dw;
        }

        var one = Run(1);
        Assert.Equal(one, Run(2));
        Assert.Equal(one, Run(3));
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from n in Gen.Choose(1, 80)
            from dim in Gen.Choose(1, 300)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            from skip in Gen.Choose(0, 2)
            select (n, dim, pathIndex, threads, skip);
        Prop.ForAll(gen.ToArbitrary(), t =>
            CheckCase(t.n, t.dim, paths[t.pathIndex % paths.Length], t.threads, t.n + t.dim, skipDx: t.skip == 1, skipDw: t.skip == 2))
            .Check(TestUtil.Seeded(40, 3));
    }

    /// <summary>The specification itself: reference backward equals central differences of L = Σ g ⊙ y in double.</summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var (n, dim) = (3, 5);
        const double eps = 1e-2; // large enough that eps shows in the gradient
        var rng = new Random(5);
        double[] Rand(int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] x = Rand(n * dim), w = Rand(dim), g = Rand(n * dim);
        double Loss() => RmsNormReference.Forward(x, w, eps, n, dim).Y.Select((v, i) => v * g[i]).Sum();

        var (dx, dw) = RmsNormReference.Backward(g, x, w, eps, n, dim);
        foreach (var (param, grad, name) in new[] { (x, dx, "dx"), (w, dw, "dw") })
        {
            for (int i = 0; i < param.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(param, i, 1e-6, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-7 + (1e-6 * Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }

    [Fact]
    public void ZeroRowsClearsDweight()
    {
        RmsNorm.Forward([], new float[4], Eps, [], [], 0, 4);
        var dw = Enumerable.Repeat(float.NaN, 4).ToArray();
        RmsNorm.Backward([], [], new float[4], [], [], dw, 0, 4);
        Assert.All(dw, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] x = new float[6], w = new float[3], y = new float[6], rstd = new float[2];
        var ex = Assert.Throws<ArgumentException>(() => RmsNorm.Forward(new float[5], w, Eps, y, rstd, 2, 3));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("expected 6 (n·dim)", ex.Message);
        Assert.Equal("weight", Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, new float[4], Eps, y, rstd, 2, 3)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, w, Eps, new float[7], rstd, 2, 3)).ParamName);
        Assert.Equal("rstd", Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, w, Eps, y, new float[1], 2, 3)).ParamName);
        Assert.Equal("eps", Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, w, -1f, y, rstd, 2, 3)).ParamName);
        Assert.Equal("dim", Assert.Throws<ArgumentException>(() => RmsNorm.Forward([], [], Eps, [], rstd, 2, 0)).ParamName);
        Assert.Equal("n", Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, w, Eps, y, rstd, -1, 3)).ParamName);

        float[] dy = new float[6], dx = new float[6], dw = new float[3];
        Assert.Equal("dy", Assert.Throws<ArgumentException>(() => RmsNorm.Backward(new float[4], x, w, rstd, dx, dw, 2, 3)).ParamName);
        Assert.Equal("rstd", Assert.Throws<ArgumentException>(() => RmsNorm.Backward(dy, x, w, new float[3], dx, dw, 2, 3)).ParamName);
        ex = Assert.Throws<ArgumentException>(() => RmsNorm.Backward(dy, x, w, rstd, new float[5], dw, 2, 3));
        Assert.Equal("dx", ex.ParamName);
        Assert.Contains("or empty to skip", ex.Message);
        Assert.Equal("dweight", Assert.Throws<ArgumentException>(() => RmsNorm.Backward(dy, x, w, rstd, dx, new float[2], 2, 3)).ParamName);
    }
}
