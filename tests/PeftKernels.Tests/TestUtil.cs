using FsCheck;
using Microsoft.FSharp.Core;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

internal static class TestUtil
{
    /// <summary>Every SIMD path this machine can run: the fast kernels are tested on each.</summary>
    public static IEnumerable<SimdPath> Paths =>
        new[] { SimdPath.Vector512, SimdPath.Vector256, SimdPath.Scalar }.Where(KernelOptions.IsSupported);

    public static TheoryData<SimdPath, int> PathsAndThreads()
    {
        var data = new TheoryData<SimdPath, int>();
        foreach (var path in Paths)
        {
            data.Add(path, 1);
            data.Add(path, 2);
        }

        return data;
    }

    /// <summary>FsCheck config with a fixed seed, so property tests are deterministic; failures print the case.</summary>
    public static Config Seeded(int maxTest, ulong seed) =>
        Config.QuickThrowOnFailure.WithMaxTest(maxTest)
            .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(seed), FSharpOption<int>.None)));

    /// <summary>(L(θᵢ + ε) − L(θᵢ − ε)) / 2ε for one element of a parameter, which is restored afterwards.</summary>
    public static double CentralDifference<T>(T[] param, int i, T eps, Func<double> loss)
        where T : System.Numerics.IFloatingPoint<T>
    {
        T saved = param[i];
        param[i] = saved + eps;
        double plus = loss();
        param[i] = saved - eps;
        double minus = loss();
        param[i] = saved;
        return (plus - minus) / (2 * double.CreateChecked(eps));
    }

    public static float[] Random(int count, int seed, float range = 1f) => Testing.TinyLlama.Uniform(count, seed, range);

    public static ushort[] RandomBf16(int count, int seed) =>
        Random(count, seed).Select(Bf16Reference.FromSingle).ToArray();

    public static float[] Widen(ushort[] bf16) => bf16.Select(Bf16Reference.ToSingle).ToArray();

    public static double[] ToDouble(float[] values) => values.Select(v => (double)v).ToArray();

    /// <summary>Asserts |actual − expected| ≤ atol + rtol·|expected| element-wise, naming the first offender.</summary>
    public static void AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double atol, double rtol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs(actual[i] - expected[i]);
            if (!(diff <= atol + (rtol * Math.Abs(expected[i]))))
            {
                Assert.Fail($"{what}: element {i} is {actual[i]}, reference {expected[i]} (|diff| {diff:G3} > atol {atol:G3} + rtol {rtol:G3}·|ref|)");
            }
        }
    }

    public static void AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double atol, double rtol, string what) =>
        AssertClose(actual, ToDouble(expected.ToArray()), atol, rtol, what);

    /// <summary>
    /// fp32 tolerance for a dot product of length k over values in [-1, 1]: each fp32
    /// rounding contributes ≤ 2⁻²⁴ of the running sum and blocked sums grow like √k in
    /// practice, so 4·k·2⁻²⁴ (atol) bounds the blocked/vector reassociation with margin
    /// while still catching a single wrong or missing product (magnitude ~0.1–1).
    /// </summary>
    public static double DotAtol(int k) => 4.0 * Math.Max(k, 16) * Math.Pow(2, -24);
}
