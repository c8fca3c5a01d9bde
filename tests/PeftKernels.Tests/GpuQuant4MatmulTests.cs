// Quant4MatmulKernels forward and backward against the reference GEMM on the dequantized weight.
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Tests;

[Collection("Gpu")]
public class GpuQuant4MatmulTests(GpuFixture gpu)
{
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
}
