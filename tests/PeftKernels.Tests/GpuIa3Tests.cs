// Ia3Kernels against a double reference of IA³ (y = x ⊙ l and its gradients), itself checked by finite differences.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuIa3Tests(GpuFixture gpu)
{
    // IA³'s specification in double (no CPU kernel yet): y = x ⊙ l, dx = dy ⊙ l, dl_j = Σ_i dy_ij x_ij.
    private static (double[] Y, double[] Dx, double[] Dl) Ia3Reference(float[] x, float[] l, float[] dy, int n, int dim)
    {
        var y = new double[n * dim];
        var dx = new double[n * dim];
        var dl = new double[dim];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < dim; j++)
            {
                int at = (i * dim) + j;
                y[at] = (double)x[at] * l[j];
                dx[at] = (double)dy[at] * l[j];
                dl[j] += (double)dy[at] * x[at];
            }
        }

        return (y, dx, dl);
    }

    /// <summary>y and dx are single fp32 products (rounded once: ≤ 2⁻²⁴ relative); dl sums n products (DotAtol).</summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(17, 33)]
    [InlineData(9, 70)]
    public void Ia3MatchesReference(int n, int dim)
    {
        var x = TestUtil.Random(n * dim, 1);
        var l = TestUtil.Random(dim, 2);
        var dy = TestUtil.Random(n * dim, 3);
        using var dx_ = gpu.Upload(x);
        using var dl_ = gpu.Upload(l);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(n * dim);
        using var dx = gpu.Poisoned(n * dim);
        using var dl = gpu.Poisoned(dim);
        Ia3Kernels.ScaleColumns(gpu.Accelerator, dx_.View, dl_.View, y.View, n, dim);
        Ia3Kernels.ScaleColumnsBackward(gpu.Accelerator, ddy.View, dx_.View, dl_.View, dx.View, dl.View, n, dim);
        var (yRef, dxRef, dlRef) = Ia3Reference(x, l, dy, n, dim);
        TestUtil.AssertClose(gpu.Download(y.View), yRef, 0, 1e-7, "y");
        TestUtil.AssertClose(gpu.Download(dx.View), dxRef, 0, 1e-7, "dx");
        TestUtil.AssertClose(gpu.Download(dl.View), dlRef, TestUtil.DotAtol(n), 1e-6, "dl");
    }

    [Fact]
    public void Ia3ReferenceBackwardMatchesFiniteDifferences()
    {
        var (n, dim) = (3, 4);
        var x = TestUtil.Random(n * dim, 4);
        var l = TestUtil.Random(dim, 5);
        var g = TestUtil.Random(n * dim, 6);
        double Loss() => Ia3Reference(x, l, g, n, dim).Y.Select((v, i) => v * g[i]).Sum();
        var (_, dx, dl) = Ia3Reference(x, l, g, n, dim);
        foreach (var (param, grad, name) in new[] { (x, dx, "dx"), (l, dl, "dl") })
        {
            for (int i = 0; i < param.Length; i++)
            {
                // fp32 parameters: ε = 2⁻⁸ keeps the perturbation exact; the loss is linear in each one, so the difference is exact up to rounding.
                double numeric = TestUtil.CentralDifference(param, i, 1f / 256, Loss);
                Assert.True(Math.Abs(numeric - grad[i]) <= 1e-5, $"{name}[{i}]: analytic {grad[i]}, numeric {numeric}");
            }
        }
    }
}
