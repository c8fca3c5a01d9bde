// GEMM: ILGPU's tiled fp32 GEMM (and, where the device has tensor cores, the TF32 mma.sync kernel)
// against cuBLAS SGEMM in the same precision, on C = A·B and C = x·Wᵀ at 4096-sized shapes.
// Units: median ms per launch (GpuBenchTiming.Time) and GFLOP/s = 2·m·n·k / time.
// Target (issue 6): ILGPU GEMM ≥ 50% of cuBLAS SGEMM (fp32 and tf32 each against its cuBLAS twin).
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Bench.Gpu;

/// <summary>The GEMM benchmark: ILGPU GEMM vs cuBLAS SGEMM.</summary>
public static class GemmGpuBench
{
    // cuBLAS's CUBLAS_TF32_TENSOR_OP_MATH (3); ILGPU's CuBlasMathMode names only the default and the deprecated tensor-op mode.
    private const CuBlasMathMode Tf32TensorOpMath = (CuBlasMathMode)3;

    /// <summary>Times C = A·op(B) [m, n] with K = k: cuBLAS (if given) as the baseline, then ILGPU fp32 and TF32.</summary>
    /// <param name="acc">The accelerator (CUDA for the cuBLAS comparisons).</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed samples per kernel (GpuBenchTiming.Time).</param>
    /// <param name="blas">cuBLAS on the same stream, or null where it is not available (the comparison is skipped).</param>
    /// <param name="m">Rows of C.</param>
    /// <param name="n">Columns of C.</param>
    /// <param name="k">The reduction length.</param>
    /// <param name="transB">B stored [n, k] (x·Wᵀ) instead of [k, n].</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs, CuBlas? blas, int m, int n, int k, bool transB)
    {
        using var a = acc.Allocate1D(GpuBenchTiming.Random(m * k, 1));
        using var b = acc.Allocate1D(GpuBenchTiming.Random(k * n, 2));
        using var c = acc.Allocate1D<float>((long)m * n);
        double flops = 2.0 * m * n * k;
        string shape = $"{m}x{n}x{k}{(transB ? " (x·Wᵀ)" : "")}";
        double ilgpu = GpuBenchTiming.Time(acc, runs, () => GemmKernels.Multiply(acc, false, transB, m, n, k, 1f, a.View, b.View, 0f, c.View));
        double? cublas = null, cublasTf32 = null;
        if (blas != null)
        {
            // Row-major C = A·op(B) is column-major Cᵀ = op(B)ᵀ·Aᵀ.
            void Sgemm() => blas.Gemm(transB ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose, CuBlasOperation.NonTranspose,
                n, m, k, 1f, b.View, transB ? k : n, a.View, k, 0f, c.View, n);
            blas.MathMode = CuBlasMathMode.DefaultMath;
            cublas = GpuBenchTiming.Time(acc, runs, Sgemm);
            report.Add(new BenchResult("cuBLAS SGEMM fp32", shape, cublas.Value, flops / cublas.Value / 1e6, null, "baseline"));
        }

        report.Add(new BenchResult("ILGPU GEMM fp32 (tiled 128×128)", shape, ilgpu, flops / ilgpu / 1e6, null,
            cublas is { } cb ? GpuBenchTiming.Ratio(cb / ilgpu, "of cuBLAS SGEMM", "≥ 50%", cb / ilgpu >= 0.5) : "cuBLAS not available"));
        if (GemmKernels.SupportsTf32(acc))
        {
            double tf32 = GpuBenchTiming.Time(acc, runs, () => GemmKernels.Multiply(acc, false, transB, m, n, k, 1f, a.View, b.View, 0f, c.View, GemmPrecision.Tf32));
            if (blas != null)
            {
                blas.MathMode = Tf32TensorOpMath;
                cublasTf32 = GpuBenchTiming.Time(acc, runs, () => blas.Gemm(transB ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose,
                    CuBlasOperation.NonTranspose, n, m, k, 1f, b.View, transB ? k : n, a.View, k, 0f, c.View, n));
                blas.MathMode = CuBlasMathMode.DefaultMath;
                report.Add(new BenchResult("cuBLAS SGEMM tf32 tensor cores", shape, cublasTf32.Value, flops / cublasTf32.Value / 1e6, null, "baseline"));
            }

            report.Add(new BenchResult("ILGPU GEMM tf32 (mma.sync)", shape, tf32, flops / tf32 / 1e6, null,
                cublasTf32 is { } ct ? GpuBenchTiming.Ratio(ct / tf32, "of cuBLAS tf32", "≥ 50%", ct / tf32 >= 0.5) : "cuBLAS not available"));
        }
    }
}
