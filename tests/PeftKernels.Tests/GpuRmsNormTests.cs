// RmsNormKernels forward and backward against the reference.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuRmsNormTests(GpuFixture gpu)
{
    /// <summary>Row sums of dim products, reassociated (a tree): DotAtol(dim) on values in [-1, 1], relative 1e-5 through rstd.</summary>
    [Theory]
    [InlineData(1, 7)]
    [InlineData(5, 300)]
    [InlineData(12, 33)]
    public void RmsNormMatchesReference(int n, int dim)
    {
        var x = TestUtil.Random(n * dim, 1);
        var w = TestUtil.Random(dim, 2);
        var dy = TestUtil.Random(n * dim, 3);
        const float eps = 1e-5f;
        using var dx_ = gpu.Upload(x);
        using var dw_ = gpu.Upload(w);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(n * dim);
        using var rstd = gpu.Poisoned(n);
        using var dx = gpu.Poisoned(n * dim);
        using var dw = gpu.Poisoned(dim);
        RmsNormKernels.Forward(gpu.Accelerator, dx_.View, dw_.View, eps, y.View, rstd.View, n, dim);
        RmsNormKernels.Backward(gpu.Accelerator, ddy.View, dx_.View, dw_.View, rstd.View, dx.View, dw.View, n, dim);
        var (yRef, rstdRef) = RmsNormReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), eps, n, dim);
        var (dxRef, dwRef) = RmsNormReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(w), eps, n, dim);
        TestUtil.AssertClose(gpu.Download(rstd.View), rstdRef, 0, 1e-5, "rstd");
        TestUtil.AssertClose(gpu.Download(y.View), yRef, 1e-6, 1e-5, "y");
        double rmax = rstdRef.Max();
        TestUtil.AssertClose(gpu.Download(dx.View), dxRef, TestUtil.DotAtol(dim) * rmax * rmax * rmax, 1e-5, "dx");
        TestUtil.AssertClose(gpu.Download(dw.View), dwRef, TestUtil.DotAtol(n) * rmax, 1e-5, "dweight");
    }
}
