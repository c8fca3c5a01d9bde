// GPU benchmarks: median over N samples of (a batch of launches, then synchronize) / batch, after a
// warm-up launch that also loads the kernel; batches are sized to ≥ 2 ms so launch and
// synchronisation overheads do not dominate the small kernels. Targets (issue 6): ILGPU GEMM ≥ 50% of
// cuBLAS SGEMM; LoRA forward ≤ 1.10× the base GEMM; NF4 GEMV ≥ 60% of the copy bandwidth.
using System.Diagnostics;
using System.Globalization;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.GpuRunner;

internal static class Benchmarks
{
    // cuBLAS's CUBLAS_TF32_TENSOR_OP_MATH (3); ILGPU's CuBlasMathMode names only the default and the deprecated tensor-op mode.
    private const CuBlasMathMode Tf32TensorOpMath = (CuBlasMathMode)3;

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
            Gemm(acc, report, runs, blas, 4096, 4096, 4096, transB: false);
            Gemm(acc, report, runs, blas, 2048, 4096, 4096, transB: true);
            Lora(acc, report, runs);
            double copyGBps = Nf4Dequantize(acc, report, runs);
            Nf4Gemv(acc, report, runs, blas, copyGBps);
        }

        try
        {
            TrainingBench.Run(acc, report, runs);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or ILGPU.Runtime.AcceleratorException)
        {
            report.Note($"LoRA training step of the ~125M config failed: {e.GetType().Name}: {e.Message}");
        }

        try
        {
            DecodeBench.Run(acc, report, runs);
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or OutOfMemoryException or ILGPU.Runtime.AcceleratorException)
        {
            report.Note($"greedy generation of the ~125M config failed: {e.GetType().Name}: {e.Message}");
        }
    }

    private static void Gemm(Accelerator acc, Report report, int runs, CuBlas? blas, int m, int n, int k, bool transB)
    {
        using var a = acc.Allocate1D(Data.Random(m * k, 1));
        using var b = acc.Allocate1D(Data.Random(k * n, 2));
        using var c = acc.Allocate1D<float>((long)m * n);
        double flops = 2.0 * m * n * k;
        string shape = $"{m}x{n}x{k}{(transB ? " (x·Wᵀ)" : "")}";
        double ilgpu = Time(acc, runs, () => GemmKernels.Multiply(acc, false, transB, m, n, k, 1f, a.View, b.View, 0f, c.View));
        double? cublas = null, cublasTf32 = null;
        if (blas != null)
        {
            // Row-major C = A·op(B) is column-major Cᵀ = op(B)ᵀ·Aᵀ.
            void Sgemm() => blas.Gemm(transB ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose, CuBlasOperation.NonTranspose,
                n, m, k, 1f, b.View, transB ? k : n, a.View, k, 0f, c.View, n);
            blas.MathMode = CuBlasMathMode.DefaultMath;
            cublas = Time(acc, runs, Sgemm);
            report.Add(new BenchResult("cuBLAS SGEMM fp32", shape, cublas.Value, flops / cublas.Value / 1e6, null, "baseline"));
        }

        report.Add(new BenchResult("ILGPU GEMM fp32 (tiled 128×128)", shape, ilgpu, flops / ilgpu / 1e6, null,
            cublas is { } cb ? Ratio(cb / ilgpu, "of cuBLAS SGEMM", "≥ 50%", cb / ilgpu >= 0.5) : "cuBLAS not available"));
        if (GemmKernels.SupportsTf32(acc))
        {
            double tf32 = Time(acc, runs, () => GemmKernels.Multiply(acc, false, transB, m, n, k, 1f, a.View, b.View, 0f, c.View, GemmPrecision.Tf32));
            if (blas != null)
            {
                blas.MathMode = Tf32TensorOpMath;
                cublasTf32 = Time(acc, runs, () => blas.Gemm(transB ? CuBlasOperation.Transpose : CuBlasOperation.NonTranspose,
                    CuBlasOperation.NonTranspose, n, m, k, 1f, b.View, transB ? k : n, a.View, k, 0f, c.View, n));
                blas.MathMode = CuBlasMathMode.DefaultMath;
                report.Add(new BenchResult("cuBLAS SGEMM tf32 tensor cores", shape, cublasTf32.Value, flops / cublasTf32.Value / 1e6, null, "baseline"));
            }

            report.Add(new BenchResult("ILGPU GEMM tf32 (mma.sync)", shape, tf32, flops / tf32 / 1e6, null,
                cublasTf32 is { } ct ? Ratio(ct / tf32, "of cuBLAS tf32", "≥ 50%", ct / tf32 >= 0.5) : "cuBLAS not available"));
        }
    }

    private static void Lora(Accelerator acc, Report report, int runs)
    {
        var (n, inF, outF, r) = (4096, 4096, 4096, 16);
        using var x = acc.Allocate1D(Data.Random(n * inF, 1));
        using var w = acc.Allocate1D(Data.Random(outF * inF, 2));
        using var a = acc.Allocate1D(Data.Random(r * inF, 3));
        using var b = acc.Allocate1D(Data.Random(outF * r, 4));
        using var dy = acc.Allocate1D(Data.Random(n * outF, 5));
        using var y = acc.Allocate1D<float>(n * outF);
        using var h = acc.Allocate1D<float>(n * r);
        using var dx = acc.Allocate1D<float>(n * inF);
        using var da = acc.Allocate1D<float>(r * inF);
        using var db = acc.Allocate1D<float>(outF * r);
        string shape = $"n{n} in{inF} out{outF} r{r}";
        double flopsBase = 2.0 * n * inF * outF;
        double baseFwd = Time(acc, runs, () => GemmKernels.Multiply(acc, false, true, n, outF, inF, 1f, x.View, w.View, 0f, y.View));
        var wo = DeviceWeightOperand.Dense(w.View, outF, inF);
        double fwd = Time(acc, runs, () => LoraMatmulKernels.Forward(acc, x.View, wo, default, a.View, b.View, 2f, y.View, h.View, n, inF, outF, r));
        report.Add(new BenchResult("base GEMM forward x·Wᵀ", shape, baseFwd, flopsBase / baseFwd / 1e6, null, "baseline"));
        report.Add(new BenchResult("fused LoRA forward", shape, fwd, (flopsBase + (4.0 * n * r * (inF + outF) / 2)) / fwd / 1e6, null,
            Ratio(fwd / baseFwd, "× the base GEMM", "≤ 1.10×", fwd / baseFwd <= 1.10, percent: false)));
        double baseBwd = Time(acc, runs, () => GemmKernels.Multiply(acc, false, false, n, inF, outF, 1f, dy.View, w.View, 0f, dx.View));
        double bwd = Time(acc, runs, () => LoraMatmulKernels.Backward(acc, dy.View, x.View, h.View, wo, a.View, b.View, 2f, dx.View, da.View, db.View,
            n, inF, outF, r));
        report.Add(new BenchResult("base GEMM backward dy·W", shape, baseBwd, flopsBase / baseBwd / 1e6, null, "baseline"));
        report.Add(new BenchResult("fused LoRA backward (dx, dA, dB)", shape, bwd, null, null,
            Ratio(bwd / baseBwd, "× the base dx GEMM", "none set", true, percent: false) + " (includes the dh temporary's allocation and a synchronize)"));
    }

    private static double Nf4Dequantize(Accelerator acc, Report report, int runs)
    {
        const int rows = 8192, cols = 8192;
        var q = QuantizedWeight.Quantize(Data.Random(rows * cols, 7), [rows, cols], Quant4Type.Nf4, 64, doubleQuant: true);
        using var w = Quant4Buffers.Upload(acc, q);
        using var output = acc.Allocate1D<float>((long)rows * cols);
        using var copy = acc.Allocate1D<float>((long)rows * cols);
        double copyMs = Time(acc, runs, () => output.View.CopyTo(copy.View));
        double copyGBps = 2.0 * output.LengthInBytes / copyMs / 1e6;
        report.Add(new BenchResult("device-to-device copy", "256 MiB", copyMs, null, copyGBps, "baseline (read + write bytes)"));
        double ms = Time(acc, runs, () => Quant4Kernels.Dequantize(acc, w.View, output.View));
        double bytes = w.View.Packed.LengthInBytes + w.View.Absmax.LengthInBytes + output.LengthInBytes;
        double gbps = bytes / ms / 1e6;
        report.Add(new BenchResult("NF4 dequantize → fp32", $"{rows}x{cols} bs64", ms, null, gbps,
            Ratio(gbps / copyGBps, "of copy bandwidth", "none set", true)));
        return copyGBps;
    }

    private static void Nf4Gemv(Accelerator acc, Report report, int runs, CuBlas? blas, double copyGBps)
    {
        const int inF = 8192, outF = 8192;
        var values = Data.Random(inF * outF, 8);
        var q = QuantizedWeight.Quantize(values, [outF, inF], Quant4Type.Nf4, 64, doubleQuant: true);
        using var w = Quant4Buffers.Upload(acc, q);
        using var x = acc.Allocate1D(Data.Random(inF, 9));
        using var y = acc.Allocate1D<float>(outF);
        double ms = Time(acc, runs, () => Quant4MatmulKernels.Forward(acc, x.View, w.View, default, y.View, 1, inF, outF));
        double bytes = w.View.Packed.LengthInBytes + w.View.Absmax.LengthInBytes + x.LengthInBytes + y.LengthInBytes;
        double gbps = bytes / ms / 1e6;
        report.Add(new BenchResult("NF4 GEMV", $"(1, {inF}, {outF})", ms, 2.0 * inF * outF / ms / 1e6, gbps,
            Ratio(gbps / copyGBps, "of copy bandwidth", "≥ 60%", gbps / copyGBps >= 0.6)));

        using var wf = acc.Allocate1D(values);
        string how;
        double fp32;
        if (blas != null)
        {
            // Row-major W [out, in] is column-major [in, out]: y = op(T)·x.
            fp32 = Time(acc, runs, () => blas.Gemv(CuBlasOperation.Transpose, inF, outF, 1f, wf.View, inF, x.View.AsGeneral(), 0f, y.View.AsGeneral()));
            how = "cuBLAS SGEMV";
        }
        else
        {
            fp32 = Time(acc, runs, () => GemmKernels.Multiply(acc, false, true, 1, outF, inF, 1f, x.View, wf.View, 0f, y.View));
            how = "ILGPU GEMM, m = 1";
        }

        report.Add(new BenchResult($"fp32 GEMV ({how})", $"(1, {inF}, {outF})", fp32, 2.0 * inF * outF / fp32 / 1e6, 4.0 * inF * outF / fp32 / 1e6,
            string.Create(CultureInfo.InvariantCulture, $"NF4 GEMV is {fp32 / ms:F2}× faster")));
    }

    private static string Ratio(double value, string what, string target, bool met, bool percent = true) =>
        string.Create(CultureInfo.InvariantCulture,
            $"{(percent ? $"{value * 100:F0}%" : $"{value:F2}")} {what} (target {target}: {(met ? "met" : "NOT met")})");

    /// <summary>Median milliseconds of one launch.</summary>
    private static double Time(Accelerator acc, int runs, Action launch)
    {
        var sw = Stopwatch.StartNew();
        launch();
        acc.Synchronize();
        sw.Restart();
        launch();
        acc.Synchronize();
        double once = Math.Max(sw.Elapsed.TotalMilliseconds, 1e-3);
        int batch = Math.Clamp((int)Math.Ceiling(2.0 / once), 1, 200);
        var samples = new double[runs];
        for (int s = 0; s < runs; s++)
        {
            sw.Restart();
            for (int i = 0; i < batch; i++)
            {
                launch();
            }

            acc.Synchronize();
            samples[s] = sw.Elapsed.TotalMilliseconds / batch;
        }

        Array.Sort(samples);
        return runs % 2 == 1 ? samples[runs / 2] : (samples[(runs / 2) - 1] + samples[runs / 2]) / 2;
    }
}
