// NF4 GEMV (the decode shape: one token, 8192 → 8192, block 64, double-quantized) against the
// device copy bandwidth, and the fp32 GEMV it replaces (cuBLAS SGEMV, or ILGPU's GEMM with m = 1).
// Units: median ms per launch, GFLOP/s = 2·in·out / time, GB/s = (packed + absmax + x + y bytes) / time.
// Target (issue 6): NF4 GEMV ≥ 60% of the copy bandwidth.
using System.Globalization;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Bench.Gpu;

/// <summary>The 4-bit matmul benchmark: NF4 GEMV vs the copy bandwidth and the fp32 GEMV.</summary>
public static class Quant4MatmulGpuBench
{
    /// <summary>Times the NF4 GEMV and the fp32 GEMV on the same weight.</summary>
    /// <param name="acc">The accelerator (CUDA for the cuBLAS comparisons).</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed samples per kernel (GpuBenchTiming.Time).</param>
    /// <param name="blas">cuBLAS for the fp32 GEMV, or null (ILGPU's GEMM with m = 1 is used).</param>
    /// <param name="copyGBps">The copy bandwidth from Quant4GpuBench.Dequantize.</param>
    /// <param name="sizes">in = out (GpuBenchSizes.Quant4).</param>
    public static void Gemv(Accelerator acc, IBenchReport report, int runs, CuBlas? blas, double copyGBps, GpuBenchSizes sizes)
    {
        int inF = sizes.Quant4, outF = sizes.Quant4;
        var values = GpuBenchTiming.Random(inF * outF, 8);
        var q = QuantizedWeight.Quantize(values, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
        using var w = Quant4Buffers.Upload(acc, q);
        using var x = acc.Allocate1D(GpuBenchTiming.Random(inF, 9));
        using var y = acc.Allocate1D<float>(outF);
        double ms = GpuBenchTiming.Time(acc, runs, () => Quant4MatmulKernels.Forward(acc, x.View, w.View, default, y.View, 1, inF, outF));
        double bytes = w.View.Packed.LengthInBytes + w.View.Absmax.LengthInBytes + x.LengthInBytes + y.LengthInBytes;
        double gbps = bytes / ms / 1e6;
        report.Add(new BenchResult("NF4 GEMV", $"(1, {inF}, {outF})", ms, 2.0 * inF * outF / ms / 1e6, gbps,
            GpuBenchTiming.Ratio(gbps / copyGBps, "of copy bandwidth", "≥ 60%", gbps / copyGBps >= 0.6)));

        using var wf = acc.Allocate1D(values);
        string how;
        double fp32;
        if (blas != null)
        {
            // Row-major W [out, in] is column-major [in, out]: y = op(T)·x.
            fp32 = GpuBenchTiming.Time(acc, runs, () => blas.Gemv(CuBlasOperation.Transpose, inF, outF, 1f, wf.View, inF, x.View.AsGeneral(), 0f, y.View.AsGeneral()));
            how = "cuBLAS SGEMV";
        }
        else
        {
            fp32 = GpuBenchTiming.Time(acc, runs, () => GemmKernels.Multiply(acc, false, true, 1, outF, inF, 1f, x.View, wf.View, 0f, y.View));
            how = "ILGPU GEMM, m = 1";
        }

        report.Add(new BenchResult($"fp32 GEMV ({how})", $"(1, {inF}, {outF})", fp32, 2.0 * inF * outF / fp32 / 1e6, 4.0 * inF * outF / fp32 / 1e6,
            string.Create(CultureInfo.InvariantCulture, $"NF4 GEMV is {fp32 / ms:F2}× faster")));
    }
}
