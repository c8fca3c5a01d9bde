using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// The device frozen-weight operand: Dense validates, and a dense or a 4-bit operand gives the reference result through
/// the one launcher of GemmKernels (forward and backward), LoraMatmulKernels and DoraNormKernels.
/// </summary>
[Collection("Gpu")]
public class GpuWeightOperandTests(GpuFixture gpu)
{
    [Fact]
    public void DenseValidatesAndBothKindsReportTheirShape()
    {
        using var v = gpu.Upload(new float[12]);
        var ex = Assert.Throws<ArgumentException>(() => DeviceWeightOperand.Dense(v.View, 5, 2));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("w has length 12; expected 10", ex.Message);
        Assert.Equal("rows", Assert.Throws<ArgumentException>(() => DeviceWeightOperand.Dense(v.View, -1, 2)).ParamName);
        var dense = DeviceWeightOperand.Dense(v.View, 3, 4);
        Assert.False(dense.IsQuantized);
        Assert.Equal((3, 4), (dense.Rows, dense.Cols));

        var q = QuantizedWeight.Quantize(TestUtil.Random(6 * 64, 1), [6, 64], Quant4Type.Nf4, 64, doubleQuant: false);
        using var wq = Quant4Buffers.Upload(gpu.Accelerator, q);
        var quant = DeviceWeightOperand.Quant4(wq.View);
        Assert.True(quant.IsQuantized);
        Assert.Equal((6, 64), (quant.Rows, quant.Cols));
    }

    [Theory]
    [InlineData(false, 3)] // dense, a tiled GEMM
    [InlineData(true, 2)]  // 4-bit, the decode GEMV
    [InlineData(true, 9)]  // 4-bit, the dequantizing GEMM
    public void GemmLoraAndDoraNormMatchReference(bool quantized, int n)
    {
        var (inF, outF, r) = (64, 37, 3);
        const float scale = 1.5f;
        var wValues = TestUtil.Random(outF * inF, 1);
        var q = QuantizedWeight.Quantize(wValues, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
        if (quantized)
        {
            wValues = q.Dequantize();
        }

        var x = TestUtil.Random(n * inF, 2);
        var bias = TestUtil.Random(outF, 3);
        var a = TestUtil.Random(r * inF, 4);
        var b = TestUtil.Random(outF * r, 5);
        var dy = TestUtil.Random(n * outF, 6);
        using var wq = Quant4Buffers.Upload(gpu.Accelerator, q);
        using var wd = gpu.Upload(wValues);
        var w = quantized ? DeviceWeightOperand.Quant4(wq.View) : DeviceWeightOperand.Dense(wd.View, outF, inF);
        using var dx_ = gpu.Upload(x);
        using var dbias = gpu.Upload(bias);
        using var da_ = gpu.Upload(a);
        using var db_ = gpu.Upload(b);
        using var ddy = gpu.Upload(dy);
        using var y = gpu.Poisoned(n * outF);
        using var dx = gpu.Poisoned(n * inF);
        string what = $"q{quantized} n{n}";

        var expected = new float[n * outF];
        GemmReference.Multiply(false, true, n, outF, inF, 1f, x, wValues, 0f, expected);
        for (int i = 0; i < expected.Length; i++)
        {
            expected[i] += bias[i % outF];
        }

        GemmKernels.Forward(gpu.Accelerator, dx_.View, w, dbias.View, y.View, n, inF, outF);
        TestUtil.AssertClose(gpu.Download(y.View), expected, TestUtil.DotAtol(inF) * 2, 1e-5, "gemm y " + what);
        var dxRef = new float[n * inF];
        GemmReference.Multiply(false, false, n, inF, outF, 1f, dy, wValues, 0f, dxRef);
        GemmKernels.Backward(gpu.Accelerator, ddy.View, w, dx.View, n, inF, outF);
        TestUtil.AssertClose(gpu.Download(dx.View), dxRef, TestUtil.DotAtol(outF) * 2, 1e-5, "gemm dx " + what);

        using var h = gpu.Poisoned(n * r);
        using var ga = gpu.Poisoned(r * inF);
        using var gb = gpu.Poisoned(outF * r);
        var options = new LoraOptions(0.1f, 5);
        LoraMatmulKernels.Forward(gpu.Accelerator, dx_.View, w, dbias.View, da_.View, db_.View, scale, y.View, h.View, n, inF, outF, r, options);
        var (yRef, hRef) = LoraMatmulReference.Forward(TestUtil.ToDouble(x), TestUtil.ToDouble(wValues), TestUtil.ToDouble(bias),
            TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, 0.1f, 5);
        var hGpu = gpu.Download(h.View);
        double top = Math.Max(1.0, yRef.Max(Math.Abs));
        TestUtil.AssertClose(hGpu, hRef, TestUtil.DotAtol(inF) * 2 * Math.Max(1.0, hRef.Max(Math.Abs)), 1e-5, "lora h " + what);
        TestUtil.AssertClose(gpu.Download(y.View), yRef, TestUtil.DotAtol(inF + r) * (1 + scale) * top, 1e-5, "lora y " + what);
        LoraMatmulKernels.Backward(gpu.Accelerator, ddy.View, dx_.View, h.View, w, da_.View, db_.View, scale, dx.View, ga.View, gb.View,
            n, inF, outF, r, options);
        var (lxRef, _, lbRef) = LoraMatmulReference.Backward(TestUtil.ToDouble(dy), TestUtil.ToDouble(x), TestUtil.ToDouble(hGpu),
            TestUtil.ToDouble(wValues), TestUtil.ToDouble(a), TestUtil.ToDouble(b), scale, n, inF, outF, r, 0.1f, 5);
        TestUtil.AssertClose(gpu.Download(gb.View), lbRef, TestUtil.DotAtol(n) * 2 * scale * Math.Max(1.0, lbRef.Max(Math.Abs)), 1e-5, "lora db " + what);
        TestUtil.AssertClose(gpu.Download(dx.View), lxRef, TestUtil.DotAtol(outF + r) * (1 + (scale * r)) * 2 * Math.Max(1.0, lxRef.Max(Math.Abs)), 1e-5, "lora dx " + what);

        var norms = new float[outF];
        DoraNorm.RowNorms(quantized ? WeightOperand.Quant4(q) : WeightOperand.F32(wValues, outF, inF), a, b, scale, norms, inF, outF, r);
        using var gnorms = gpu.Poisoned(outF);
        DoraNormKernels.RowNorms(gpu.Accelerator, w, da_.View, db_.View, scale, gnorms.View, inF, outF, r);
        TestUtil.AssertClose(gpu.Download(gnorms.View), norms, 0, 1e-6, "dora norms " + what);
    }

    [Fact]
    public void WrongShapeIsNamedByEveryLauncher()
    {
        var (n, inF, outF) = (2, 8, 6);
        using var x = gpu.Upload(new float[n * inF]);
        using var y = gpu.Upload(new float[n * outF]);
        using var wv = gpu.Upload(new float[outF * inF]);
        var transposed = DeviceWeightOperand.Dense(wv.View, inF, outF);
        var ex = Assert.Throws<ArgumentException>(() => GemmKernels.Forward(gpu.Accelerator, x.View, transposed, default, y.View, n, inF, outF));
        Assert.Equal("w", ex.ParamName);
        Assert.Contains("w has shape [8, 6]; expected [6, 8]", ex.Message);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() =>
            GemmKernels.Backward(gpu.Accelerator, y.View, transposed, x.View, n, inF, outF)).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => GemmKernels.Forward(gpu.Accelerator, x.View, default, default, y.View, n, inF, outF)).ParamName);
    }
}
