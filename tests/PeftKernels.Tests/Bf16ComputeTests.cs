using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Native;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// bf16 compute (bf16 operands, fp32 sums) on every micro-kernel: native AVX512-BF16, native AMX-BF16 (skipped
/// where the processor lacks it), and the managed fallback forced on each SIMD path. Two checks per result:
///   against the exact product of the fp32 inputs, within the bf16 bound (2u + u²)·Σ|a||b| (u = 2⁻⁸) plus the
///   fp32 sums' (k + 2)·2⁻²⁴·Σ|a||b|;
///   against the exact product of the bf16-ROUNDED inputs, within the fp32 sums' bound only — which fp32 compute
///   would miss by ~2⁻⁹·Σ|a||b|, so this proves the operands really were rounded to bf16.
/// </summary>
public class Bf16ComputeTests
{
    private const double U = 1.0 / 256; // bf16 unit roundoff, 2⁻⁸
    private const double F32 = 1.0 / (1 << 24);

    public static TheoryData<Bf16Kernel, SimdPath> Kernels()
    {
        var data = new TheoryData<Bf16Kernel, SimdPath>();
        foreach (var path in TestUtil.Paths)
        {
            data.Add(Bf16Kernel.Managed, path);
        }

        if (NativeBf16.AvxAvailable)
        {
            data.Add(Bf16Kernel.Avx512Bf16, SimdPath.Vector512);
        }

        if (NativeBf16.AmxAvailable)
        {
            data.Add(Bf16Kernel.Amx, SimdPath.Vector512);
        }

        return data;
    }

    private static KernelOptions Options(Bf16Kernel kernel, SimdPath path, int threads = 1) =>
        new(threads, path) { Compute = ComputePrecision.Bf16, Bf16Kernel = kernel };

    private static double RoundBf16(float v) => Bf16.ToSingle(Bf16.FromSingle(v));

    internal static void CheckGemm(KernelOptions options, bool transA, bool transB, int m, int n, int k, float alpha, float beta, int seed)
    {
        var a = TestUtil.Random(m * k, seed);
        var b = TestUtil.Random(k * n, seed + 1);
        var c0 = TestUtil.Random(m * n, seed + 2);
        var c = (float[])c0.Clone();
        if (beta == 0)
        {
            Array.Fill(c, float.NaN);
        }

        Gemm.Multiply(transA, transB, m, n, k, alpha, a, b, beta, c, options);
        string what = $"bf16 {options.Bf16Kernel} {options.Path} t{options.Threads} tA={transA} tB={transB} m={m} n={n} k={k} alpha={alpha} beta={beta}";
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double exact = 0, rounded = 0, magnitude = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA ? a[(p * m) + i] : a[(i * k) + p];
                    float bv = transB ? b[(j * k) + p] : b[(p * n) + j];
                    exact += (double)av * bv;
                    rounded += RoundBf16(av) * RoundBf16(bv);
                    magnitude += Math.Abs((double)av * bv);
                }

