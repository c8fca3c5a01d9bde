// The GPU kernels of DoRA and of extra LoRA branches against CPU references: LoraBranchKernels
// (all rows and a subset of rows, with and without dropout) against LoraMatmulReference over the
// gathered rows with a zero base weight (the same math and the same gathered-index mask as the
// CPU's LoraBranch), DoraNormKernels against the CPU DoraNorm (fp32 and 4-bit), and bad inputs.
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuAdapterKernelsTests(GpuFixture gpu)
{
    /// <summary>As GpuLoraMatmulTests: fp32 reassociation of a K-term sum, relative to max(1, max|ref|).</summary>
    private static double Atol(int k, double[] reference) =>
        4.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1.0, reference.Max(Math.Abs));

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

    [Theory]
    [InlineData(9, 40, 3, false)]
    [InlineData(33, 300, 5, false)]
    [InlineData(17, 64, 4, true)]
    public void RowNormsMatchTheCpuKernel(int outF, int inF, int r, bool quantized)
    {
        var wValues = TestUtil.Random(outF * inF, 1);
        var a = TestUtil.Random(r * inF, 2);
        var b = TestUtil.Random(outF * r, 3);
        const float scale = 1.25f;
        var expected = new float[outF];
        using var da = gpu.Upload(a);
        using var db = gpu.Upload(b);
        using var norms = gpu.Poisoned(outF);
        if (quantized)
        {
            var q = QuantizedWeight.Quantize(wValues, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
            DoraNorm.RowNorms(WeightOperand.Quant4(q), a, b, scale, expected, inF, outF, r);
            using var wq = Quant4Buffers.Upload(gpu.Accelerator, q);
            DoraNormKernels.RowNorms(gpu.Accelerator, DeviceWeightOperand.Quant4(wq.View), da.View, db.View, scale, norms.View, inF, outF, r);
        }
        else
        {
            DoraNorm.RowNorms(WeightOperand.F32(wValues, outF, inF), a, b, scale, expected, inF, outF, r);
            using var dw = gpu.Upload(wValues);
            DoraNormKernels.RowNorms(gpu.Accelerator, DeviceWeightOperand.Dense(dw.View, outF, inF), da.View, db.View, scale, norms.View, inF, outF, r);
        }

        // Each row's fp32 entries (r + 1 terms, FMA-contracted or not) differ by a few ulps; the squares are summed
        // in double on both sides, so the norms agree to ~r·2⁻²⁴ relative: 1e-6 relative.
        TestUtil.AssertClose(gpu.Download(norms.View), expected, 0, 1e-6, $"norms out{outF} in{inF} r{r} q{quantized}");
        Assert.All(expected, v => Assert.True(v > 0));
    }

    [Fact]
    public void DivideIsTheIeeeQuotientAndRowNormsRejectBadInputs()
    {
        var num = TestUtil.Random(37, 1);
        var den = TestUtil.Random(37, 2).Select(v => v + 2f).ToArray();
        using var dn = gpu.Upload(num);
        using var dd = gpu.Upload(den);
        using var q = gpu.Poisoned(37);
        DoraNormKernels.Divide(gpu.Accelerator, dn.View, dd.View, q.View);
        Assert.Equal(num.Zip(den, (x, y) => x / y).ToArray(), gpu.Download(q.View));
        Assert.Equal("quotient", Assert.Throws<ArgumentException>(() => DoraNormKernels.Divide(gpu.Accelerator, dn.View, dd.View, q.View.SubView(0, 36))).ParamName);

        using var w = gpu.Upload(TestUtil.Random(6 * 8, 3));
        using var a = gpu.Upload(TestUtil.Random(2 * 8, 4));
        using var b = gpu.Upload(TestUtil.Random(6 * 2, 5));
        using var norms = gpu.Poisoned(6);
        Assert.Equal("a", Assert.Throws<ArgumentException>(() =>
            DoraNormKernels.RowNorms(gpu.Accelerator, DeviceWeightOperand.Dense(w.View, 6, 8), a.View, b.View, 1f, norms.View, 8, 6, 3)).ParamName);
        Assert.Equal("norms", Assert.Throws<ArgumentException>(() =>
            DoraNormKernels.RowNorms(gpu.Accelerator, DeviceWeightOperand.Dense(w.View, 6, 8), a.View, b.View, 1f, norms.View.SubView(0, 5), 8, 6, 2)).ParamName);
        var qw = QuantizedWeight.Quantize(TestUtil.Random(6 * 64, 6), [6, 64], Quant4Type.Nf4, 64, doubleQuant: false);
        using var wq = Quant4Buffers.Upload(gpu.Accelerator, qw);
        using var a64 = gpu.Upload(TestUtil.Random(2 * 64, 7));
        using var norms12 = gpu.Poisoned(12);
        using var b12 = gpu.Upload(TestUtil.Random(12 * 2, 8));
        Assert.Contains("w has shape [6, 64]; expected [12, 32]", Assert.Throws<ArgumentException>(() =>
            DoraNormKernels.RowNorms(gpu.Accelerator, DeviceWeightOperand.Quant4(wq.View), a64.View.SubView(0, 64), b12.View, 1f, norms12.View, 32, 12, 2)).Message);
    }
}
