// AdamWKernels: the step, and the gradient-norm helpers (sum of squares, scale) against the CPU AdamW.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuAdamWTests(GpuFixture gpu)
{
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

    /// <summary>
    /// Σ x² in double on both sides, only the grouping differs (double rounding, ~1e-16 per addition): 1e-12 relative.
    /// 70 000 elements take several groups and several elements per thread. Scale is one IEEE multiply: bit-identical.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(33)]
    [InlineData(4097)]
    [InlineData(70_000)]
    public void SumOfSquaresAndScaleMatchTheCpu(int count)
    {
        var x = TestUtil.Random(count, 5);
        using var dx = gpu.Upload(x);
        double expected = AdamW.SumOfSquares(x);
        Assert.Equal(expected, AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View), Math.Max(1e-12 * expected, 1e-300));
        Assert.Equal(AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View), AdamWKernels.SumOfSquares(gpu.Accelerator, dx.View));

        AdamWKernels.Scale(gpu.Accelerator, dx.View, 0.37f);
        AdamW.Scale(x, 0.37f);
        Assert.Equal(x, gpu.Download(dx.View));
    }
}
