// GemmKernels' naive, tiled and TF32 tensor-core paths against the reference GEMM.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuGemmTests(GpuFixture gpu)
{
    /// <summary>
    /// fp32 sums of k products of values in [-1, 1] (TestUtil.DotAtol): the kernels sum in a
    /// different order than the double reference, each rounding ≤ 2⁻²⁴ of the partial sum.
    /// </summary>
    private static double Atol(int k) => TestUtil.DotAtol(k) * 2;

    [Theory]
    [InlineData(1, 1, 1, false, false)]
    [InlineData(3, 7, 5, true, false)]
    [InlineData(17, 15, 33, false, true)]
    [InlineData(16, 33, 9, true, true)]
    internal void NaiveMatchesReference(int m, int n, int k, bool transA, bool transB) =>
        Check(m, n, k, transA, transB, 0.5f, GemmPath.Naive);

    [Theory]
    [InlineData(129, 65, 17, false, true)]
    [InlineData(33, 130, 9, true, false)]
    [InlineData(7, 3, 0, false, false)]
    internal void TiledMatchesReference(int m, int n, int k, bool transA, bool transB) =>
        Check(m, n, k, transA, transB, 0f, GemmPath.Tiled);

    /// <summary>
    /// The TF32 tensor-core kernel, its mma emulated by warp shuffles on the CPU accelerator (the
    /// launcher never picks it there). Inputs are rounded to 10 mantissa bits (relative error
    /// ≤ 2⁻¹¹ per input, so ≤ 2⁻¹⁰ per product), hence atol k·2⁻¹⁰ for values in [-1, 1].
    /// </summary>
    [Theory]
    [InlineData(130, 129, 20, false, true)]
    [InlineData(5, 9, 7, true, false)]
    internal void TensorCoreMatchesReference(int m, int n, int k, bool transA, bool transB) =>
        Check(m, n, k, transA, transB, 0.25f, GemmPath.TensorCore, k * Math.Pow(2, -10) * 1.5);

    [Fact]
    public void Tf32IsNotOfferedOnTheCpuAccelerator() => Assert.False(GemmKernels.SupportsTf32(gpu.Accelerator));

    private void Check(int m, int n, int k, bool transA, bool transB, float beta, GemmPath path, double? atol = null)
    {
        var a = TestUtil.Random(m * k, 1);
        var b = TestUtil.Random(k * n, 2);
        var c0 = TestUtil.Random(m * n, 3);
        var expected = (float[])c0.Clone();
        GemmReference.Multiply(transA, transB, m, n, k, 1.5f, a, b, beta, expected);
        using var da = gpu.Upload(a);
        using var db = gpu.Upload(b);
        using var dc = beta == 0 ? gpu.Poisoned(m * n) : gpu.Upload(c0);
        GemmKernels.Multiply(gpu.Accelerator, transA, transB, m, n, k, 1.5f, da.View, db.View, beta, dc.View, path);
        TestUtil.AssertClose(gpu.Download(dc.View), expected, atol ?? Atol(k) * 1.5, 1e-5, $"gemm {path} {m}x{n}x{k} tA={transA} tB={transB}");
    }
}
