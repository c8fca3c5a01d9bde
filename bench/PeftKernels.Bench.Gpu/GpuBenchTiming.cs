// The timing rule shared by the GPU benchmark bodies: median over N samples of (a batch of
// launches, then synchronize) / batch, after a warm-up launch that also loads the kernel; batches
// are sized to ≥ 2 ms so launch and synchronisation overheads do not dominate the small kernels.
// Ratio formats a measured ratio against its target ("met" / "NOT met").
using System.Diagnostics;
using System.Globalization;
using ILGPU.Runtime;

namespace PeftKernels.Bench.Gpu;

/// <summary>Timing, medians, ratios and seeded inputs for the GPU benchmarks.</summary>
public static class GpuBenchTiming
{
    /// <summary>Median milliseconds of one launch.</summary>
    /// <param name="acc">The accelerator the launch runs on (synchronized after each batch).</param>
    /// <param name="runs">How many batches to time.</param>
    /// <param name="launch">One launch.</param>
    /// <returns>The median milliseconds per launch.</returns>
    public static double Time(Accelerator acc, int runs, Action launch)
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

        return Median(samples);
    }

    /// <summary>The median of the samples (the mean of the middle two for an even count).</summary>
    /// <param name="samples">The samples (not modified).</param>
    /// <returns>The median.</returns>
    public static double Median(IEnumerable<double> samples)
    {
        var sorted = samples.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[(n / 2) - 1] + sorted[n / 2]) / 2;
    }

    /// <summary>"value what (target target: met)", the value as a percentage or as a factor.</summary>
    /// <param name="value">The measured ratio.</param>
    /// <param name="what">What the ratio is of.</param>
    /// <param name="target">The target, as text.</param>
    /// <param name="met">Whether the target is met.</param>
    /// <param name="percent">Percentage (true) or factor with two decimals (false).</param>
    /// <returns>The comparison text.</returns>
    public static string Ratio(double value, string what, string target, bool met, bool percent = true) =>
        string.Create(CultureInfo.InvariantCulture,
            $"{(percent ? $"{value * 100:F0}%" : $"{value:F2}")} {what} (target {target}: {(met ? "met" : "NOT met")})");

    /// <summary>Seeded uniform values in [-range, range), the same as the kernel checks' data.</summary>
    /// <param name="count">How many values.</param>
    /// <param name="seed">The seed.</param>
    /// <param name="range">The bound.</param>
    /// <returns>The values.</returns>
    public static float[] Random(int count, int seed, float range = 1f) => PeftKernels.Testing.TinyLlama.Uniform(count, seed, range);
}

/// <summary>The accelerator's fp32 peak, for model FLOP utilisation (MFU).</summary>
public static class GpuPeak
{
    /// <summary>
    /// fp32 FMA peak of CUDA cores in GFLOP/s: SMs × clock × fp32 lanes per SM × 2 (64 lanes on compute capability 7.x and 8.0,
    /// 128 on 8.6 and later, including Hopper's 9.0: an H100 SXM gives 132 × 1.98 GHz × 128 × 2 ≈ 67 TFLOP/s). Tensor-core
    /// (TF32) peaks are higher; MFU is quoted against this one because the model's GEMMs run fp32. Null off CUDA.
    /// </summary>
    public static double? Fp32Gflops(Accelerator acc)
    {
        if (acc is not ILGPU.Runtime.Cuda.CudaAccelerator cuda)
        {
            return null;
        }

        var arch = cuda.Architecture;
        int lanes = arch.Major >= 9 || (arch.Major == 8 && arch.Minor >= 6) ? 128 : 64;
        return cuda.NumMultiprocessors * (cuda.ClockRate * 1e3) * lanes * 2 / 1e9;
    }
}
