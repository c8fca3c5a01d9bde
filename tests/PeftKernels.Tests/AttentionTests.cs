using System.Collections.Concurrent;
using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class AttentionTests
{
    private static readonly ConcurrentDictionary<Case, Expected> References = new();

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    /// <summary>One shape; q is drawn from [-QRange, QRange] (large ranges exercise the online-softmax rescaling).</summary>
    private sealed record Case(int B, int Tq, int Tk, int H, int Hkv, int D, float QRange = 1f, int Seed = 1)
    {
        public float Scale => QRange == 1f ? 1f / MathF.Sqrt(D) : 1f;

        public int QLength => B * Tq * H * D;

        public int KLength => B * Tk * Hkv * D;
    }

    private sealed record Inputs(float[] Q, float[] K, float[] V, float[] DO);

    private sealed record Expected(double[] O, double[] Lse, double[] Dq, double[] Dk, double[] Dv);

    // Tile boundaries: 64 keys, 32 queries; up to 4 queries the scores are direct dot products.
    private static readonly Case[] Cases =
    [
        new(1, 1, 1, 1, 1, 1),
        new(1, 7, 7, 2, 2, 3),            // MHA, head dim 3
        new(2, 33, 33, 4, 1, 17),         // GQA 4:1, one query past a tile
        new(1, 31, 65, 4, 2, 64),         // GQA 2:1, offset 34, one key past a tile
        new(1, 1, 129, 8, 2, 64),         // decode, GQA 4:1
        new(2, 3, 129, 2, 1, 17),         // few queries (direct scores) with an offset
        new(1, 5, 5, 1, 1, 80),           // first size on the packed-key path, head dim 80
        new(1, 65, 129, 2, 2, 80),
        new(1, 129, 129, 2, 1, 3),
        new(2, 64, 64, 2, 2, 128),        // exact tile multiples
        new(1, 40, 100, 3, 3, 16, 8f),    // scores up to ~±50: the running max must rescale
    ];

    private static Inputs MakeInputs(Case c) =>
        new(TestUtil.Random(c.QLength, c.Seed, c.QRange), TestUtil.Random(c.KLength, c.Seed + 1),
            TestUtil.Random(c.KLength, c.Seed + 2), TestUtil.Random(c.QLength, c.Seed + 3));

    private static Expected Reference(Case c) => References.GetOrAdd(c, _ =>
    {
        var x = MakeInputs(c);
        var (q, k, v) = (TestUtil.ToDouble(x.Q), TestUtil.ToDouble(x.K), TestUtil.ToDouble(x.V));
        var (o, lse) = AttentionReference.Forward(q, k, v, c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D, c.Scale);
        var (dq, dk, dv) = AttentionReference.Backward(TestUtil.ToDouble(x.DO), q, k, v, c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D, c.Scale);
        return new Expected(o, lse, dq, dk, dv);
    });

    private static (float[] O, float[] Lse, float[] Dq, float[] Dk, float[] Dv) Run(Case c, KernelOptions options)
    {
        var x = MakeInputs(c);
        var o = Enumerable.Repeat(float.NaN, c.QLength).ToArray();
        var lse = Enumerable.Repeat(float.NaN, c.B * c.H * c.Tq).ToArray();
        Attention.Forward(x.Q, x.K, x.V, o, lse, c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D, c.Scale, options);
        var dq = Enumerable.Repeat(float.NaN, c.QLength).ToArray();
        var dk = Enumerable.Repeat(float.NaN, c.KLength).ToArray();
        var dv = Enumerable.Repeat(float.NaN, c.KLength).ToArray();
        Attention.Backward(x.DO, x.Q, x.K, x.V, o, lse, dq, dk, dv, c.B, c.Tq, c.Tk, c.H, c.Hkv, c.D, c.Scale, options);
        return (o, lse, dq, dk, dv);
    }

    /// <summary>
    /// Tolerance |a − ref| ≤ 1e-5·max(1, max|ref|) + 1e-5·|ref|. The scores are fp32 dot products of
    /// length d, off by a few 2⁻²⁴ of |s|; exp turns an absolute score error δ into a relative error δ
    /// of p, and every output is a sum of such terms (o a convex combination of v, the gradients sums
    /// over up to Tk keys or Tq·H/Hkv queries, whose size max|ref| reflects). Measured worst case:
    /// 5e-7 of max|ref| with |s| ≤ ~3, 2.4e-6 with |s| up to ~50 (the QRange 8 case); a wrong mask,
    /// a missed tile or a missing rescale moves values by ≥ 1e-3.
    /// </summary>
    private static void AssertMatches(Case c, KernelOptions options)
    {
        var e = Reference(c);
        var (o, lse, dq, dk, dv) = Run(c, options);
        string what = $"{c} {options.Path} t{options.Threads}";
        const double atol = 1e-5, rtol = 1e-5;
        TestUtil.AssertClose(o, e.O, atol * MaxAbs(e.O), rtol, "o " + what);
        TestUtil.AssertClose(lse, e.Lse, atol * MaxAbs(e.Lse), rtol, "lse " + what);
        TestUtil.AssertClose(dv, e.Dv, atol * MaxAbs(e.Dv), rtol, "dv " + what);
        TestUtil.AssertClose(dq, e.Dq, atol * MaxAbs(e.Dq), rtol, "dq " + what);
        TestUtil.AssertClose(dk, e.Dk, atol * MaxAbs(e.Dk), rtol, "dk " + what);
    }

    private static double MaxAbs(double[] values) => Math.Max(1.0, values.Length == 0 ? 0 : values.Max(Math.Abs));

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ShapesMatchReference(SimdPath path, int threads)
    {
        foreach (var c in Cases)
        {
            AssertMatches(c, new KernelOptions(threads, path));
        }
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from b in Gen.Choose(1, 2)
            from tq in Gen.Choose(1, 40)
            from extra in Gen.Choose(0, 40)
            from hkv in Gen.Choose(1, 3)
            from ratio in Gen.Choose(1, 3)
            from d in Gen.Choose(1, 40)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (Case: new Case(b, tq, tq + extra, hkv * ratio, hkv, d, Seed: tq + d), Path: paths[pathIndex % paths.Length], Threads: threads);
        Prop.ForAll(gen.ToArbitrary(), t => AssertMatches(t.Case, new KernelOptions(t.Threads, t.Path)))
            .Check(TestUtil.Seeded(20, 3));
    }

    [Fact]
    public void ResultsAreBitIdenticalAcrossThreadCounts()
    {
        foreach (var c in new[] { new Case(2, 65, 129, 4, 2, 17), new Case(1, 1, 1000, 8, 2, 64) })
        {
            var one = Run(c, new KernelOptions(1));
            foreach (int threads in new[] { 2, 3 })
            {
                var many = Run(c, new KernelOptions(threads));
                Assert.Equal(one.O, many.O);
                Assert.Equal(one.Lse, many.Lse);
                Assert.Equal(one.Dq, many.Dq);
                Assert.Equal(one.Dk, many.Dk);
                Assert.Equal(one.Dv, many.Dv);
            }
        }
    }

    /// <summary>One key: p = 1, so o = v, lse = scale·q·k, dv = Σ over the group's queries of dO, and dq = dk = 0.</summary>
    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void SingleKeyHasClosedForm(SimdPath path, int threads)
    {
        var c = new Case(2, 1, 1, 4, 2, 19);
        var x = MakeInputs(c);
        var (o, lse, dq, dk, dv) = Run(c, new KernelOptions(threads, path));
        for (int b = 0; b < c.B; b++)
        {
            for (int h = 0; h < c.H; h++)
            {
                int g = h / 2, qRow = ((b * c.H) + h) * c.D, kRow = ((b * c.Hkv) + g) * c.D;
                double dot = Enumerable.Range(0, c.D).Sum(e => (double)x.Q[qRow + e] * x.K[kRow + e]);
                Assert.Equal(c.Scale * dot, lse[(b * c.H) + h], 1e-5);
                TestUtil.AssertClose(o.AsSpan(qRow, c.D), x.V.AsSpan(kRow, c.D), 1e-6, 1e-6, $"o b{b} h{h}");
            }

            for (int g = 0; g < c.Hkv; g++)
            {
                int kRow = ((b * c.Hkv) + g) * c.D, q0 = ((b * c.H) + (2 * g)) * c.D;
                var sum = Enumerable.Range(0, c.D).Select(e => (double)x.DO[q0 + e] + x.DO[q0 + c.D + e]).ToArray();
                TestUtil.AssertClose(dv.AsSpan(kRow, c.D), sum, 1e-6, 1e-6, $"dv b{b} g{g}");
            }
        }

        // ds = p·(dp − D) with p = 1 and dp = D up to fp32 rounding (the forward and backward
        // score and dot orders differ), so dq and dk are zero up to ~1e-7 of |dO|·|v|.
        TestUtil.AssertClose(dq, new double[dq.Length], 1e-6, 0, "dq");
        TestUtil.AssertClose(dk, new double[dk.Length], 1e-6, 0, "dk");
    }

    /// <summary>The specification itself: reference backward equals central finite differences of L = Σ o ⊙ R in double.</summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var (b, tq, tk, h, hkv, d) = (2, 2, 3, 4, 2, 3);
        const double scale = 0.7;
        var rng = new Random(5);
        double[] Rand(int count) => Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2) - 1).ToArray();
        double[] q = Rand(b * tq * h * d), k = Rand(b * tk * hkv * d), v = Rand(b * tk * hkv * d), r = Rand(b * tq * h * d);

        double Loss() => AttentionReference.Forward(q, k, v, b, tq, tk, h, hkv, d, scale).O.Select((o, i) => o * r[i]).Sum();

        var (dq, dk, dv) = AttentionReference.Backward(r, q, k, v, b, tq, tk, h, hkv, d, scale);
        foreach (var (param, grad, name) in new[] { (q, dq, "dq"), (k, dk, "dk"), (v, dv, "dv") })
        {
            for (int i = 0; i < param.Length; i++)
            {
                double numeric = TestUtil.CentralDifference(param, i, 1e-6, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-8 + (1e-6 * Math.Abs(numeric)), $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        // batch 1, Tq 2, Tk 3, heads 4, kvHeads 2, headDim 5.
        float[] q = new float[40], k = new float[30], v = new float[30], o = new float[40], lse = new float[8];
        void Forward(float[] qs, float[] ks, float[] vs, float[] os, float[] ls, int tq = 2, int tk = 3, int h = 4, int hkv = 2, int d = 5, float scale = 1f) =>
            Attention.Forward(qs, ks, vs, os, ls, 1, tq, tk, h, hkv, d, scale);

        var ex = Assert.Throws<ArgumentException>(() => Forward(new float[39], k, v, o, lse));
        Assert.Equal("q", ex.ParamName);
        Assert.Contains("expected 40", ex.Message);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => Forward(q, new float[31], v, o, lse)).ParamName);
        Assert.Equal("v", Assert.Throws<ArgumentException>(() => Forward(q, k, new float[29], o, lse)).ParamName);
        Assert.Equal("o", Assert.Throws<ArgumentException>(() => Forward(q, k, v, new float[41], lse)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, new float[2])).ParamName);
        ex = Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, h: 3, hkv: 2));
        Assert.Equal("kvHeads", ex.ParamName);
        Assert.Contains("multiple", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, tq: 4, tk: 3));
        Assert.Equal("keyLength", ex.ParamName);
        Assert.Contains("queryLength", ex.Message);
        Assert.Equal("headDim", Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, d: 0)).ParamName);
        Assert.Equal("heads", Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, h: 0)).ParamName);
        Assert.Equal("queryLength", Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, tq: -1)).ParamName);
        Assert.Equal("scale", Assert.Throws<ArgumentException>(() => Forward(q, k, v, o, lse, scale: float.NaN)).ParamName);

        float[] dO = new float[40], dq = new float[40], dk = new float[30], dv = new float[30];
        void Backward(float[] dos, float[] ls, float[] dqs, float[] dks, float[] dvs) =>
            Attention.Backward(dos, q, k, v, o, ls, dqs, dks, dvs, 1, 2, 3, 4, 2, 5, 1f);

        Assert.Equal("dO", Assert.Throws<ArgumentException>(() => Backward(new float[4], lse, dq, dk, dv)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() => Backward(dO, new float[9], dq, dk, dv)).ParamName);
        Assert.Equal("dq", Assert.Throws<ArgumentException>(() => Backward(dO, lse, new float[39], dk, dv)).ParamName);
        Assert.Equal("dk", Assert.Throws<ArgumentException>(() => Backward(dO, lse, dq, new float[31], dv)).ParamName);
        Assert.Equal("dv", Assert.Throws<ArgumentException>(() => Backward(dO, lse, dq, dk, [])).ParamName);
    }

    [Fact]
    public void NoQueriesIsANoOpForwardAndZeroGradientBackward()
    {
        var k = TestUtil.Random(30, 1);
        Attention.Forward([], k, k, [], [], 1, 0, 3, 4, 2, 5, 1f);
        var dk = Enumerable.Repeat(1f, 30).ToArray();
        var dv = Enumerable.Repeat(1f, 30).ToArray();
        Attention.Backward([], [], k, k, [], [], [], dk, dv, 1, 0, 3, 4, 2, 5, 1f);
        Assert.All(dk, value => Assert.Equal(0f, value));
        Assert.All(dv, value => Assert.Equal(0f, value));
    }
}
