using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class AdamWTests
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private sealed record Hyper(float Lr = 1e-2f, float Beta1 = 0.9f, float Beta2 = 0.999f, float Eps = 1e-8f, float Wd = 0.01f);

    /// <summary>Runs <paramref name="steps"/> steps with fresh gradients each step on the kernel; returns p, m, v.</summary>
    private static (float[] P, float[] M, float[] V) RunKernel(int count, int steps, Hyper h, KernelOptions options, int seed)
    {
        var p = TestUtil.Random(count, seed);
        float[] m = new float[count], v = new float[count];
        for (int t = 1; t <= steps; t++)
        {
            AdamW.Step(p, TestUtil.Random(count, seed + t, 2f), m, v, h.Lr, h.Beta1, h.Beta2, h.Eps, h.Wd, t, options);
        }

        return (p, m, v);
    }

    private static void CheckCase(int count, int steps, Hyper h, SimdPath path, int threads, int seed)
    {
        var (p, m, v) = RunKernel(count, steps, h, new KernelOptions(threads, path), seed);
        var pRef = TestUtil.ToDouble(TestUtil.Random(count, seed));
        double[] mRef = new double[count], vRef = new double[count];
        for (int t = 1; t <= steps; t++)
        {
            AdamWReference.Step(pRef, TestUtil.ToDouble(TestUtil.Random(count, seed + t, 2f)), mRef, vRef, h.Lr, h.Beta1, h.Beta2, h.Eps, h.Wd, t);
        }

        string what = $"count {count} steps {steps} {h} {path} t{threads}";

        // m and v: each step rounds two products and a sum (and 1 − β once): ≤ 4 ulp per step of the terms.
        // v's terms are positive, so that is relative; m's may cancel, so it is absolute on |g| ≤ 2.
        TestUtil.AssertClose(m, mRef, 4 * steps * U * 2, 4 * steps * U, "m " + what);
        TestUtil.AssertClose(v, vRef, 1e-30, 4 * steps * U, "v " + what);

        // p: two roundings of p per step (decay, update) on |p| ≤ 1 + steps·lr, plus the update's relative error
        // (m, v as above, sqrt, divisions: ≤ ~8 ulp per step) on its size ≤ lr·|m̂|/sqrt(v̂) ≤ ~3·lr.
        double atol = steps * U * ((4 * (1 + (steps * h.Lr))) + (8 * 4 * steps * h.Lr));
        TestUtil.AssertClose(p, pRef, atol, 0, "p " + what);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 4, new Hyper(), path, threads, s);
        }

        CheckCase(40_000, 2, new Hyper(Lr: 3e-4f, Beta2: 0.95f, Wd: 0.1f), path, threads, 1); // parallel path
        CheckCase(50, 3, new Hyper(Wd: 0f, Beta1: 0f), path, threads, 2);
    }

    [Fact]
    public void AllPathsAndThreadCountsAgreeBitForBit()
    {
        var h = new Hyper(Lr: 1e-3f, Beta2: 0.99f, Wd: 0.05f);
        var expected = RunKernel(40_003, 3, h, new KernelOptions(1, SimdPath.Scalar), 9);
        foreach (var path in TestUtil.Paths)
        {
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var actual = RunKernel(40_003, 3, h, new KernelOptions(threads, path), 9);
                Assert.Equal(expected.P, actual.P);
                Assert.Equal(expected.M, actual.M);
                Assert.Equal(expected.V, actual.V);
            }
        }
    }

    [Fact]
    public void FirstStepMatchesHandComputedValues()
    {
        // p = 1, g = 0.5, lr 0.1, β (0.9, 0.999), eps 1e−8, wd 0.01, t = 1:
        //   p ← 1·(1 − 0.001) = 0.999;  m = 0.05, v = 0.00025;  bc1 = 0.1, bc2 = 0.001
        //   p ← 0.999 − (0.1/0.1)·0.05/(sqrt(0.00025)/sqrt(0.001) + 1e−8) = 0.999 − 0.05/(0.5 + 1e−8) = 0.89900000200
        // (the first Adam step moves by lr·sign(g) when |g| ≫ eps).
        float[] p = [1f, 1f], m = new float[2], v = new float[2];
        AdamW.Step(p, [0.5f, -0.5f], m, v, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
        Assert.Equal(0.899000002, p[0], 1e-7);
        Assert.Equal(1.098999998, p[1], 1e-7);

        // β arrive as fp32: 1 − 0.999f = 9.99987e−4, so v is 1.3e−5 below the decimal value (m: 2.4e−7).
        Assert.Equal(0.05, m[0], 1e-8 * 2);
        Assert.Equal(0.00025 * (1 - 1.2875e-5), v[0], 1e-11);

        double[] pd = [1], md = [0], vd = [0];
        AdamWReference.Step(pd, [0.5], md, vd, 0.1, 0.9, 0.999, 1e-8, 0.01, 1);
        Assert.Equal(0.999 - (0.05 / (0.5 + 1e-8)), pd[0], 1e-15);
    }

    [Fact]
    public void PropertyRandomHyperparametersMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from count in Gen.Choose(0, 3000)
            from steps in Gen.Choose(1, 4)
            from lrExp in Gen.Choose(1, 4)
            from b1 in Gen.Elements(0f, 0.5f, 0.9f)
            from b2 in Gen.Elements(0.9f, 0.95f, 0.999f)
            from wd in Gen.Elements(0f, 0.01f, 0.1f)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (count, steps, new Hyper((float)Math.Pow(10, -lrExp), b1, b2, 1e-8f, wd), pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t => CheckCase(t.count, t.steps, t.Item3, paths[t.pathIndex % paths.Length], t.threads, t.count))
            .Check(TestUtil.Seeded(40, 6));
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SumOfSquaresMatchesReferenceAndIsTheSameForAnyThreadCount(SimdPath path, int threads)
    {
        foreach (int count in Sizes.Append(0).Append(40_000).Append(16 * 1024 * 5 + 3))
        {
            var x = TestUtil.Random(count, count, 3f);
            double actual = AdamW.SumOfSquares(x, new KernelOptions(threads, path));

            // Squares of fp32 are exact in double; only the double additions round: ≤ count·2⁻⁵³ relative.
            double expected = AdamWReference.SumOfSquares(x);
            Assert.True(Math.Abs(actual - expected) <= (count + 1) * Math.Pow(2, -53) * expected, $"count {count}: {actual} vs {expected}");
            Assert.Equal(actual, AdamW.SumOfSquares(x, new KernelOptions(3, path)));
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ScaleIsOneRoundedProduct(SimdPath path, int threads)
    {
        foreach (int count in Sizes.Append(40_000))
        {
            var x = TestUtil.Random(count, count);
            var scaled = (float[])x.Clone();
            AdamW.Scale(scaled, 0.37f, new KernelOptions(threads, path));
            Assert.Equal(x.Select(v => v * 0.37f).ToArray(), scaled);
        }
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] p = new float[4], g = new float[4], m = new float[4], v = new float[4];
        void Step(float[]? grad = null, float[]? mm = null, float[]? vv = null, float lr = 1e-3f, float b1 = 0.9f, float b2 = 0.999f,
            float eps = 1e-8f, float wd = 0f, int step = 1) =>
            AdamW.Step(p, grad ?? g, mm ?? m, vv ?? v, lr, b1, b2, eps, wd, step);

        var ex = Assert.Throws<ArgumentException>(() => Step(grad: new float[3]));
        Assert.Equal("grad", ex.ParamName);
        Assert.Contains("expected 4 (param.Length)", ex.Message);
        Assert.Equal("m", Assert.Throws<ArgumentException>(() => Step(mm: new float[5])).ParamName);
        Assert.Equal("v", Assert.Throws<ArgumentException>(() => Step(vv: new float[3])).ParamName);
        ex = Assert.Throws<ArgumentException>(() => Step(step: 0));
        Assert.Equal("step", ex.ParamName);
        Assert.Contains("1-based", ex.Message);
        Assert.Equal("lr", Assert.Throws<ArgumentException>(() => Step(lr: -1e-3f)).ParamName);
        Assert.Equal("beta1", Assert.Throws<ArgumentException>(() => Step(b1: 1f)).ParamName);
        Assert.Equal("beta2", Assert.Throws<ArgumentException>(() => Step(b2: -0.1f)).ParamName);
        Assert.Equal("eps", Assert.Throws<ArgumentException>(() => Step(eps: 0f)).ParamName);
        Assert.Equal("weightDecay", Assert.Throws<ArgumentException>(() => Step(wd: float.NaN)).ParamName);
    }
}
