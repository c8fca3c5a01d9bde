using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>The element-wise and row-wise GPU kernels: IA³, AdamW, SwiGLU, RoPE, RMSNorm.</summary>
[Collection("Gpu")]
public class GpuElementwiseTests(GpuFixture gpu)
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

    /// <summary>Three steps, bit-identical to the CPU kernel (same IEEE operations, no FMA), and close to the double reference.</summary>
    [Fact]
    public void AdamWIsBitIdenticalToTheCpuStep()
    {
        const int count = 1000;
        var p = TestUtil.Random(count, 1);
        var m = new float[count];
        var v = new float[count];
        using var dp = gpu.Upload(p);
        using var dm = gpu.Upload(m);
        using var dv = gpu.Upload(v);
        var pd = TestUtil.ToDouble(p);
        var md = new double[count];
        var vd = new double[count];
        for (int step = 1; step <= 3; step++)
        {
            var g = TestUtil.Random(count, 10 + step, 0.1f);
            using var dg = gpu.Upload(g);
            AdamWKernels.Step(gpu.Accelerator, dp.View, dg.View, dm.View, dv.View, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
            AdamW.Step(p, g, m, v, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step);
            AdamWReference.Step(pd, TestUtil.ToDouble(g), md, vd, 1e-2, 0.9, 0.999, 1e-8, 0.01, step);
        }

        Assert.Equal(p, gpu.Download(dp.View));
        Assert.Equal(m, gpu.Download(dm.View));
        Assert.Equal(v, gpu.Download(dv.View));

        // fp32 vs double over 3 steps: a few ulp of the update (lr = 1e-2) per step.
        TestUtil.AssertClose(gpu.Download(dp.View), pd, 1e-6, 1e-6, "param vs reference");
    }

    /// <summary>σ via the device exp (a few ulp), so a few fp32 ulp of the reference.</summary>
    [Fact]
    public void SwiGluMatchesReference()
    {
        var gate = TestUtil.Random(300, 1, 8f);
        gate[0] = float.PositiveInfinity;
        gate[1] = float.NegativeInfinity;
        gate[2] = -100f;
        var up = TestUtil.Random(300, 2);
        var dy = TestUtil.Random(300, 3);
        using var dgate_ = gpu.Upload(gate);
        using var dup_ = gpu.Upload(up);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(300);
        using var dgate = gpu.Poisoned(300);
        using var dup = gpu.Poisoned(300);
        SwiGluKernels.Forward(gpu.Accelerator, dgate_.View, dup_.View, y.View);
        SwiGluKernels.Backward(gpu.Accelerator, ddy.View, dgate_.View, dup_.View, dgate.View, dup.View);
        var finite = gate.Select(z => float.IsFinite(z) ? z : 0f).ToArray();
        var yRef = SwiGluReference.Forward(TestUtil.ToDouble(finite), TestUtil.ToDouble(up));
        var (dgRef, duRef) = SwiGluReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(finite), TestUtil.ToDouble(up));
        var yGpu = gpu.Download(y.View);
        var dgGpu = gpu.Download(dgate.View);
        var duGpu = gpu.Download(dup.View);

        // silu(+∞)·up = ∞·up, silu(−∞) = 0, silu'(±∞) ∈ {1, 0}: the CPU kernel's limits.
        Assert.Equal(float.PositiveInfinity * up[0], yGpu[0]);
        Assert.Equal(0f, yGpu[1]);
        Assert.Equal(dy[0] * up[0], dgGpu[0]);
        Assert.Equal(0f, dgGpu[1]);
        TestUtil.AssertClose(yGpu.AsSpan(2), yRef.AsSpan(2), 1e-6, 1e-5, "y");
        TestUtil.AssertClose(dgGpu.AsSpan(2), dgRef.AsSpan(2), 1e-6, 1e-5, "dgate");
        TestUtil.AssertClose(duGpu.AsSpan(2), duRef.AsSpan(2), 1e-6, 1e-5, "dup");
    }

    /// <summary>The angle is the same fp32 product as the reference, cos/sin in double: outputs within a few fp32 ulp.</summary>
    [Theory]
    [InlineData(3, 2, 8)]
    [InlineData(5, 3, 34)]
    public void RopeMatchesReferenceAndRunsInPlace(int n, int heads, int headDim)
    {
        var x = TestUtil.Random(n * heads * headDim, 1);
        var positions = Enumerable.Range(0, n).Select(t => (t * 37) + 5).ToArray();
        var invFreq = Rope.InverseFrequencies(headDim, 10000);
        using var dx_ = gpu.Upload(x);
        using var dpos = gpu.Upload(positions);
        using var dinv = gpu.Upload(invFreq);
        using var y = gpu.Poisoned(x.Length);
        RopeKernels.Forward(gpu.Accelerator, dx_.View, dpos.View, dinv.View, y.View, n, heads, headDim);
        TestUtil.AssertClose(gpu.Download(y.View), RopeReference.Forward(TestUtil.ToDouble(x), positions, invFreq, n, heads, headDim), 1e-6, 1e-6, "y");
        RopeKernels.Backward(gpu.Accelerator, y.View, dpos.View, dinv.View, y.View, n, heads, headDim);
        TestUtil.AssertClose(gpu.Download(y.View), x, 1e-6, 1e-6, "Rᵀ·R·x (in place)");
    }

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

    [Fact]
    public void BadLengthsNameTheView()
    {
        using var v4 = gpu.Upload(new float[4]);
        using var v3 = gpu.Upload(new float[3]);
        var e = Assert.Throws<ArgumentException>(() => SwiGluKernels.Forward(gpu.Accelerator, v4.View, v3.View, v4.View));
        Assert.Equal("up", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => AdamWKernels.Step(gpu.Accelerator, v4.View, v4.View, v3.View, v4.View, 1e-3f, 0.9f, 0.999f, 1e-8f, 0f, 1));
        Assert.Equal("m", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => Ia3Kernels.ScaleColumns(gpu.Accelerator, v4.View, v3.View, v4.View, 2, 2));
        Assert.Equal("l", e.ParamName);
        e = Assert.Throws<ArgumentException>(() => RmsNormKernels.Forward(gpu.Accelerator, v4.View, v4.View, 1e-5f, v4.View, v3.View, 1, 4));
        Assert.Equal("rstd", e.ParamName);
        Assert.Contains("rstd has length 3; expected 1 (n)", e.Message);
    }
}
