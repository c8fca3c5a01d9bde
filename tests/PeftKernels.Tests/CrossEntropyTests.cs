using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class CrossEntropyTests
{
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static int[] Labels(int n, int vocab, int seed, double ignoredFraction = 0.2)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.NextDouble() < ignoredFraction ? -100 : rng.Next(vocab)).ToArray();
    }

    /// <summary>
    /// lse error: the fp32 sum of ≤ vocab terms in (0, 1] (relative ≤ vocab·2⁻²⁴ even when summed
    /// serially, plus a few ulp per exp and chunk fold), which is an absolute error of lse, plus the
    /// rounding of |lse| itself.
    /// </summary>
    private static double LseAtol(int vocab, double maxLse) => ((vocab + 16) * U) + (2 * U * maxLse);

    private static void CheckCase(float[] logits, int[] labels, int n, int vocab, SimdPath path, int threads, string what)
    {
        var options = new KernelOptions(threads, path);
        what = $"{what} n {n} vocab {vocab} {path} t{threads}";
        var (lossRef, lseRef) = CrossEntropyReference.Forward(TestUtil.ToDouble(logits), labels, n, vocab);
        var lse = Enumerable.Repeat(float.NaN, n).ToArray();
        double loss = CrossEntropy.Forward(logits, labels, lse, n, vocab, options);

        double maxLse = lseRef.Length == 0 ? 0 : lseRef.Max(Math.Abs);
        double lseAtol = LseAtol(vocab, maxLse);
        TestUtil.AssertClose(lse, lseRef, lseAtol, 0, "lse " + what);

        // The loss sums ≤ n rows, each off by the lse error and one ulp of the logit.
        Assert.True(Math.Abs(loss - lossRef) <= n * (lseAtol + (U * maxLse)), $"loss {what}: {loss} vs {lossRef}");

        int valid = CrossEntropy.CountValid(labels);
        float gradScale = valid == 0 ? 1f : 1f / valid;
        var gradRef = CrossEntropyReference.Backward(TestUtil.ToDouble(logits), labels, gradScale, n, vocab);
        var grad = (float[])logits.Clone();
        CrossEntropy.BackwardInPlace(grad, labels, lse, gradScale, n, vocab, options);

        // softmax = exp(z − lse): the lse error and the rounding of z − lse (≤ 2⁻²⁴·(|z| + |lse|))
        // are absolute errors of the exponent, so relative errors of the softmax; exp adds a few ulp.
        // At the label, softmax − 1 turns that into an absolute error of the same size.
        double maxLogit = logits.Length == 0 ? 0 : logits.Max(v => Math.Abs(v));
        double rel = lseAtol + (4 * U * (maxLogit + maxLse)) + (8 * U);
        TestUtil.AssertClose(grad, gradRef, gradScale * rel, rel, "grad " + what);
    }

    private static void CheckCase(int n, int vocab, SimdPath path, int threads, int seed, float range = 4f) =>
        CheckCase(TestUtil.Random(n * vocab, seed, range), Labels(n, vocab, seed + 1), n, vocab, path, threads, $"seed {seed}");

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, 37, path, threads, s);
            CheckCase(3, s, path, threads, s + 100);
        }

        CheckCase(40, 1000, path, threads, 1); // parallel path
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void RowsCrossingVocabularyChunksMatchReference(SimdPath path, int threads)
    {
        foreach (int vocab in new[] { 4095, 4096, 4097, 8193 })
        {
            // The row maximum sits in the first, a middle or the last chunk, so the online fold is
            // exercised both when a later chunk raises the running max and when it does not.
            var logits = TestUtil.Random(3 * vocab, vocab, 8f);
            logits[17] = 20f;
            logits[vocab + (vocab / 2)] = 25f;
            logits[(3 * vocab) - 1] = 30f;
            CheckCase(logits, [5, 4094, vocab - 1], 3, vocab, path, threads, "chunks");
        }
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void HugeLogitsGiveFiniteResults(SimdPath path, int threads)
    {
        const int vocab = 70;
        var logits = TestUtil.Random(4 * vocab, 3, 1e4f);
        for (int j = 2 * vocab; j < 3 * vocab; j++)
        {
            logits[j] *= 0.5f; // row 2: the two maxima below stand 5000 above the rest
        }

        logits[5] = 1e4f;
        logits[vocab + 9] = -1e4f;
        logits[(2 * vocab) + 1] = 1e4f;
        logits[(2 * vocab) + 2] = 1e4f;
        int[] labels = [5, 9, 3, -100];
        var lse = new float[4];
        double loss = CrossEntropy.Forward(logits, labels, lse, 4, vocab, new KernelOptions(threads, path));
        Assert.True(double.IsFinite(loss));
        Assert.All(lse, v => Assert.True(float.IsFinite(v)));
        var (lossRef, lseRef) = CrossEntropyReference.Forward(TestUtil.ToDouble(logits), labels, 4, vocab);

        // At |z| ~ 1e4 one fp32 ulp is 1e−3: lse and the loss are good to a few of those.
        TestUtil.AssertClose(lse, lseRef, 4e-3, 0, "lse");
        Assert.Equal(lossRef, loss, 1e-2);

        CrossEntropy.BackwardInPlace(logits, labels, lse, 1f / 3, 4, vocab, new KernelOptions(threads, path));
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));

        // Each row of (softmax − onehot)/3 sums to 0, up to the softmax's relative error: z − lse near
        // 1e4 is off by up to an ulp of 1e4 (1e−3), and so is the softmax, relatively.
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(0, logits.AsSpan(i * vocab, vocab).ToArray().Sum(v => (double)v), 1e-3 / 3);
        }

        // Row 2 has two equal maxima: each gets 1/2·1/3, the label (5000 below) −1/3.
        Assert.Equal(1.0 / 6, logits[(2 * vocab) + 1], 1e-3 / 6);
        Assert.Equal(1.0 / 6, logits[(2 * vocab) + 2], 1e-3 / 6);
        Assert.Equal(-1.0 / 3, logits[(2 * vocab) + 3], 1e-7);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void IgnoredRowsGetZeroGradientAndNoLoss(SimdPath path, int threads)
    {
        var (n, vocab) = (5, 50);
        var logits = TestUtil.Random(n * vocab, 11, 3f);
        int[] labels = [-100, -100, -100, -100, -100];
        var lse = new float[n];
        Assert.Equal(0, CrossEntropy.CountValid(labels));
        Assert.Equal(0.0, CrossEntropy.Forward(logits, labels, lse, n, vocab, new KernelOptions(threads, path)));

        // lse is written for ignored rows too.
        TestUtil.AssertClose(lse, CrossEntropyReference.Forward(TestUtil.ToDouble(logits), labels, n, vocab).Lse, LseAtol(vocab, 8), 0, "lse");
        CrossEntropy.BackwardInPlace(logits, labels, lse, 1f, n, vocab, new KernelOptions(threads, path));
        Assert.All(logits, v => Assert.Equal(0f, v));

        logits = TestUtil.Random(n * vocab, 12, 3f);
        labels = [3, -100, 7, -100, 49];
        Assert.Equal(3, CrossEntropy.CountValid(labels));
        CrossEntropy.Forward(logits, labels, lse, n, vocab, new KernelOptions(threads, path));
        CrossEntropy.BackwardInPlace(logits, labels, lse, 1f / 3, n, vocab, new KernelOptions(threads, path));
        Assert.All(logits.AsSpan(vocab, vocab).ToArray(), v => Assert.Equal(0f, v));
        Assert.Contains(logits.AsSpan(0, vocab).ToArray(), v => v != 0f);
    }

    [Fact]
    public void ResultsAreBitIdenticalAcrossThreadCounts()
    {
        var (n, vocab) = (64, 1000);
        var logits = TestUtil.Random(n * vocab, 4, 5f);
        var labels = Labels(n, vocab, 5);
        (double Loss, float[] Lse, float[] Grad) Run(int threads)
        {
            var lse = new float[n];
            double loss = CrossEntropy.Forward(logits, labels, lse, n, vocab, new KernelOptions(threads));
            var grad = (float[])logits.Clone();
            CrossEntropy.BackwardInPlace(grad, labels, lse, 0.5f, n, vocab, new KernelOptions(threads));
            return (loss, lse, grad);
        }

        var one = Run(1);
        var two = Run(2);
        Assert.Equal(one.Loss, two.Loss);
        Assert.Equal(one.Lse, two.Lse);
        Assert.Equal(one.Grad, two.Grad);
    }

    [Fact]
    public void PropertyRandomShapesMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from n in Gen.Choose(0, 40)
            from vocab in Gen.Choose(1, 600)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (n, vocab, pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t => CheckCase(t.n, t.vocab, paths[t.pathIndex % paths.Length], t.threads, t.n + t.vocab))
            .Check(TestUtil.Seeded(40, 7));
    }

    /// <summary>The specification itself: reference backward equals central differences of gradScale·loss in double.</summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var (n, vocab) = (3, 5);
        int[] labels = [2, -100, 4];
        const double gradScale = 0.5;
        var rng = new Random(8);
        double[] logits = Enumerable.Range(0, n * vocab).Select(_ => ((rng.NextDouble() * 2) - 1) * 3).ToArray();
        double Loss() => gradScale * CrossEntropyReference.Forward(logits, labels, n, vocab).Loss;

        var grad = CrossEntropyReference.Backward(logits, labels, gradScale, n, vocab);
        for (int i = 0; i < logits.Length; i++)
        {
            double numeric = TestUtil.CentralDifference(logits, i, 1e-6, Loss);
            Assert.True(Math.Abs(numeric - grad[i]) <= 1e-8 + (1e-6 * Math.Abs(numeric)), $"grad[{i}]: analytic {grad[i]}, numeric {numeric}");
        }
    }

    [Fact]
    public void BadInputsThrowClearErrors()
    {
        float[] logits = new float[12], lse = new float[3];
        var ex = Assert.Throws<ArgumentException>(() => CrossEntropy.Forward(logits, [0, 1, 4], lse, 3, 4));
        Assert.Equal("labels", ex.ParamName);
        Assert.Contains("labels[2] is 4", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => CrossEntropy.BackwardInPlace(logits, [-1, 1, 2], lse, 1f, 3, 4));
        Assert.Equal("labels", ex.ParamName);
        Assert.Contains("labels[0] is -1", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => CrossEntropy.Forward(new float[11], [0, 1, 2], lse, 3, 4));
        Assert.Equal("logits", ex.ParamName);
        Assert.Contains("expected 12 (n·vocab)", ex.Message);
        Assert.Equal("labels", Assert.Throws<ArgumentException>(() => CrossEntropy.Forward(logits, [0, 1], lse, 3, 4)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() => CrossEntropy.Forward(logits, [0, 1, 2], new float[2], 3, 4)).ParamName);
        Assert.Equal("lse", Assert.Throws<ArgumentException>(() => CrossEntropy.BackwardInPlace(logits, [0, 1, 2], new float[4], 1f, 3, 4)).ParamName);
        Assert.Equal("vocab", Assert.Throws<ArgumentException>(() => CrossEntropy.Forward([], [0, 1, 2], lse, 3, 0)).ParamName);
    }
}
