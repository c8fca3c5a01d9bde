// LoraBranchKernels (all rows and a subset of rows, with and without dropout) against
// LoraMatmulReference over the gathered rows with a zero base weight (the same math and the same
// gathered-index mask as the CPU's LoraBranch), and bad inputs.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuLoraBranchTests(GpuFixture gpu)
{
    /// <summary>As GpuLoraMatmulTests: fp32 reassociation of a K-term sum, relative to max(1, max|ref|).</summary>
    private static double Atol(int k, double[] reference) => GpuTolerance.LoraAtol(k, reference);

    private static double[] GatherRows(float[] source, int[] rows, int cols) =>
        [.. rows.SelectMany(r => source.Skip(r * cols).Take(cols).Select(v => (double)v))];

    [Theory]
    [InlineData(5, 33, 17, 3, 0f, false)]
    [InlineData(9, 20, 40, 4, 0.25f, false)]
    [InlineData(9, 20, 40, 4, 0f, true)]
    [InlineData(7, 16, 9, 2, 0.5f, true)]
    public void BranchForwardAndBackwardMatchTheReference(int n, int inF, int outF, int r, float dropout, bool subset)
    {
        int[]? rows = subset ? [5, 0, 3, n - 1] : null;
        int[] used = rows ?? [.. Enumerable.Range(0, n)];
        int m = used.Length;
        var x = TestUtil.Random(n * inF, 1);
        var y0 = TestUtil.Random(n * outF, 2);
        var bias = TestUtil.Random(outF, 3);
        var a = TestUtil.Random(r * inF, 4);
        var b = TestUtil.Random(outF * r, 5);
        var dy = TestUtil.Random(n * outF, 6);
        const float scale = 1.5f;
        var options = new LoraOptions(dropout, 41);
        using var dxIn = gpu.Upload(x);
        using var y = gpu.Upload(y0);
        using var dbias = gpu.Upload(bias);
        using var da_ = gpu.Upload(a);
        using var db_ = gpu.Upload(b);
        using var ddy = gpu.Upload(dy);
        using var h = gpu.Poisoned(m * r);
        LoraBranchKernels.ForwardAccumulate(gpu.Accelerator, dxIn.View, rows, da_.View, db_.View, dbias.View, scale, y.View, h.View, n, inF, outF, r, options);

        // Reference over the gathered rows: y_R = 0·xᵀ + bias + s·drop(x_R)·aᵀ·bᵀ (mask index = gathered storage index).
        var xr = GatherRows(x, used, inF);
        var zeros = new double[outF * inF];
        var (branch, hRef) = LoraMatmulReference.Forward(xr, zeros, TestUtil.ToDouble(bias), TestUtil.ToDouble(a), TestUtil.ToDouble(b),
            scale, m, inF, outF, r, dropout, 41);
        var yRef = TestUtil.ToDouble(y0);
        for (int i = 0; i < m; i++)
        {
            for (int o = 0; o < outF; o++)
            {
                yRef[(used[i] * outF) + o] += branch[(i * outF) + o];
            }
        }

        string what = $"n{n} in{inF} out{outF} r{r} p{dropout} rows {(subset ? "subset" : "all")}";
        var hGpu = gpu.Download(h.View);
        TestUtil.AssertClose(hGpu, hRef, Atol(inF, hRef), 1e-5, "h " + what);
        TestUtil.AssertClose(gpu.Download(y.View), yRef, Atol(inF + r, yRef) * (1 + scale), 1e-5, "y " + what);

        using var gx = gpu.Poisoned(n * inF);
        using var ga = gpu.Poisoned(r * inF);
        using var gb = gpu.Poisoned(outF * r);
        LoraBranchKernels.Backward(gpu.Accelerator, ddy.View, dxIn.View, rows, h.View, da_.View, db_.View, scale, gx.View, ga.View, gb.View,
            n, inF, outF, r, options);
        var (dxr, daRef, dbRef) = LoraMatmulReference.Backward(GatherRows(dy, used, outF), xr, TestUtil.ToDouble(hGpu), zeros,
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, m, inF, outF, r, dropout, 41);
        var dxRef = new double[n * inF];
        for (int i = 0; i < m; i++)
        {
            Array.Copy(dxr, i * inF, dxRef, used[i] * inF, inF);
        }

        TestUtil.AssertClose(gpu.Download(gb.View), dbRef, Atol(m, dbRef) * scale, 1e-5, "db " + what);
        TestUtil.AssertClose(gpu.Download(ga.View), daRef, Atol(m * outF, daRef) * scale, 1e-5, "da " + what);
        TestUtil.AssertClose(gpu.Download(gx.View), dxRef, Atol(outF + r, dxRef) * (1 + (scale * r)), 1e-5, "dx " + what);
    }

    [Fact]
    public void BranchWithNoRowsLeavesYAndZeroesTheGradients()
    {
        var (n, inF, outF, r) = (3, 8, 5, 2);
        var y0 = TestUtil.Random(n * outF, 1);
        using var x = gpu.Upload(TestUtil.Random(n * inF, 2));
        using var y = gpu.Upload(y0);
        using var a = gpu.Upload(TestUtil.Random(r * inF, 3));
        using var b = gpu.Upload(TestUtil.Random(outF * r, 4));
        using var dy = gpu.Upload(TestUtil.Random(n * outF, 5));
        using var h = gpu.Upload(Array.Empty<float>());
        LoraBranchKernels.ForwardAccumulate(gpu.Accelerator, x.View, [], a.View, b.View, default, 2f, y.View, h.View, n, inF, outF, r);
        Assert.Equal(y0, gpu.Download(y.View));
        using var dx = gpu.Poisoned(n * inF);
        using var da = gpu.Poisoned(r * inF);
        using var db = gpu.Poisoned(outF * r);
        LoraBranchKernels.Backward(gpu.Accelerator, dy.View, x.View, [], h.View, a.View, b.View, 2f, dx.View, da.View, db.View, n, inF, outF, r);
        Assert.All(gpu.Download(dx.View), v => Assert.Equal(0f, v));
        Assert.All(gpu.Download(da.View), v => Assert.Equal(0f, v));
        Assert.All(gpu.Download(db.View), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void BranchRejectsBadRowsAndLengths()
    {
        var (n, inF, outF, r) = (4, 8, 5, 2);
        using var x = gpu.Upload(TestUtil.Random(n * inF, 1));
        using var y = gpu.Upload(TestUtil.Random(n * outF, 2));
        using var a = gpu.Upload(TestUtil.Random(r * inF, 3));
        using var b = gpu.Upload(TestUtil.Random(outF * r, 4));
        using var h2 = gpu.Upload(new float[2 * r]);
        using var h4 = gpu.Upload(new float[n * r]);
        var acc = gpu.Accelerator;
        Assert.Contains("rows[1] = 4 is outside [0, 4)", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.ForwardAccumulate(acc, x.View, [0, 4], a.View, b.View, default, 1f, y.View, h2.View, n, inF, outF, r)).Message);
        Assert.Contains("rows[1] = 2 appears twice", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.ForwardAccumulate(acc, x.View, [2, 2], a.View, b.View, default, 1f, y.View, h2.View, n, inF, outF, r)).Message);
        Assert.Equal("h", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.ForwardAccumulate(acc, x.View, [1, 2], a.View, b.View, default, 1f, y.View, h4.View, n, inF, outF, r)).ParamName);
        Assert.Equal("bias", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.ForwardAccumulate(acc, x.View, null, a.View, b.View, h2.View, 1f, y.View, h4.View, n, inF, outF, r)).ParamName);
        Assert.Contains("dropout must be in [0, 1)", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.Backward(acc, y.View, x.View, null, h4.View, a.View, b.View, 1f, default, default, default, n, inF, outF, r, new LoraOptions(1f))).Message);
        Assert.Equal("dx", Assert.Throws<ArgumentException>(() =>
            LoraBranchKernels.Backward(acc, y.View, x.View, null, h4.View, a.View, b.View, 1f, y.View, default, default, n, inF, outF, r)).ParamName);
    }
}
