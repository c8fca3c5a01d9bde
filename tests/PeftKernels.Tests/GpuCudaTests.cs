using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;
using PeftKernels.Kernels.Reference;
using Xunit;

namespace PeftKernels.Tests;

/// <summary>
/// Checks that need a real CUDA device (the PTX is JIT-compiled by the driver and run on the
/// tensor cores); skipped with the reason where there is none. The GPU runner
/// (tools/PeftKernels.GpuRunner) checks every kernel on CUDA at larger shapes.
/// </summary>
public class GpuCudaTests
{
    private static void OnCuda(Action<Accelerator> body)
    {
        using var context = Context.Create(b => b.Cuda().EnableAlgorithms());
        using var accelerator = context.CreateCudaAccelerator(0);
        body(accelerator);
    }

    /// <summary>fp32 tiled and naive kernels against the double reference (DotAtol(k) as the CPU-accelerator tests).</summary>
    [CudaFact]
    public void GemmMatchesReferenceOnCuda() => OnCuda(acc =>
    {
        var (m, n, k) = (257, 130, 300);
        var a = TestUtil.Random(m * k, 1);
        var b = TestUtil.Random(k * n, 2);
        var expected = new float[m * n];
        GemmReference.Multiply(false, true, m, n, k, 1f, a, b, 0f, expected);
        using var da = acc.Allocate1D(a);
        using var db = acc.Allocate1D(b);
        using var dc = acc.Allocate1D<float>(m * n);
        foreach (var path in new[] { GemmPath.Naive, GemmPath.Tiled })
        {
            GemmKernels.Multiply(acc, false, true, m, n, k, 1f, da.View, db.View, 0f, dc.View, path);
            acc.Synchronize();
            TestUtil.AssertClose(dc.GetAsArray1D(), expected, TestUtil.DotAtol(k) * 2, 1e-5, path.ToString());
        }
    });

    /// <summary>The mma.sync path on the tensor cores: tf32 inputs (2⁻¹¹ relative each), fp32 sums.</summary>
    [CudaFact]
    public void Tf32TensorCoreGemmMatchesReferenceOnCuda() => OnCuda(acc =>
    {
        Assert.True(GemmKernels.SupportsTf32(acc), "the CI GPU is expected to be sm_80 or newer");
        var (m, n, k) = (300, 257, 129);
        var a = TestUtil.Random(m * k, 3);
        var b = TestUtil.Random(k * n, 4);
        var expected = new float[m * n];
        GemmReference.Multiply(true, false, m, n, k, 1f, a, b, 0f, expected);
        using var da = acc.Allocate1D(a);
        using var db = acc.Allocate1D(b);
        using var dc = acc.Allocate1D<float>(m * n);
        GemmKernels.Multiply(acc, true, false, m, n, k, 1f, da.View, db.View, 0f, dc.View, GemmPrecision.Tf32);
        acc.Synchronize();
        TestUtil.AssertClose(dc.GetAsArray1D(), expected, k * Math.Pow(2, -10) * 1.5, 1e-3, "tf32");
    });

    /// <summary>Dequantization (one fp32 product) and the nested scales (mul.rn, add.rn) are bit-exact on CUDA too.</summary>
    [CudaFact]
    public void DequantizeIsBitExactOnCuda() => OnCuda(acc =>
    {
        var q = QuantizedWeight.Quantize(TestUtil.Random(64 * 100, 5, 2f), [64, 100], Quant4Type.Nf4, 64, doubleQuant: true);
        using var buffers = Quant4Buffers.Upload(acc, q);
        using var output = acc.Allocate1D<float>(64 * 100);
        Quant4Kernels.Dequantize(acc, buffers.View, output.View);
        acc.Synchronize();
        Assert.Equal(q.Dequantize(), output.GetAsArray1D());
    });
}
