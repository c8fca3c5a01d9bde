using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuQuant4Tests(GpuFixture gpu)
{
    private static float[] Table(Quant4Type type) => Quant4Codes.Table(type).ToArray();

    /// <summary>Dequantization is one fp32 product per element, and the nested absmax a product then a sum: bit-exact.</summary>
    [Theory]
    [InlineData(Quant4Type.Nf4, 64, false, 3, 7)]
    [InlineData(Quant4Type.Fp4, 32, true, 5, 130)]
    [InlineData(Quant4Type.Nf4, 128, true, 1, 129)]
    public void DequantizeIsBitExact(Quant4Type type, int blocksize, bool doubleQuant, int rows, int cols)
    {
        var values = TestUtil.Random(rows * cols, rows + cols, 3f);
        var q = QuantizedWeight.Quantize(values, [rows, cols], type, blocksize, doubleQuant);
        using var buffers = Quant4Buffers.Upload(gpu.Accelerator, q);
        using var output = gpu.Poisoned(rows * cols);
        Quant4Kernels.Dequantize(gpu.Accelerator, buffers.View, output.View);
        var absmax = doubleQuant
            ? BlockwiseQuantReference.DequantizeNested(q.NestedCodes, q.NestedAbsmax, q.NestedOffset, Quant4Codes.Dynamic.ToArray())
            : q.Absmax!;
        Assert.Equal(absmax, gpu.Download(buffers.View.Absmax));
        Assert.Equal(BlockwiseQuantReference.Dequantize4(q.Packed, absmax, Table(type), blocksize, rows * cols), gpu.Download(output.View));
    }

    /// <summary>
    /// y = x·dequant(W)ᵀ + bias against the double reference on the dequantized weight; |W| ≤ 1 and
    /// |x| ≤ 1, so the fp32 reassociation bound of TestUtil.DotAtol(in) applies.
    /// </summary>
    [Theory]
    [InlineData(1, 64, 13, true, GemmPath.Auto)] // GEMV, 32-bit words (in % 8 == 0)
    [InlineData(4, 33, 9, false, GemmPath.Auto)] // GEMV, nibble by nibble (odd in)
    [InlineData(6, 40, 17, true, GemmPath.Tiled)]
    [InlineData(5, 21, 3, false, GemmPath.Naive)]
    internal void MatmulMatchesReference(int n, int inF, int outF, bool bias, GemmPath path)
    {
        var q = QuantizedWeight.Quantize(TestUtil.Random(outF * inF, 9), [outF, inF], Quant4Type.Nf4, 32, doubleQuant: true);
        var w = q.Dequantize();
        var x = TestUtil.Random(n * inF, 10);
        var bv = bias ? TestUtil.Random(outF, 11) : [];
        var dy = TestUtil.Random(n * outF, 12);
        using var buffers = Quant4Buffers.Upload(gpu.Accelerator, q);
        using var dx_ = gpu.Upload(x);
        using var dbias = gpu.Upload(bv);
        using var y = gpu.Poisoned(n * outF);
        Quant4MatmulKernels.Forward(gpu.Accelerator, dx_.View, buffers.View, dbias.View, y.View, n, inF, outF, path);
        var yRef = new float[n * outF];
        GemmReference.Multiply(false, true, n, outF, inF, 1f, x, w, 0f, yRef);
        for (int i = 0; i < n && bias; i++)
        {
            for (int j = 0; j < outF; j++)
            {
                yRef[(i * outF) + j] += bv[j];
            }
        }

        TestUtil.AssertClose(gpu.Download(y.View), yRef, TestUtil.DotAtol(inF) * 2, 1e-5, $"y n{n} in{inF} out{outF}");

        using var ddy = gpu.Upload(dy);
        using var dx = gpu.Poisoned(n * inF);
        Quant4MatmulKernels.Backward(gpu.Accelerator, ddy.View, buffers.View, dx.View, n, inF, outF, path);
        var dxRef = new float[n * inF];
        GemmReference.Multiply(false, false, n, inF, outF, 1f, dy, w, 0f, dxRef);
        TestUtil.AssertClose(gpu.Download(dx.View), dxRef, TestUtil.DotAtol(outF) * 2, 1e-5, $"dx n{n} in{inF} out{outF}");
    }

    [Fact]
    public void BadShapesNameTheView()
    {
        using var packed = gpu.Upload(new byte[4]);
        using var absmax = gpu.Upload(new float[2]);
        var e = Assert.Throws<ArgumentException>(() => new Quant4View(packed.View, absmax.View, Quant4Type.Nf4, 32, 1, 8));
        Assert.Equal("absmax", e.ParamName);
        Assert.Contains("absmax has length 2; expected 1", e.Message);
        var view = new Quant4View(packed.View, absmax.View.SubView(0, 1), Quant4Type.Nf4, 32, 1, 8);
        using var x = gpu.Upload(new float[8]);
        using var y = gpu.Upload(new float[2]);
        e = Assert.Throws<ArgumentException>(() => Quant4MatmulKernels.Forward(gpu.Accelerator, x.View, view, default, y.View, 1, 8, 2));
        Assert.Equal("w", e.ParamName);
        Assert.Contains("expected [2, 8]", e.Message);
    }
}
