// bf16 peak probe, next to the fp32 FMA peak (MachineProbe.cs), through the native library:
//   AVX512-BF16: 24 independent vdpbf16ps chains per thread (≥ latency × ports), each step one
//                instruction per chain: flops = 64 · 24 · steps · threads (16 lanes × 2 products × 2).
//   AMX-BF16:    four independent 16×16×32 tile products per step: flops = 4 · 16384 · steps · threads.
// The peak of the kernel that bf16 compute would pick (GemmDriver.ResolveBf16 with Auto); NaN with
// the reason where neither native kernel can run (the managed bf16 path runs at the fp32 FMA peak).
using System.Diagnostics;
using PeftKernels.Kernels.Native;

namespace PeftKernels.Kernels.Cpu;

/// <summary>The bf16 peak of this machine's fastest native bf16 instruction.</summary>
/// <param name="Gflops">Measured GFLOP/s, or NaN when no native bf16 kernel can run.</param>
/// <param name="Kernel">The kernel measured (Amx or Avx512Bf16), or Managed when none.</param>
/// <param name="Detail">The instruction measured, or why none could be.</param>
public readonly record struct Bf16Peak(double Gflops, Bf16Kernel Kernel, string Detail);

public static unsafe partial class MachineProbe
{
    /// <summary>bf16 multiply-add throughput in GFLOP/s over <paramref name="threads"/> threads, best of <paramref name="repeats"/>.</summary>
    /// <param name="threads">Threads, each running its own chains.</param>
    /// <param name="steps">Rounds per thread.</param>
    /// <param name="repeats">Measurements; the best is returned.</param>
    public static Bf16Peak Bf16PeakGflops(int threads, long steps = 20_000_000, int repeats = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var kernel = GemmDriver.ResolveBf16(Bf16Kernel.Auto, KernelOptions.Best);
        if (kernel == Bf16Kernel.Managed)
        {
            return new(double.NaN, kernel, $"no native bf16 kernel: AVX512-BF16 {NativeBf16.AvxStatus}; AMX {NativeBf16.AmxStatus}");
        }

        bool amx = kernel == Bf16Kernel.Amx;
        long roundSteps = amx ? Math.Max(1, steps / 64) : steps;
        double flopsPerStep = amx ? 4.0 * 16 * 16 * 32 * 2 : 64.0 * 24;
        double best = 0;
        for (int rep = 0; rep < repeats; rep++)
        {
            var sinks = new float[threads];
            var sw = Stopwatch.StartNew();
            RunThreads(threads, t => sinks[t] = PeakLoop(amx, roundSteps));
            double seconds = sw.Elapsed.TotalSeconds;
            best = Math.Max(best, flopsPerStep * roundSteps * threads / seconds / 1e9);
            GC.KeepAlive(sinks);
        }

        return new(best, kernel, amx ? "AMX-BF16 tdpbf16ps" : "AVX512-BF16 vdpbf16ps");
    }

    /// <summary>The AVX512-BF16 peak loop's sum after <paramref name="steps"/> rounds (for tests: the loop ran them all).</summary>
    internal static float Bf16PeakSum(long steps) => NativeBf16.AvxPeak(steps);

    private static float PeakLoop(bool amx, long steps) => amx ? NativeBf16.AmxPeak(steps) : NativeBf16.AvxPeak(steps);
}
