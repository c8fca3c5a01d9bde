// LoRA: the fused LoRA forward y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ and backward (dx, dA, dB) against the base
// GEMM alone (x·Wᵀ forward, dy·W backward), n = in = out = 4096, r = 16, fp32.
// Units: median ms per launch and GFLOP/s (base 2·n·in·out, plus the adapter's flops for the fused forward);
// the comparison is time(fused) / time(base GEMM).
// Target (issue 6): LoRA forward ≤ 1.10× the base GEMM; the backward has none set.
using ILGPU.Runtime;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.Bench.Gpu;

/// <summary>The LoRA matmul benchmark: fused LoRA forward and backward vs the base GEMM.</summary>
public static class LoraMatmulGpuBench
{
    /// <summary>Times the base GEMMs and the fused LoRA forward and backward at n = in = out = 4096, r = 16.</summary>
    /// <param name="acc">The accelerator (CUDA for the cuBLAS comparisons).</param>
    /// <param name="report">Where the rows go.</param>
    /// <param name="runs">Timed samples per kernel (GpuBenchTiming.Time).</param>
    /// <param name="sizes">n = in = out and r (GpuBenchSizes.Lora, LoraRank).</param>
    public static void Run(Accelerator acc, IBenchReport report, int runs, GpuBenchSizes sizes)
    {
        var (n, inF, outF, r) = (sizes.Lora, sizes.Lora, sizes.Lora, sizes.LoraRank);
        using var x = acc.Allocate1D(GpuBenchTiming.Random(n * inF, 1));
        using var w = acc.Allocate1D(GpuBenchTiming.Random(outF * inF, 2));
        using var a = acc.Allocate1D(GpuBenchTiming.Random(r * inF, 3));
        using var b = acc.Allocate1D(GpuBenchTiming.Random(outF * r, 4));
        using var dy = acc.Allocate1D(GpuBenchTiming.Random(n * outF, 5));
        using var y = acc.Allocate1D<float>(n * outF);
        using var h = acc.Allocate1D<float>(n * r);
        using var dx = acc.Allocate1D<float>(n * inF);
        using var da = acc.Allocate1D<float>(r * inF);
        using var db = acc.Allocate1D<float>(outF * r);
        string shape = $"n{n} in{inF} out{outF} r{r}";
        double flopsBase = 2.0 * n * inF * outF;
        double baseFwd = GpuBenchTiming.Time(acc, runs, () => GemmKernels.Multiply(acc, false, true, n, outF, inF, 1f, x.View, w.View, 0f, y.View));
        var wo = DeviceWeightOperand.Dense(w.View, outF, inF);
        double fwd = GpuBenchTiming.Time(acc, runs, () => LoraMatmulKernels.Forward(acc, x.View, wo, default, a.View, b.View, 2f, y.View, h.View, n, inF, outF, r));
        report.Add(new BenchResult("base GEMM forward x·Wᵀ", shape, baseFwd, flopsBase / baseFwd / 1e6, null, "baseline"));
        report.Add(new BenchResult("fused LoRA forward", shape, fwd, (flopsBase + (4.0 * n * r * (inF + outF) / 2)) / fwd / 1e6, null,
            GpuBenchTiming.Ratio(fwd / baseFwd, "× the base GEMM", "≤ 1.10×", fwd / baseFwd <= 1.10, percent: false)));
        double baseBwd = GpuBenchTiming.Time(acc, runs, () => GemmKernels.Multiply(acc, false, false, n, inF, outF, 1f, dy.View, w.View, 0f, dx.View));
        double bwd = GpuBenchTiming.Time(acc, runs, () => LoraMatmulKernels.Backward(acc, dy.View, x.View, h.View, wo, a.View, b.View, 2f, dx.View, da.View, db.View,
            n, inF, outF, r));
        report.Add(new BenchResult("base GEMM backward dy·W", shape, baseBwd, flopsBase / baseBwd / 1e6, null, "baseline"));
        report.Add(new BenchResult("fused LoRA backward (dx, dA, dB)", shape, bwd, null, null,
            GpuBenchTiming.Ratio(bwd / baseBwd, "× the base dx GEMM", "none set", true, percent: false) + " (the dh temporary comes from the device pool; no wait)"));
    }
}
