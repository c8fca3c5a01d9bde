using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class GemmTests
{
    // Awkward sizes (1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, …) plus the blocking constants ±1 of every path:
    // MR 12/6/4 (24 for the narrow V512 kernel), NR 32/16/4, KC 512, MC 24·MR = 288 (V512) / 144 (V256).
    private static readonly int[] AwkwardSizes = [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129];
    private static readonly int[] KBoundaries = [255, 256, 257, 511, 512, 513, 1023, 1025];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static void CheckAgainstReference(SimdPath path, int threads, bool transA, bool transB, int m, int n, int k,
        float alpha = 1f, float beta = 0f, int seed = 1)
    {
        var a = TestUtil.Random(m * k, seed);
        var b = TestUtil.Random(k * n, seed + 1);
        var c = TestUtil.Random(m * n, seed + 2);
        var expected = (float[])c.Clone();
        if (beta == 0)
        {
            Array.Fill(c, float.NaN); // beta = 0: C must not be read
        }

        GemmReference.Multiply(transA, transB, m, n, k, alpha, a, b, beta, expected);
        Gemm.Multiply(transA, transB, m, n, k, alpha, a, b, beta, c, new KernelOptions(threads, path));
        TestUtil.AssertClose(c, expected, TestUtil.DotAtol(k) * Math.Max(1, Math.Abs(alpha)), 1e-5,
            $"gemm {path} t{threads} tA={transA} tB={transB} m={m} n={n} k={k}");
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in AwkwardSizes)
        {
            CheckAgainstReference(path, threads, false, true, s, 37, 29, seed: s);
            CheckAgainstReference(path, threads, false, false, 19, s, 23, seed: s);
            CheckAgainstReference(path, threads, true, true, 21, 35, s, seed: s);
            CheckAgainstReference(path, threads, true, false, s, s, s, seed: s);
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void BlockBoundariesMatchReference(SimdPath path, int threads)
    {
        foreach (int k in KBoundaries)
        {
            CheckAgainstReference(path, threads, false, true, 13, 33, k, seed: k);
        }

        foreach (int m in new[] { 143, 144, 145, 287, 288, 289 })
        {
            CheckAgainstReference(path, threads, false, false, m, 17, 9, seed: m);
        }

        // The narrow Vector512 kernel (24 × 16, used when n ≤ 16): MR and MC = 576 rows ± 1.
        foreach (int m in new[] { 23, 24, 25, 575, 576, 577 })
        {
            CheckAgainstReference(path, threads, false, false, m, 16, 9, seed: m);
            CheckAgainstReference(path, threads, true, true, m, 7, 33, seed: m);
        }

        // N crosses the NC = 4096 panel width.
        CheckAgainstReference(path, threads, false, true, 5, 4097, 3);
        CheckAgainstReference(path, threads, false, false, 13, 4097, 2);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AlphaBetaAccumulate(SimdPath path, int threads)
    {
        CheckAgainstReference(path, threads, false, true, 30, 40, 50, alpha: -0.5f, beta: 0.75f);
        CheckAgainstReference(path, threads, true, false, 3, 70, 300, alpha: 2f, beta: 1f);
        CheckAgainstReference(path, threads, false, true, 2, 70, 40, alpha: 1.5f, beta: -1f); // GEMV path
    }

    [Fact]
    public void ZeroKWritesBetaTimesC()
    {
        var c = new float[] { 1, 2, 3, 4 };
        Gemm.Multiply(false, false, 2, 2, 0, 1f, [], ReadOnlySpan<float>.Empty, 0.5f, c);
        Assert.Equal(new float[] { 0.5f, 1, 1.5f, 2 }, c);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void Bf16WeightsMatchReference(SimdPath path, int threads)
    {
        foreach (var (m, n, k, transB) in new[] { (1, 45, 77, true), (3, 33, 65, true), (17, 64, 129, true), (29, 31, 257, false), (13, 17, 7, false) })
        {
            var a = TestUtil.Random(m * k, m);
            var b = TestUtil.RandomBf16(k * n, n);
            var expected = new float[m * n];
            var c = new float[m * n];
            GemmReference.Multiply(false, transB, m, n, k, 1f, a, b, 0f, expected);
            Gemm.Multiply(false, transB, m, n, k, 1f, a, b, 0f, c, new KernelOptions(threads, path));
            TestUtil.AssertClose(c, expected, TestUtil.DotAtol(k), 1e-5, $"bf16 gemm {path} t{threads} m={m} n={n} k={k} tB={transB}");
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void F16WeightsMatchReference(SimdPath path, int threads)
    {
        foreach (var (m, n, k, transB) in new[] { (1, 45, 77, true), (3, 33, 65, true), (4, 20, 30, false), (17, 64, 129, true), (29, 31, 257, false), (13, 17, 7, false) })
        {
            var a = TestUtil.Random(m * k, m);
            var b = TestUtil.Random(k * n, n).Select(v => (Half)v).ToArray();
            var expected = new float[m * n];
            var c = new float[m * n];
            GemmReference.Multiply(false, transB, m, n, k, 1f, a, b.Select(v => (float)v).ToArray(), 0f, expected);
            Gemm.Multiply(false, transB, m, n, k, 1f, a, b, 0f, c, new KernelOptions(threads, path));

            // fp16 → fp32 widening is exact, so only the fp32 reassociation bound applies.
            TestUtil.AssertClose(c, expected, TestUtil.DotAtol(k), 1e-5, $"f16 gemm {path} t{threads} m={m} n={n} k={k} tB={transB}");
        }
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var gen =
            from m in Gen.Choose(1, 300)
            from n in Gen.Choose(1, 300)
            from k in Gen.Choose(1, 300)
            from flags in Gen.Choose(0, 3)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (m, n, k, flags, pathIndex, threads);
        var paths = TestUtil.Paths.ToArray();
        Prop.ForAll(gen.ToArbitrary(), t =>
        {
            var path = paths[t.pathIndex % paths.Length];
            CheckAgainstReference(path, t.threads, (t.flags & 1) != 0, (t.flags & 2) != 0, t.m, t.n, t.k, seed: t.m + t.n + t.k);
        }).Check(TestUtil.Seeded(40, 1));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void ResultsAreBitIdenticalAcrossRunsAndThreadCounts(int threads)
    {
        var (m, n, k) = (300, 200, 520);
        var a = TestUtil.Random(m * k, 1);
        var b = TestUtil.Random(k * n, 2);
        var first = new float[m * n];
        var second = new float[m * n];
        var single = new float[m * n];
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, first, new KernelOptions(threads));
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, second, new KernelOptions(threads));
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, single, new KernelOptions(1));
        Assert.Equal(first, second);
        Assert.Equal(single, first);
    }

    [Fact]
    public void WrongSpanLengthsAreNamed()
    {
        var ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(false, false, 2, 3, 4, 1f, new float[8], new float[11], 0f, new float[6]));
        Assert.Equal("b", ex.ParamName);
        Assert.Contains("expected 12", ex.Message);
        Assert.Contains("11", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(false, false, 2, 3, 4, 1f, new float[9], new float[12], 0f, new float[6]));
        Assert.Equal("a", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(false, false, 2, 3, 4, 1f, new float[8], new float[12], 0f, new float[7]));
        Assert.Equal("c", ex.ParamName);
        ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(false, false, -1, 3, 4, 1f, [], new float[12], 0f, []));
        Assert.Equal("m", ex.ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Multiply(false, false, 1, 1, 1, 1f, new float[1], new float[1], 0f, new float[1], new KernelOptions(-1)));
    }

    [Fact]
    public void EmptyProblemIsANoOp()
    {
        var c = Array.Empty<float>();
        Gemm.Multiply(false, false, 0, 5, 3, 1f, [], new float[15], 0f, c);
        Gemm.Multiply(false, false, 4, 0, 3, 1f, new float[12], Array.Empty<float>(), 0f, c);
        Assert.Empty(c);
    }
}
