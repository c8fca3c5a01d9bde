// `peft bench [--quick]`: times the CPU kernels on fixed shapes against the machine's own
// FMA peak and read bandwidth, measured in the same process. Median of repeated runs after
// a warm-up; BenchmarkDotNet in bench/ is the rigorous version of the same measurements.
using System.CommandLine;
using System.Diagnostics;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Cli;

internal static class BenchCommand
{
    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "Reduced shapes and repeats (under a minute)." };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts to run (default: 1 and the processor count).", AllowMultipleArgumentsPerToken = true };
        var command = new Command("bench", "Benchmark the CPU kernels: GEMM and fused LoRA forward/backward, against the measured FMA peak and read bandwidth.")
        {
            quick,
            threads,
        };
        command.SetAction(parse =>
        {
            int[] counts = parse.GetValue(threads) is { Length: > 0 } t ? t : [.. new[] { 1, Environment.ProcessorCount }.Distinct()];
            Run(parse.GetValue(quick), counts, Console.Out);
            return 0;
        });
        return command;
    }

    private static void Run(bool quick, int[] threadCounts, TextWriter output)
    {
        int repeats = quick ? 5 : 15;
        output.WriteLine($"SIMD path: {KernelOptions.Best}, processors: {Environment.ProcessorCount}, repeats: {repeats} (median)");
        var gemmShapes = quick
            ? new[] { (1024, 1024, 1024), (512, 4096, 4096) }
            : new[] { (1024, 1024, 1024), (512, 4096, 4096), (2048, 4096, 4096) };
        var loraShapes = quick
            ? new[] { (1, 4096, 4096, 16), (512, 4096, 4096, 16) }
            : new[] { (1, 4096, 4096, 16), (512, 4096, 4096, 16), (2048, 4096, 4096, 16), (512, 4096, 4096, 64) };
        foreach (int threads in threadCounts)
        {
            double peak = MachineProbe.FmaPeakGflops(threads, steps: quick ? 10_000_000 : 40_000_000);
            double bandwidth = MachineProbe.ReadBandwidthGBs(threads, 4096L * 4096 * sizeof(float));
            output.WriteLine();
            output.WriteLine($"threads = {threads}: FMA peak {peak:F1} GFLOP/s, read bandwidth {bandwidth:F1} GB/s (64 MiB buffer)");
            output.WriteLine($"{"kernel",-28} {"shape",-22} {"ms",9} {"GFLOP/s",9} {"% peak",7} {"vs GEMM",8} {"GB/s",7}");
            var options = new KernelOptions(threads);
            foreach (var (m, n, k) in gemmShapes)
            {
                var a = Random(m * k, 1);
                var b = Random(k * n, 2);
                var c = new float[m * n];
                double ms = Time(repeats, () => Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c, options));
                double flops = 2.0 * m * n * k;
                Row(output, "gemm x·Wᵀ", $"{m}x{n}x{k}", ms, flops, peak, double.NaN, double.NaN);
            }

            foreach (var (rows, inF, outF, r) in loraShapes)
            {
                var x = Random(rows * inF, 3);
                var w = Random(outF * inF, 4);
                var a = Random(r * inF, 5);
                var b = Random(outF * r, 6);
                var y = new float[rows * outF];
                var h = new float[rows * r];
                var dy = Random(rows * outF, 7);
                var dx = new float[rows * inF];
                var da = new float[r * inF];
                var db = new float[outF * r];
                var lora = new LoraOptions(Kernel: options);
                double baseMs = Time(repeats, () => Gemm.Multiply(false, true, rows, outF, inF, 1f, x, w, 0f, y, options));
                double fwdMs = Time(repeats, () => LoraMatmul.Forward(x, w, [], a, b, 2f, y, h, rows, inF, outF, r, lora));
                double bwdMs = Time(repeats, () => LoraMatmul.Backward(dy, x, h, w, a, b, 2f, dx, da, db, rows, inF, outF, r, lora));
                string shape = $"{rows}x{inF}x{outF} r{r}";
                double baseFlops = 2.0 * rows * inF * outF;
                double fwdFlops = baseFlops + (2.0 * rows * r * (inF + outF));
                double bwdFlops = baseFlops + (2.0 * rows * r * ((2 * outF) + (2 * inF)));
                double weightBytes = (double)outF * inF * sizeof(float);
                Row(output, "base gemm", shape, baseMs, baseFlops, peak, 1.0, rows == 1 ? weightBytes / baseMs / 1e6 : double.NaN);
                Row(output, "lora forward", shape, fwdMs, fwdFlops, peak, fwdMs / baseMs, rows == 1 ? weightBytes / fwdMs / 1e6 : double.NaN);
                Row(output, "lora backward (dx,da,db)", shape, bwdMs, bwdFlops, peak, bwdMs / baseMs, double.NaN);
                if (rows == 1)
                {
                    output.WriteLine($"{"",-28} n = 1 forward reads W at {weightBytes / fwdMs / 1e6 / bandwidth:P0} of the read bandwidth");
                }
            }
        }
    }

    private static void Row(TextWriter output, string name, string shape, double ms, double flops, double peak, double ratio, double gbs) =>
        output.WriteLine($"{name,-28} {shape,-22} {ms,9:F3} {flops / ms / 1e6,9:F1} {flops / ms / 1e6 / peak,7:P0} {(double.IsNaN(ratio) ? "" : ratio.ToString("F3") + "x"),8} {(double.IsNaN(gbs) ? "" : gbs.ToString("F1")),7}");

    private static double Time(int repeats, Action action)
    {
        action();
        var samples = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            action();
            samples[i] = sw.Elapsed.TotalMilliseconds;
        }

        Array.Sort(samples);
        return samples[repeats / 2];
    }

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        var data = new float[count];
        for (int i = 0; i < count; i++)
        {
            data[i] = (float)((rng.NextDouble() * 2) - 1);
        }

        return data;
    }
}
