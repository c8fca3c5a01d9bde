// The GPU benchmarks, in report order. The bodies live in bench/PeftKernels.Bench.Gpu, one file per
// stem (GemmGpuBench.cs, LoraMatmulGpuBench.cs, Quant4GpuBench.cs, Quant4MatmulGpuBench.cs,
// TrainingGpuBench.cs, DecodeGpuBench.cs), each with what it measures, its units and its target;
// this file opens cuBLAS once for them and turns a failed model benchmark into a note.
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Bench.Gpu;

namespace PeftKernels.GpuRunner;

internal static class Benchmarks
{
    public static void RunAll(Accelerator acc, Report report, int runs)
    {
        CuBlas? blas = null;
        try
        {
            blas = new CuBlas((CudaAccelerator)acc) { PointerMode = CuBlasPointerMode.Host, Stream = (CudaStream)acc.DefaultStream };
        }
        catch (Exception e)
        {
            report.Note($"cuBLAS not available on this host ({e.GetType().Name}: {e.Message}); the cuBLAS comparisons are skipped.");
        }

        using (blas)
        {
            GemmGpuBench.Run(acc, report, runs, blas, 4096, 4096, 4096, transB: false);
            GemmGpuBench.Run(acc, report, runs, blas, 2048, 4096, 4096, transB: true);
            LoraMatmulGpuBench.Run(acc, report, runs);
            double copyGBps = Quant4GpuBench.Dequantize(acc, report, runs);
            Quant4MatmulGpuBench.Gemv(acc, report, runs, blas, copyGBps);
        }

        try
        {
            TrainingGpuBench.Run(acc, report, runs);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or AcceleratorException)
        {
            report.Note($"LoRA training step of the ~125M config failed: {e.GetType().Name}: {e.Message}");
        }

        try
        {
            DecodeGpuBench.Run(acc, report, runs);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or AcceleratorException)
        {
            report.Note($"greedy generation of the ~125M config failed: {e.GetType().Name}: {e.Message}");
        }
    }
}
