// NF4 dequantization (8192×8192, block 64, double-quantized) to fp32, against a device-to-device
// copy of the same fp32 matrix, which gives the bandwidth baseline the NF4 GEMV is measured against.
// Units: median ms per launch and GB/s (bytes read + written / time).
// Target: none set for the dequantization (the ratio to the copy bandwidth is reported).
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Bench.Gpu;

/// <summary>The 4-bit storage benchmark: NF4 dequantization vs the copy bandwidth.</summary>
public static class Quant4GpuBench
{
    /// <summary>Times a 256 MiB device copy (the bandwidth baseline) and the NF4 → fp32 dequantization.</summary>
    /// <param name="acc">The accelerator (CUDA for the cuBLAS comparisons).</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed samples per kernel (GpuBenchTiming.Time).</param>
    /// <returns>The copy bandwidth in GB/s, the baseline for Quant4MatmulGpuBench.Gemv.</returns>
    /// <param name="sizes">rows = cols (GpuBenchSizes.Quant4).</param>
    public static double Dequantize(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes)
    {
        int rows = sizes.Quant4, cols = sizes.Quant4;
        var q = QuantizedWeight.Quantize(GpuBenchTiming.Random(rows * cols, 7), [rows, cols], Quant4Type.Nf4, 64, doubleQuant: true);
        using var w = Quant4Buffers.Upload(acc, q);
        using var output = acc.Allocate1D<float>((long)rows * cols);
        using var copy = acc.Allocate1D<float>((long)rows * cols);
        double copyMs = GpuBenchTiming.Time(acc, runs, () => output.View.CopyTo(copy.View));
        double copyGBps = 2.0 * output.LengthInBytes / copyMs / 1e6;
        report.Add(new BenchResult("device-to-device copy", $"{output.LengthInBytes >> 20} MiB", copyMs, null, copyGBps, "baseline (read + write bytes)"));
        double ms = GpuBenchTiming.Time(acc, runs, () => Quant4Kernels.Dequantize(acc, w.View, output.View));
        double bytes = w.View.Packed.LengthInBytes + w.View.Absmax.LengthInBytes + output.LengthInBytes;
        double gbps = bytes / ms / 1e6;
        report.Add(new BenchResult("NF4 dequantize → fp32", $"{rows}x{cols} bs64", ms, null, gbps,
            GpuBenchTiming.Ratio(gbps / copyGBps, "of copy bandwidth", "none set", true)));
        return copyGBps;
    }
}
