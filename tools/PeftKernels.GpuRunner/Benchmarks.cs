// The GPU benchmarks, in report order. The bodies live in bench/PeftKernels.Bench.Gpu, one file per
// stem (GemmGpuBench.cs, LoraMatmulGpuBench.cs, Quant4GpuBench.cs, Quant4MatmulGpuBench.cs,
// TrainingGpuBench.cs, DecodeGpuBench.cs, EngineGpuBench.cs), each with what it measures, its units and
// its target; this file opens cuBLAS once for them and turns a failed model benchmark into a note.
// Sizes: GpuBenchSizes.Full on a GPU, GpuBenchSizes.Small in --cpu-accelerator mode (code paths only).
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Bench.Gpu;

namespace PeftKernels.GpuRunner;

internal static class Benchmarks
{
    public static void RunAll(Accelerator acc, Report report, int runs, GpuBenchSizes sizes)
    {
        CuBlas? blas = null;
        try
        {
            if (acc is not CudaAccelerator)
            {
                throw new NotSupportedException("cuBLAS needs a CUDA accelerator");
            }


            blas = new CuBlas((CudaAccelerator)acc) { PointerMode = CuBlasPointerMode.Host, Stream = (CudaStream)acc.DefaultStream };
        }
        catch (Exception e)
        {
            report.Note($"cuBLAS not available on this host ({e.GetType().Name}: {e.Message}); the cuBLAS comparisons are skipped.");
        }

        using (blas)
        {
            int g = sizes.Gemm;
            GemmGpuBench.Run(acc, report, runs, blas, g, g, g, transB: false);
            GemmGpuBench.Run(acc, report, runs, blas, g / 2, g, g, transB: true);
            LoraMatmulGpuBench.Run(acc, report, runs, sizes);
            double copyGBps = Quant4GpuBench.Dequantize(acc, report, runs, sizes);
            Quant4MatmulGpuBench.Gemv(acc, report, runs, blas, copyGBps, sizes);
        }

        try
        {
            TrainingGpuBench.Run(acc, report, runs, sizes);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or AcceleratorException)
        {
            report.Note($"the LoRA / QLoRA training step failed: {e.GetType().Name}: {e.Message}");
        }

        try
        {
            DecodeGpuBench.Run(acc, report, runs, sizes);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or AcceleratorException)
        {
            report.Note($"greedy generation failed: {e.GetType().Name}: {e.Message}");
        }

        try
        {
            EngineGpuBench.Run(acc, report, runs, sizes);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or AcceleratorException or ArgumentException)
        {
            report.Note($"the engine decode with {sizes.Adapters} adapters failed: {e.GetType().Name}: {e.Message}");
        }
    }
}
