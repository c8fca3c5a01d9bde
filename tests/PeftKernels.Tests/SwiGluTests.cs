using FsCheck;
using FsCheck.Fluent;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

public class SwiGluTests
{
    private const float GateRange = 12f;
    private static readonly double U = Math.Pow(2, -24);
    private static readonly int[] Sizes = [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129];

    public static TheoryData<SimdPath, int> PathsAndThreads() => TestUtil.PathsAndThreads();

    private static void CheckCase(int count, SimdPath path, int threads, int seed)
    {
        var gate = TestUtil.Random(count, seed, GateRange);
        var up = TestUtil.Random(count, seed + 1);
        var dy = TestUtil.Random(count, seed + 2);
        var options = new KernelOptions(threads, path);
        string what = $"count {count} {path} t{threads}";

        var y = Enumerable.Repeat(float.NaN, count).ToArray();
        SwiGlu.Forward(gate, up, y, options);
        var (g, u, d) = (TestUtil.ToDouble(gate), TestUtil.ToDouble(up), TestUtil.ToDouble(dy));

        // exp is within a few ulp (vector Exp or MathF.Exp); σ, silu and the products add a rounding
        // each: 16·2⁻²⁴ relative bounds them with margin. Products only, so the bound is relative.
        TestUtil.AssertClose(y, SwiGluReference.Forward(g, u), 1e-30, 16 * U, "y " + what);

        var dgate = Enumerable.Repeat(float.NaN, count).ToArray();
        var dup = Enumerable.Repeat(float.NaN, count).ToArray();
        SwiGlu.Backward(dy, gate, up, dgate, dup, options);
        var (dgateRef, dupRef) = SwiGluReference.Backward(d, g, u);
        TestUtil.AssertClose(dup, dupRef, 1e-30, 16 * U, "dup " + what);

        // silu' = σ·(1 + z·(1 − σ)) cancels near z ≈ −1.28 and 1 − σ carries σ's absolute error
        // (≤ 2⁻²⁴) times |z| ≤ 12: an absolute error ≲ (2 + |z|)·few ulp on |dy·up| ≤ 1.
        TestUtil.AssertClose(dgate, dgateRef, 8 * (2 + GateRange) * U, 16 * U, "dgate " + what);
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void AwkwardSizesMatchReference(SimdPath path, int threads)
    {
        foreach (int s in Sizes)
        {
            CheckCase(s, path, threads, s);
        }

        CheckCase(40_000, path, threads, 1); // parallel path
    }

    [Theory]
    [MemberData(nameof(PathsAndThreads))]
    public void ExtremeGatesGiveTheLimitsAndNoNaN(SimdPath path, int threads)
    {
        float[] special = [0f, 1f, -1f, 100f, -100f, 1e30f, -1e30f, float.PositiveInfinity, float.NegativeInfinity, 88f, -88f, 89f, -104f, 20f, -20f, -1.2784645f];

        // Repeated so every value lands in vector lanes and in the scalar tail.
        var gate = Enumerable.Range(0, 37).Select(i => special[(i * 7) % special.Length]).ToArray();
        var up = Enumerable.Repeat(2f, gate.Length).ToArray();
        var dy = Enumerable.Repeat(0.5f, gate.Length).ToArray();
        var y = new float[gate.Length];
        var dgate = new float[gate.Length];
        var dup = new float[gate.Length];
        var options = new KernelOptions(threads, path);
        SwiGlu.Forward(gate, up, y, options);
        SwiGlu.Backward(dy, gate, up, dgate, dup, options);

        for (int i = 0; i < gate.Length; i++)
        {
            float z = gate[i];
            Assert.False(float.IsNaN(y[i]) || float.IsNaN(dgate[i]) || float.IsNaN(dup[i]), $"NaN at gate {z}");
            if (float.IsInfinity(z))
            {
                // silu(+∞) = +∞, silu(−∞) = 0; silu'(+∞) = 1, silu'(−∞) = 0.
                Assert.Equal(z > 0 ? float.PositiveInfinity : 0f, y[i]);
                Assert.Equal(z > 0 ? float.PositiveInfinity : 0f, dup[i]);
                Assert.Equal(z > 0 ? 1f : 0f, dgate[i]);
                continue;
            }

            double yRef = SwiGluReference.Forward([z], [2])[0];
            var (dg, du) = SwiGluReference.Backward([0.5], [z], [2]);
            double dgateRef = dg[0], dupRef = du[0];

            // Same relative bounds as above; the absolute floor covers silu(−100) ≈ −7e−42, which is subnormal in fp32.
            Assert.True(Math.Abs(y[i] - yRef) <= 1e-40 + (16 * U * Math.Abs(yRef)), $"y at gate {z}: {y[i]} vs {yRef}");
            Assert.True(Math.Abs(dup[i] - dupRef) <= 1e-40 + (16 * U * Math.Abs(dupRef)), $"dup at gate {z}: {dup[i]} vs {dupRef}");
            Assert.True(Math.Abs(dgate[i] - dgateRef) <= 1e-40 + (8 * 2 * U) + (16 * U * Math.Abs(dgateRef)), $"dgate at gate {z}: {dgate[i]} vs {dgateRef}");
        }
    }

    [Fact]
    public void PropertyRandomLengthsMatchReference()
    {
        var paths = TestUtil.Paths.ToArray();
        var gen =
            from count in Gen.Choose(0, 5000)
            from pathIndex in Gen.Choose(0, 2)
            from threads in Gen.Choose(1, 2)
            select (count, pathIndex, threads);
        Prop.ForAll(gen.ToArbitrary(), t => CheckCase(t.count, paths[t.pathIndex % paths.Length], t.threads, t.count))
            .Check(TestUtil.Seeded(40, 5));
    }

    /// <summary>The specification itself: reference backward equals central differences of L = Σ g ⊙ y in double.</summary>
    [Fact]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        var rng = new Random(7);
        double[] Rand(int count, double range) => Enumerable.Range(0, count).Select(_ => ((rng.NextDouble() * 2) - 1) * range).ToArray();
        double[] gate = Rand(12, 6), up = Rand(12, 1), g = Rand(12, 1);
        double Loss() => SwiGluReference.Forward(gate, up).Select((v, i) => v * g[i]).Sum();

        var (dgate, dup) = SwiGluReference.Backward(g, gate, up);
        foreach (var (param, grad, name) in new[] { (gate, dgate, "dgate"), (up, dup, "dup") })
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
        float[] a = new float[4], b = new float[4], c = new float[4], d = new float[4];
        var ex = Assert.Throws<ArgumentException>(() => SwiGlu.Forward(a, new float[3], c));
        Assert.Equal("up", ex.ParamName);
        Assert.Contains("expected 4 (gate.Length)", ex.Message);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => SwiGlu.Forward(a, b, new float[5])).ParamName);
        Assert.Equal("gate", Assert.Throws<ArgumentException>(() => SwiGlu.Backward(a, new float[3], b, c, d)).ParamName);
        Assert.Equal("up", Assert.Throws<ArgumentException>(() => SwiGlu.Backward(a, b, new float[3], c, d)).ParamName);
        Assert.Equal("dgate", Assert.Throws<ArgumentException>(() => SwiGlu.Backward(a, b, c, new float[3], d)).ParamName);
        ex = Assert.Throws<ArgumentException>(() => SwiGlu.Backward(a, b, c, d, new float[5]));
        Assert.Equal("dup", ex.ParamName);
        Assert.Contains("dy.Length", ex.Message);
    }
}
