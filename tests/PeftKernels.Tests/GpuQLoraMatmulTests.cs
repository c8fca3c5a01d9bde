// QLoraMatmulKernels forward and backward (4-bit base) against the reference on the dequantized weight.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuQLoraMatmulTests(GpuFixture gpu)
{
    /// <summary>As GpuLoraMatmulTests: fp32 reassociation of a K-term sum, relative to max(1, max|ref|).</summary>
    private static double Atol(int k, double[] reference) => GpuTolerance.LoraAtol(k, reference);

    [Theory]
    [InlineData(2, 32, 10, 3, 0.2f, GemmPath.Auto)] // decode: 4-bit GEMV + K = r GEMM
    [InlineData(7, 24, 19, 4, 0f, GemmPath.Tiled)]
    internal void ForwardAndBackwardMatchReference(int n, int inF, int outF, int r, float dropout, GemmPath path)
    {
        var q = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, 1), [outF, inF], Quant4Type.Fp4, 64, doubleQuant: true);
        var w = q.Dequantize();
        var x = TestUtil.Random(n * inF, 2);
        var bv = TestUtil.Random(outF, 3);
        var a = TestUtil.Random(r * inF, 4);
        var b = TestUtil.Random(outF * r, 5);
        var dy = TestUtil.Random(n * outF, 6);
        const float scale = 0.5f;
        var options = new LoraOptions(dropout, 9);
        using var wq = Quant4Buffers.Upload(gpu.Accelerator, q);
        using var dx_ = gpu.Upload(x);
        using var dbias = gpu.Upload(bv);
        using var da_ = gpu.Upload(a);
        using var db_ = gpu.Upload(b);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(n * outF);
        using var h = gpu.Poisoned(n * r);
        QLoraMatmulKernels.Forward(gpu.Accelerator, dx_.View, wq.View, dbias.View, da_.View, db_.View, scale, y.View, h.View, n, inF, outF, r,
            options, path, allowGemv: true);
        var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(w), TestUtil.ToDouble(bv),
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, 9);
        var hGpu = gpu.Download(h.View);
        TestUtil.AssertClose(hGpu, hRef, Atol(inF, hRef), 1e-5, "h");
        TestUtil.AssertClose(gpu.Download(y.View), yRef, Atol(inF + r, yRef) * (1 + scale), 1e-5, "y");

        using var gx = gpu.Poisoned(n * inF);
        using var ga = gpu.Poisoned(r * inF);
        using var gb = gpu.Poisoned(outF * r);
        QLoraMatmulKernels.Backward(gpu.Accelerator, ddy.View, dx_.View, h.View, wq.View, da_.View, db_.View, scale, gx.View, ga.View, gb.View,
            n, inF, outF, r, options, path);
        var (dxRef, daRef, dbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(hGpu),
            TestUtil.ToDouble(w), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, dropout, 9);
        TestUtil.AssertClose(gpu.Download(gb.View), dbRef, Atol(n, dbRef) * scale, 1e-5, "db");
        TestUtil.AssertClose(gpu.Download(ga.View), daRef, Atol(n * outF, daRef) * scale, 1e-5, "da");
        TestUtil.AssertClose(gpu.Download(gx.View), dxRef, Atol(outF + r, dxRef) * (1 + (scale * r)), 1e-5, "dx");
    }
}
