using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class LoraMatmulTests
{
    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private sealed record Case(int N, int In, int Out, int R, bool Bias, float Dropout, bool Bf16, int Seed = 1, bool F16 = false);

    /// <summary>
    /// Tolerance for an output that is a sum of K fp32 products: the blocked kernels reorder
    /// the sum, each rounding is ≤ 2⁻²⁴ relative to the partial sums, which stay ≤ max|ref|
    /// in size; 4·K·2⁻²⁴·max(1, max|ref|) bounds that with margin and is still orders of
    /// magnitude below one wrong or missing product.
    /// </summary>
    private static double Atol(int k, double[] reference) =>
        4.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1.0, reference.Max(Math.Abs));

    private static void CheckCase(Case c, SimdPath path, int threads, bool skipDx = false, bool skipDa = false)
    {
        var x = TestUtil.Random(c.N * c.In, c.Seed);
        var w32 = TestUtil.Random(c.Out * c.In, c.Seed + 1);
        var w16 = w32.Select(Bf16Reference.FromSingle).ToArray();
        var wHalf = w32.Select(v => (Half)v).ToArray();
        if (c.Bf16)
        {
            w32 = TestUtil.Widen(w16);
        }
        else if (c.F16)
        {
            w32 = wHalf.Select(v => (float)v).ToArray();
        }

        var bias = c.Bias ? TestUtil.Random(c.Out, c.Seed + 2) : [];
        var a = TestUtil.Random(c.R * c.In, c.Seed + 3);
        var b = TestUtil.Random(c.Out * c.R, c.Seed + 4);
        var dy = TestUtil.Random(c.N * c.Out, c.Seed + 5);
        const float scale = 1.75f;
        ulong seed = (ulong)c.Seed * 7919;
        var options = new LoraOptions(c.Dropout, seed, new KernelOptions(threads, path));

        var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w32), TestUtil.ToDouble(bias),
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, c.N, c.In, c.Out, c.R, c.Dropout, seed);
        var y = Enumerable.Repeat(float.NaN, c.N * c.Out).ToArray();
        var h = Enumerable.Repeat(float.NaN, c.N * c.R).ToArray();
        if (c.Bf16)
        {
            LoraMatmul.Forward(x, WeightOperand.Bf16(w16, c.Out, c.In), bias, a, b, scale, y, h, c.N, c.In, c.Out, c.R, options);
        }
        else if (c.F16)
        {
            LoraMatmul.Forward(x, WeightOperand.F16(wHalf, c.Out, c.In), bias, a, b, scale, y, h, c.N, c.In, c.Out, c.R, options);
        }
        else
        {
            LoraMatmul.Forward(x, WeightOperand.F32(w32, c.Out, c.In), bias, a, b, scale, y, h, c.N, c.In, c.Out, c.R, options);
        }

        string what = $"{c} {path} t{threads}";
        TestUtil.AssertClose(h, hRef, Atol(c.In, hRef), 1e-5, "h " + what);
        TestUtil.AssertClose(y, yRef, Atol(c.In + c.R, yRef) * (1 + scale), 1e-5, "y " + what);

        var (dxRef, daRef, dbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(h),
            TestUtil.ToDouble(w32), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, c.N, c.In, c.Out, c.R, c.Dropout, seed);
        var dx = skipDx ? [] : Enumerable.Repeat(float.NaN, c.N * c.In).ToArray();
        var da = skipDa ? [] : Enumerable.Repeat(float.NaN, c.R * c.In).ToArray();
        var db = Enumerable.Repeat(float.NaN, c.Out * c.R).ToArray();
        var xArg = skipDa ? [] : x;
        if (c.Bf16)
        {
            LoraMatmul.Backward(dy, xArg, h, WeightOperand.Bf16(w16, c.Out, c.In), a, b, scale, dx, da, db, c.N, c.In, c.Out, c.R, options);
        }
        else if (c.F16)
        {
            LoraMatmul.Backward(dy, xArg, h, WeightOperand.F16(wHalf, c.Out, c.In), a, b, scale, dx, da, db, c.N, c.In, c.Out, c.R, options);
        }
        else
        {
            LoraMatmul.Backward(dy, xArg, h, WeightOperand.F32(w32, c.Out, c.In), a, b, scale, dx, da, db, c.N, c.In, c.Out, c.R, options);
        }

        TestUtil.AssertClose(db, dbRef, Atol(c.N, dbRef) * scale, 1e-5, "db " + what);
        if (!skipDa)
        {
            TestUtil.AssertClose(da, daRef, Atol(c.N * c.Out, daRef) * scale, 1e-5, "da " + what);
        }

        if (!skipDx)
        {
            TestUtil.AssertClose(dx, dxRef, Atol(c.Out + c.R, dxRef) * (1 + (scale * c.R)), 1e-5, "dx " + what);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in new[] { 1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129 })
        {
            CheckCase(new Case(s, 37, 29, 5, s % 2 == 0, 0f, false, s), path, threads);
            CheckCase(new Case(3, s, 21, 3, true, 0f, s % 3 == 0, s), path, threads);
            CheckCase(new Case(5, 19, s, 2, false, 0.25f, false, s), path, threads);
        }

        foreach (int r in new[] { 1, 2, 11, 12, 13, 31, 32, 33, 64 })
        {
            CheckCase(new Case(13, 40, 35, r, true, 0f, false, r), path, threads);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void DropoutBiasAndBf16Combinations(SimdPath path, int threads)
    {
        foreach (bool bias in new[] { false, true })
        {
            foreach (float dropout in new[] { 0f, 0.1f, 0.5f })
            {
                foreach (bool bf16 in new[] { false, true })
                {
                    CheckCase(new Case(33, 65, 47, 8, bias, dropout, bf16), path, threads);
                    CheckCase(new Case(1, 70, 66, 4, bias, dropout, bf16), path, threads); // decode: GEMV path
                    CheckCase(new Case(4, 257, 17, 16, bias, dropout, bf16), path, threads); // K crosses KC
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void F16BaseWeightMatchesReferenceOnTheWidenedWeight(SimdPath path, int threads)
    {
        CheckCase(new Case(33, 65, 47, 8, true, 0.1f, false, F16: true), path, threads);
        CheckCase(new Case(1, 70, 66, 4, false, 0f, false, F16: true), path, threads); // decode: GEMV path
        CheckCase(new Case(4, 257, 17, 16, true, 0f, false, F16: true), path, threads);
        CheckCase(new Case(9, 30, 20, 4, false, 0.2f, false, F16: true), path, threads, skipDa: true);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SkippedGradientsLeaveTheOthersCorrect(SimdPath path, int threads)
    {
        CheckCase(new Case(9, 30, 20, 4, true, 0.2f, false), path, threads, skipDa: true);
        CheckCase(new Case(9, 30, 20, 4, true, 0.2f, true), path, threads, skipDx: true);
        CheckCase(new Case(9, 30, 20, 4, false, 0f, false), path, threads, skipDx: true, skipDa: true);
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from n in Gen.Choose(1, 300)
            from inF in Gen.Choose(1, 300)
            from outF in Gen.Choose(1, 300)
            from r in Gen.Choose(1, 64)
            from flags in Gen.Choose(0, 7)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (n, inF, outF, r, flags, pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t =>
        {
            var c = new Case(t.n, t.inF, t.outF, t.r, (t.flags & 1) != 0, (t.flags & 2) != 0 ? 0.3f : 0f, (t.flags & 4) != 0, t.n + t.inF);
            CheckCase(c, paths[t.pathIndex % paths.Length], t.threads);
        }).Check(TestUtil.Seeded(25, 2));
    }

    [Fact]
    public void ForwardIsBitIdenticalAcrossRunsAndThreadCounts()
    {
        var (n, inF, outF, r) = (70, 300, 90, 16);
        var x = TestUtil.Random(n * inF, 1);
        var w = TestUtil.Random(outF * inF, 2);
        var a = TestUtil.Random(r * inF, 3);
        var b = TestUtil.Random(outF * r, 4);
        float[] Run(int threads)
        {
            var y = new float[n * outF];
            LoraMatmul.Forward(x, WeightOperand.F32(w, outF, inF), [], a, b, 2f, y, new float[n * r], n, inF, outF, r, new LoraOptions(0.1f, 5, new KernelOptions(threads)));
            return y;
        }

        Assert.Equal(Run(2), Run(2));
        Assert.Equal(Run(1), Run(2));
    }

    /// <summary>The specification itself: reference backward equals central finite differences of L = Σ g ⊙ y in double.</summary>
    [Theory]
    [InlineData(0f)]
    [InlineData(0.4f)]
    public void ReferenceBackwardMatchesFiniteDifferences(float dropout)
    {
        var (n, inF, outF, r) = (3, 5, 4, 2);
        const double scale = 1.5;
        const ulong seed = 11;
        var rng = new Random(3);
        double[] Rand(int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] x = Rand(n * inF), w = Rand(outF * inF), bias = Rand(outF), a = Rand(r * inF), b = Rand(outF * r), g = Rand(n * outF);

        double Loss()
        {
            var (y, _) = LoraMatmulReference.Forward(x, w, bias, a, b, scale, n, inF, outF, r, dropout, seed);
            return y.Select((v, i) => v * g[i]).Sum();
        }

        var (_, h) = LoraMatmulReference.Forward(x, w, bias, a, b, scale, n, inF, outF, r, dropout, seed);
        var (dx, da, db) = LoraMatmulReference.Backward(g, x, h, w, a, b, scale, n, inF, outF, r, dropout, seed);
        foreach (var (param, grad, name) in new[] { (x, dx, "dx"), (a, da, "da"), (b, db, "db") })
        {
            for (int i = 0; i < param.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(param, i, 1e-6, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-7 + (1e-6 * Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }

    [Fact]
    public void DropoutMaskMatchesReferenceAndKeepsOneMinusP()
    {
        foreach (float p in new[] { 0.05f, 0.3f, 0.9f })
        {
            var mask = new DropoutMask(p, 42);
            uint threshold = DropoutReference.Threshold(p);
            int kept = 0;
            const int count = 200_000;
            for (int i = 0; i < count; i++)
            {
                bool keep = mask.Keep(i);
                Assert.Equal(DropoutReference.Keep(42, i, threshold), keep);
                kept += keep ? 1 : 0;
            }

            // Binomial(200000, 1 - p): 6 standard deviations is < 0.7% of the count.
            double sd = Math.Sqrt(count * p * (1 - p));
            Assert.InRange(kept, (count * (1 - p)) - (6 * sd), (count * (1 - p)) + (6 * sd));
        }

        Assert.NotEqual(
            Enumerable.Range(0, 64).Select(i => new DropoutMask(0.5f, 1).Keep(i)),
            Enumerable.Range(0, 64).Select(i => new DropoutMask(0.5f, 2).Keep(i)));
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] x = new float[6], w = new float[12], a = new float[6], b = new float[8], y = new float[8], h = new float[4];
        void Forward(float[] xs, float[] ws, float[] bias, float[] ys, int n = 2, int inF = 3, int outF = 4, int r = 2, float dropout = 0f) =>
            LoraMatmul.Forward(xs, WeightOperand.F32(ws, 4, 3), bias, a, b, 1f, ys, h, n, inF, outF, r, new LoraOptions(dropout));

        var ex = Assert.Throws<ArgumentException>(() => Forward(new float[5], w, [], y));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("expected 6", ex.Message);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => Forward(x, new float[13], [], y)).ParamName);
        Assert.Equal("bias", Assert.Throws<ArgumentException>(() => Forward(x, w, new float[3], y)).ParamName);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => Forward(x, w, [], new float[9])).ParamName);
        Assert.Equal("n", Assert.Throws<ArgumentException>(() => Forward(x, w, [], y, n: -1)).ParamName);
        Assert.Equal("rank", Assert.Throws<ArgumentException>(() => Forward(x, w, [], y, r: 0)).ParamName);
        Assert.Equal("inFeatures", Assert.Throws<ArgumentException>(() => Forward(x, w, [], y, inF: -3)).ParamName);
        Assert.Contains("dropout", Assert.Throws<ArgumentException>(() => Forward(x, w, [], y, dropout: 1f)).Message);

        float[] dy = new float[8], dx = new float[6], da = new float[6], db = new float[8];
        var wo = WeightOperand.F32(w, 4, 3);
        ex = Assert.Throws<ArgumentException>(() => LoraMatmul.Backward(dy, x, h, wo, a, b, 1f, dx, da, new float[7], 2, 3, 4, 2));
        Assert.Equal("db", ex.ParamName);
        Assert.Equal("da", Assert.Throws<ArgumentException>(() => LoraMatmul.Backward(dy, x, h, wo, a, b, 1f, dx, new float[5], db, 2, 3, 4, 2)).ParamName);
        Assert.Equal("x", Assert.Throws<ArgumentException>(() => LoraMatmul.Backward(dy, [], h, wo, a, b, 1f, dx, da, db, 2, 3, 4, 2)).ParamName);
        Assert.Equal("dy", Assert.Throws<ArgumentException>(() => LoraMatmul.Backward(new float[9], x, h, wo, a, b, 1f, dx, da, db, 2, 3, 4, 2)).ParamName);
        Assert.Equal("h", Assert.Throws<ArgumentException>(() => LoraMatmul.Backward(dy, x, new float[3], wo, a, b, 1f, dx, da, db, 2, 3, 4, 2)).ParamName);
    }

    [Fact]
    public void ZeroTokensIsANoOpForwardAndZeroGradientBackward()
    {
        float[] w = new float[12], a = new float[6], b = new float[8];
        var wo = WeightOperand.F32(w, 4, 3);
        LoraMatmul.Forward([], wo, [], a, b, 1f, [], [], 0, 3, 4, 2);
        var da = Enumerable.Repeat(1f, 6).ToArray();
        var db = Enumerable.Repeat(1f, 8).ToArray();
        LoraMatmul.Backward([], [], [], wo, a, b, 1f, [], da, db, 0, 3, 4, 2);
        Assert.All(da, v => Assert.Equal(0f, v));
        Assert.All(db, v => Assert.Equal(0f, v));
    }
}
