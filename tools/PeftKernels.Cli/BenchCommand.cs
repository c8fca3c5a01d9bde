// `peft bench [--quick]`: times the CPU kernels on fixed shapes against the machine's own
// FMA peak and read bandwidth, measured in the same process. Median of repeated runs after
// a warm-up; a kernel and its baseline run alternately so their ratio is measured round by
// round; BenchmarkDotNet in bench/ is the rigorous version of the same measurements.
// `peft bench serve` (BenchServeCommand.cs) benchmarks the inference engine instead, and
// `peft bench decode-error` (BenchDecodeErrorCommand.cs) the integer decode path's accuracy.
// `peft bench http` (BenchHttpCommand.cs) load-tests an OpenAI-compatible server, and
// `peft bench allreduce` (BenchAllReduceCommand.cs) times the data-parallel all-reduce under mpirun, and
// `peft bench lora` (BenchLoraCommand.cs) the fused LoRA kernels at chosen shapes, one RESULT line each.
using System.CommandLine;
using System.Diagnostics;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Cli;

internal static class BenchCommand
{
    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "Reduced shapes and repeats (under a minute)." };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts to run, 0 = all processors (default: 1 and the processor count).", AllowMultipleArgumentsPerToken = true };
        var command = new Command("bench", "Benchmark the CPU kernels: GEMM and fused LoRA forward/backward, against the measured FMA peak and read bandwidth.")
        {
            quick,
            threads,
        };
        command.Subcommands.Add(BenchServeCommand.Create());
        command.Subcommands.Add(BenchDecodeErrorCommand.Create());
        command.Subcommands.Add(BenchHttpCommand.Create());
        command.Subcommands.Add(BenchAllReduceCommand.Create());
        command.Subcommands.Add(BenchLoraCommand.Create());
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            Run(parse.GetValue(quick), ThreadCounts(parse.Threads(threads)), log);
            return 0;
        }));
        return command;
    }

    /// <summary>The thread counts to run: 0 means all processors, as on the other verbs; none given means 1 and the processor count.</summary>
    internal static int[] ThreadCounts(int[] given) =>
        given.Length > 0 ? [.. given.Select(t => t == 0 ? Environment.ProcessorCount : t)] : [.. new[] { 1, Environment.ProcessorCount }.Distinct()];

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
            output.WriteLine($"{"kernel",-28} {"shape",-22} {"ms",9} {"GFLOP/s",9} {"% peak",7} {"ratio",8} {"GB/s",7}");
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
                var wo = WeightOperand.F32(w, outF, inF);
                var times = TimeInterleaved(repeats,
                    () => Gemm.Multiply(false, true, rows, outF, inF, 1f, x, w, 0f, y, options),
                    () => LoraMatmul.Forward(x, wo, [], a, b, 2f, y, h, rows, inF, outF, r, lora),
                    () => LoraMatmul.Backward(dy, x, h, wo, a, b, 2f, dx, da, db, rows, inF, outF, r, lora));
                var (baseMs, fwdMs, bwdMs) = (times.Ms[0], times.Ms[1], times.Ms[2]);
                var (fwdRatio, bwdRatio) = (times.Ratio[1], times.Ratio[2]);
                string shape = $"{rows}x{inF}x{outF} r{r}";
                double baseFlops = 2.0 * rows * inF * outF;
                double fwdFlops = baseFlops + (2.0 * rows * r * (inF + outF));
                double bwdFlops = baseFlops + (2.0 * rows * r * ((2 * outF) + (2 * inF)));
                double weightBytes = (double)outF * inF * sizeof(float);
                Row(output, "base gemm", shape, baseMs, baseFlops, peak, 1.0, rows == 1 ? weightBytes / baseMs / 1e6 : double.NaN);
                Row(output, "lora forward", shape, fwdMs, fwdFlops, peak, fwdRatio, rows == 1 ? weightBytes / fwdMs / 1e6 : double.NaN);
                Row(output, "lora backward (dx,da,db)", shape, bwdMs, bwdFlops, peak, bwdRatio, double.NaN);
                if (rows == 1)
                {
                    output.WriteLine($"{"",-28} n = 1 forward reads W at {weightBytes / fwdMs / 1e6 / bandwidth:P0} of the read bandwidth");
                }
            }

            RunQuant4(repeats, options, peak, output);
            BenchBf16.Run(quick, repeats, threads, output);
        }
    }

    /// <summary>NF4 (blocksize 64, double-quantized scales) against the fp32 kernels of the same shapes.</summary>
    private static void RunQuant4(int repeats, KernelOptions options, double peak, TextWriter output)
    {
        const int n = 8192, k = 8192;
        var x = Random(k, 11);
        var w = Random(n * k, 12);
        var y = new float[n];
        var wq = QuantizedWeight.Quantize(w, [n, k], options: options);
        wq.AbsmaxFp32();

        // Each round runs the fp32 GEMV (256 MiB of W, which pushes the 36 MiB NF4 weight out
        // of the last-level cache), the NF4 GEMV, then one pass over a 1 GiB buffer: the NF4
        // GEMV reads from DRAM like a model's decode step, and its share of the read bandwidth
        // is taken round by round against the pass that follows it.
        using var dram = new MachineProbe.ReadBuffer(1L << 30);
        double[] passGBs = new double[repeats + 1];
        int pass = 0;
        var samples = TimeInterleavedSamples(repeats,
            () => Gemm.Multiply(false, true, 1, n, k, 1f, x, w, 0f, y, options),
            () => Quant4Matmul.Forward(x, wq, [], y, 1, k, n, options),
            () => passGBs[Math.Min(pass++, repeats)] = dram.Pass(options.Threads));
        double nf4Bytes = (n * (double)k / 2) + (4.0 * n * k / 64);
        double gemvMs = Median(samples[0]), nf4Ms = Median(samples[1]);
        double speedup = Median([.. samples[0].Select((t, r) => t / samples[1][r])]);
        double[] share = [.. samples[1].Select((t, r) => nf4Bytes / t / 1e6 / passGBs[r + 1])];
        Row(output, "fp32 gemv", $"1x{n}x{k}", gemvMs, 2.0 * n * k, peak, 1.0, 4.0 * n * k / gemvMs / 1e6);
        Row(output, "nf4 gemv", $"1x{n}x{k}", nf4Ms, 2.0 * n * k, peak, Median([.. samples[1].Select((t, r) => t / samples[0][r])]), nf4Bytes / nf4Ms / 1e6);
        output.WriteLine($"{"",-28} nf4 gemv is {speedup:F2}x faster than fp32 and reads its {nf4Bytes / (1 << 20):F0} MiB at {Median(share):P0} " +
            $"(rounds {share.Min():P0}–{share.Max():P0}) of the read bandwidth of the 1 GiB pass after it ({Median(passGBs[1..]):F1} GB/s)");

        var packed = new byte[w.Length / 2];
        var absmax = new float[w.Length / 64];
        var back = new float[w.Length];
        double quantMs = Time(repeats, () => Quant4.Quantize(w, packed, absmax, Quant4Type.Nf4, 64, options));
        double dequantMs = Time(repeats, () => Quant4.Dequantize(packed, absmax, Quant4Type.Nf4, 64, back, options));
        double codecBytes = (4.0 * w.Length) + (w.Length / 2.0) + (w.Length / 16.0);
        Row(output, "nf4 quantize", $"{n}x{k}", quantMs, 0, peak, double.NaN, codecBytes / quantMs / 1e6);
        Row(output, "nf4 dequantize", $"{n}x{k}", dequantMs, 0, peak, double.NaN, codecBytes / dequantMs / 1e6);

        var (rows, inF, outF, r) = (512, 4096, 4096, 16);
        var xs = Random(rows * inF, 13);
        var ws = Random(outF * inF, 14);
        var wsq = QuantizedWeight.Quantize(ws, [outF, inF], options: options);
        wsq.AbsmaxFp32();
        var a = Random(r * inF, 15);
        var b = Random(outF * r, 16);
        var ys = new float[rows * outF];
        var h = new float[rows * r];
        var dy = Random(rows * outF, 17);
        var dx = new float[rows * inF];
        var da = new float[r * inF];
        var db = new float[outF * r];
        var lora = new LoraOptions(Kernel: options);
        var wso = WeightOperand.F32(ws, outF, inF);
        double baseFlops = 2.0 * rows * inF * outF;
        var gemm = TimeInterleaved(repeats,
            () => Gemm.Multiply(false, true, rows, outF, inF, 1f, xs, ws, 0f, ys, options),
            () => Quant4Matmul.Forward(xs, wsq, [], ys, rows, inF, outF, options));
        var fwd = TimeInterleaved(repeats,
            () => LoraMatmul.Forward(xs, wso, [], a, b, 2f, ys, h, rows, inF, outF, r, lora),
            () => QLoraMatmul.Forward(xs, wsq, [], a, b, 2f, ys, h, rows, inF, outF, r, lora));
        var bwd = TimeInterleaved(repeats,
            () => LoraMatmul.Backward(dy, xs, h, wso, a, b, 2f, dx, da, db, rows, inF, outF, r, lora),
            () => QLoraMatmul.Backward(dy, xs, h, wsq, a, b, 2f, dx, da, db, rows, inF, outF, r, lora));
        double gemmMs = gemm.Ms[0];
        string shape = $"{rows}x{inF}x{outF} r{r}";
        Row(output, "fp32 gemm", shape, gemmMs, baseFlops, peak, 1.0, double.NaN);
        Row(output, "nf4 gemm (vs fp32 gemm)", shape, gemm.Ms[1], baseFlops, peak, gemm.Ratio[1], double.NaN);
        Row(output, "qlora forward (vs lora)", shape, fwd.Ms[1], baseFlops, peak, fwd.Ratio[1], double.NaN);
        Row(output, "qlora backward (vs lora)", shape, bwd.Ms[1], baseFlops, peak, bwd.Ratio[1], double.NaN);
    }

    internal static void Row(TextWriter output, string name, string shape, double ms, double flops, double peak, double ratio, double gbs) =>
        output.WriteLine($"{name,-28} {shape,-22} {ms,9:F3} {(flops == 0 ? "" : (flops / ms / 1e6).ToString("F1")),9} {(flops == 0 ? "" : (flops / ms / 1e6 / peak).ToString("P0")),7} {(double.IsNaN(ratio) ? "" : ratio.ToString("F3") + "x"),8} {(double.IsNaN(gbs) ? "" : gbs.ToString("F1")),7}");

    /// <summary>
    /// Runs the actions round-robin (A B C A B C …) after one warm-up each. Returns each action's
    /// median time and, for every action, the median over rounds of its time divided by the first
    /// action's time in the same round: a ratio that machine-wide slow phases affect equally.
    /// </summary>
    internal static (double[] Ms, double[] Ratio) TimeInterleaved(int repeats, params Action[] actions)
    {
        var samples = TimeInterleavedSamples(repeats, actions);
        var ratios = samples.Select(s => s.Select((t, round) => t / samples[0][round]).ToArray());
        return ([.. samples.Select(Median)], [.. ratios.Select(Median)]);
    }

    /// <summary>After one warm-up call each, <paramref name="repeats"/> rounds of every action in turn: ms[action][round].</summary>
    private static double[][] TimeInterleavedSamples(int repeats, params Action[] actions)
    {
        foreach (var action in actions)
        {
            action();
        }

        var samples = actions.Select(_ => new double[repeats]).ToArray();
        for (int round = 0; round < repeats; round++)
        {
            for (int i = 0; i < actions.Length; i++)
            {
                var sw = Stopwatch.StartNew();
                actions[i]();
                samples[i][round] = sw.Elapsed.TotalMilliseconds;
            }
        }

        return samples;
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    private static double Time(int repeats, Action action)
    {
        return TimeInterleaved(repeats, action).Ms[0];
    }

    internal static float[] Random(int count, int seed)
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