                double rest = beta * (double)c0[(i * n) + j];
                double sums = ((k + 2) * F32 * Math.Abs(alpha) * magnitude) + (4 * F32 * (Math.Abs(rest) + (Math.Abs(alpha) * magnitude))) + 1e-30;
                double got = c[(i * n) + j];
                double offExact = Math.Abs(got - ((alpha * exact) + rest));
                double boundExact = (((2 * U) + (U * U)) * Math.Abs(alpha) * magnitude) + sums;
                Assert.True(offExact <= boundExact, $"{what}: C[{i},{j}] = {got}, exact {(alpha * exact) + rest}, |diff| {offExact:G3} > bf16 bound {boundExact:G3}");
                if (m > RowDot.MaxRows)
                {
                    double offRounded = Math.Abs(got - ((alpha * rounded) + rest));
                    Assert.True(offRounded <= sums, $"{what}: C[{i},{j}] = {got}, product of bf16-rounded inputs {(alpha * rounded) + rest}, |diff| {offRounded:G3} > fp32-sum bound {sums:G3} (operands not rounded to bf16?)");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void AwkwardSizesMatchTheBf16Bound(Bf16Kernel kernel, SimdPath path)
    {
        int[] sizes = [1, 3, 5, 7, 12, 13, 16, 17, 24, 25, 31, 33, 65];
        foreach (int s in sizes)
        {
            var options = Options(kernel, path);
            CheckGemm(options, false, true, Math.Max(s, 5), 37, 29, 1f, 0f, s);
            CheckGemm(options, false, false, 19, s, 23, 0.5f, 1f, s + 100);
            CheckGemm(options, true, true, 21, 35, s, 1f, 0f, s + 200);
            CheckGemm(options, true, false, s + 4, s, s, -2f, 0.25f, s + 300);
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void BlockBoundariesAndThreadsMatchTheBf16Bound(Bf16Kernel kernel, SimdPath path)
    {
        foreach (int k in new[] { 1, 2, 511, 512, 513, 1023, 1024, 1025, 2049 })
        {
            CheckGemm(Options(kernel, path, 2), false, true, 29, 45, k, 1f, 0f, k);
        }

        // Rank-sized outputs (the 24×16 native kernel) and row counts across MC (24·MR) and the thread split.
        CheckGemm(Options(kernel, path, 2), false, true, 300, 16, 64, 1f, 0f, 7);
        CheckGemm(Options(kernel, path, 2), false, false, 97, 8, 33, 1f, 1f, 8);
        CheckGemm(Options(kernel, path, 2), false, false, 290, 70, 40, 1f, 0f, 9);
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void OneAndTwoThreadsAgreeBitForBit(Bf16Kernel kernel, SimdPath path)
    {
        int m = 77, n = 70, k = 600;
        var a = TestUtil.Random(m * k, 3);
        var b = TestUtil.Random(k * n, 4);
        var c1 = new float[m * n];
        var c2 = new float[m * n];
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c1, Options(kernel, path, 1));
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c2, Options(kernel, path, 2));
        Assert.Equal(c1, c2);
    }

    [Fact]
    public void Fp32IsTheDefaultAndUnchanged()
    {
        Assert.Equal(ComputePrecision.Fp32, default(KernelOptions).Compute);
        int m = 40, n = 33, k = 70;
        var a = TestUtil.Random(m * k, 5);
        var b = TestUtil.Random(k * n, 6);
        var c1 = new float[m * n];
        var c2 = new float[m * n];
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c1, new KernelOptions(1));
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c2, new KernelOptions(1) { Compute = ComputePrecision.Fp32, Bf16Kernel = Bf16Kernel.Managed });
        Assert.Equal(c1, c2);
        var c3 = new float[m * n];
        Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c3, new KernelOptions(1) { Compute = ComputePrecision.Bf16 });
        Assert.NotEqual(c1, c3);
    }

    [Fact]
    public void AutoPicksTheNativeKernelWhereTheProcessorHasIt()
    {
        var expected = NativeBf16.AmxAvailable ? Bf16Kernel.Amx : NativeBf16.AvxAvailable ? Bf16Kernel.Avx512Bf16 : Bf16Kernel.Managed;
        Assert.Equal(expected, GemmDriver.ResolveBf16(Bf16Kernel.Auto, KernelOptions.Best));
        Assert.Equal(Bf16Kernel.Managed, GemmDriver.ResolveBf16(Bf16Kernel.Managed, KernelOptions.Best));
        if (!NativeBf16.AmxAvailable)
        {
            var e = Assert.Throws<NotSupportedException>(() => GemmDriver.ResolveBf16(Bf16Kernel.Amx, SimdPath.Vector512));
            Assert.Contains(NativeBf16.AmxStatus, e.Message);
        }

        // A processor that reports AVX512-BF16 runs the native kernel whenever the library was built next to the assemblies.
        if (NativeBf16.HasAvx512Bf16 && File.Exists(Path.Combine(AppContext.BaseDirectory, NativeBf16.LibraryName)) && Environment.GetEnvironmentVariable("PEFT_NATIVE") != "0")
        {
            Assert.True(NativeBf16.AvxAvailable, NativeBf16.AvxStatus);
        }
    }

    [Avx512Bf16Fact]
    public void NativeAvx512Bf16KernelRuns() =>
        CheckGemm(Options(Bf16Kernel.Avx512Bf16, SimdPath.Vector512, 2), false, true, 50, 70, 131, 1f, 0f, 11);

    [AmxFact]
    public void NativeAmxKernelRuns() =>
        CheckGemm(Options(Bf16Kernel.Amx, SimdPath.Vector512, 2), false, true, 50, 70, 131, 1f, 0f, 12);
}

/// <summary>A fact that needs the native AVX512-BF16 kernel: skipped, with the reason, where it cannot run.</summary>
public sealed class Avx512Bf16FactAttribute : FactAttribute
{
    public Avx512Bf16FactAttribute()
    {
        if (!NativeBf16.AvxAvailable)
        {
            Skip = "native AVX512-BF16 kernel unavailable: " + NativeBf16.AvxStatus;
        }
    }
}

/// <summary>A fact that needs the native AMX-BF16 kernel: skipped, with the reason (e.g. no AMX-BF16 in CPUID), where it cannot run.</summary>
public sealed class AmxFactAttribute : FactAttribute
{
    public AmxFactAttribute()
    {
        if (!NativeBf16.AmxAvailable)
        {
            Skip = "native AMX-BF16 kernel unavailable: " + NativeBf16.AmxStatus;
        }
    }
}
