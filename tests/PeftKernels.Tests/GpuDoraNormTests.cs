// DoraNormKernels against the CPU DoraNorm (fp32 and 4-bit), Divide, and bad inputs.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuDoraNormTests(GpuFixture gpu)
{
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
