// LoraMatmulKernels forward and backward (dense fp32 base) against the reference, skipped gradients, bad lengths.

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuLoraMatmulTests(GpuFixture gpu)
{
    /// <summary>
    /// As LoraMatmulTests: an output that is a sum of K fp32 products is reordered by the GPU GEMM;
    /// 4·K·2⁻²⁴·max(1, max|ref|) bounds that with margin and stays far below one wrong product.
    /// </summary>
    private static double Atol(int k, double[] reference) => GpuTolerance.LoraAtol(k, reference);

    [Theory]
    [InlineData(5, 33, 17, 3, true, 0f, GemmPath.Naive)]
    [InlineData(9, 20, 130, 4, false, 0.25f, GemmPath.Tiled)]
    [InlineData(3, 7, 9, 2, true, 0.5f, GemmPath.Auto)]
    internal void ForwardAndBackwardMatchReference(int n, int inF, int outF, int r, bool bias, float dropout, GemmPath path)
    {
        var x = TestUtil.Random(n * inF, 1);
        var w = TestUtil.Random(outF * inF, 2);
        var bv = bias ? TestUtil.Random(outF, 3) : [];
        var a = TestUtil.Random(r * inF, 4);
        var b = TestUtil.Random(outF * r, 5);
        var dy = TestUtil.Random(n * outF, 6);
        const float scale = 1.75f;
        const ulong seed = 77;
        var options = new LoraOptions(dropout, seed);
        using var dx_ = gpu.Upload(x);
        using var dw = gpu.Upload(w);
        using var dbias = gpu.Upload(bv);
        using var da_ = gpu.Upload(a);
        using var db_ = gpu.Upload(b);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(n * outF);
        using var h = gpu.Poisoned(n * r);
        LoraMatmulKernels.Forward(gpu.Accelerator, dx_.View, DeviceWeightOperand.Dense(dw.View, outF, inF), dbias.View, da_.View, db_.View, scale, y.View, h.View, n, inF, outF, r, options, path);

        var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bv),
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, seed);
        var hGpu = gpu.Download(h.View);
        string what = $"n{n} in{inF} out{outF} r{r} p{dropout} {path}";
        TestUtil.AssertClose(hGpu, hRef, Atol(inF, hRef), 1e-5, "h " + what);
        TestUtil.AssertClose(gpu.Download(y.View), yRef, Atol(inF + r, yRef) * (1 + scale), 1e-5, "y " + what);

        using var gx = gpu.Poisoned(n * inF);
        using var ga = gpu.Poisoned(r * inF);
        using var gb = gpu.Poisoned(outF * r);
        LoraMatmulKernels.Backward(gpu.Accelerator, ddy.View, dx_.View, h.View, DeviceWeightOperand.Dense(dw.View, outF, inF), da_.View, db_.View, scale, gx.View, ga.View, gb.View,
            n, inF, outF, r, options, path);
        var (dxRef, daRef, dbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(hGpu),
            TestUtil.ToDouble(w), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, seed);
        TestUtil.AssertClose(gpu.Download(gb.View), dbRef, Atol(n, dbRef) * scale, 1e-5, "db " + what);
        TestUtil.AssertClose(gpu.Download(ga.View), daRef, Atol(n * outF, daRef) * scale, 1e-5, "da " + what);
        TestUtil.AssertClose(gpu.Download(gx.View), dxRef, Atol(outF + r, dxRef) * (1 + (scale * r)), 1e-5, "dx " + what);
    }

    [Fact]
    public void SkippedGradientsAndNoTokens()
    {
        var (n, inF, outF, r) = (4, 6, 5, 2);
        using var dy = gpu.Upload(TestUtil.Random(n * outF, 1));
        using var h = gpu.Upload(TestUtil.Random(n * r, 2));
        using var w = gpu.Upload(TestUtil.Random(outF * inF, 3));
        using var a = gpu.Upload(TestUtil.Random(r * inF, 4));
        using var b = gpu.Upload(TestUtil.Random(outF * r, 5));
        using var db = gpu.Poisoned(outF * r);
        using var empty = gpu.Upload(Array.Empty<float>());
        var wo = DeviceWeightOperand.Dense(w.View, outF, inF);

        // LoRA-FA: no x, no da, no dx; db alone must still be s·gᵀ·h.
        LoraMatmulKernels.Backward(gpu.Accelerator, dy.View, empty.View, h.View, wo, a.View, b.View, 2f, empty.View, empty.View, db.View, n, inF, outF, r);
        var dbRef = new float[outF * r];
        GemmReference.Multiply(true, false, outF, r, n, 2f, gpu.Download(dy.View), gpu.Download(h.View), 0f, dbRef);
        TestUtil.AssertClose(gpu.Download(db.View), dbRef, 1e-5, 1e-5, "db (LoRA-FA)");

        // n = 0: every gradient is an empty sum.
        using var da = gpu.Poisoned(r * inF);
        LoraMatmulKernels.Backward(gpu.Accelerator, empty.View, empty.View, empty.View, wo, a.View, b.View, 2f, empty.View, da.View, db.View, 0, inF, outF, r);
        Assert.All(gpu.Download(da.View), v => Assert.Equal(0f, v));
        Assert.All(gpu.Download(db.View), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void BadLengthsNameTheView()
    {
        using var v6 = gpu.Upload(new float[6]);
        using var v5 = gpu.Upload(new float[5]);
        using var v1 = gpu.Upload(new float[1]);
        using var empty = gpu.Upload(Array.Empty<float>());
        var e = Assert.Throws<ArgumentException>(() =>
            LoraMatmulKernels.Forward(gpu.Accelerator, v6.View, DeviceWeightOperand.Dense(v1.View, 1, 1), empty.View, v1.View, v1.View, 1f, v6.View, v5.View, 6, 1, 1, 1));
        Assert.Equal("h", e.ParamName);
        Assert.Contains("h has length 5; expected 6 (n·rank)", e.Message);
        e = Assert.Throws<ArgumentException>(() =>
            LoraMatmulKernels.Forward(gpu.Accelerator, v6.View, DeviceWeightOperand.Dense(v1.View, 1, 1), empty.View, v1.View, v1.View, 1f, v6.View, v6.View, 6, 1, 1, 1, new LoraOptions(1f)));
        Assert.Equal("options", e.ParamName);
    }
}
