// Quant4Kernels (dequantization) and the Quant4View shape checks.
using PeftKernels.Kernels.Cpu;

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
