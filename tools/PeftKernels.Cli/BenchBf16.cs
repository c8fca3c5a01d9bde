// The bf16-compute part of `peft bench`: the bf16 peak of the native instruction bf16 compute runs on
// (MachineProbe.Bf16PeakGflops: vdpbf16ps chains, or AMX tile products where present), then bf16 GEMM
// x·Wᵀ and the fused LoRA forward/backward at KernelOptions.Compute = Bf16 as a share of that peak, each
// with its ratio to the same call at fp32 compute timed in the same rounds (ratio < 1: bf16 is faster).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Cli;

internal static class BenchBf16
{
    internal static void Run(bool quick, int repeats, int threads, TextWriter output)
    {
        var probe = MachineProbe.Bf16PeakGflops(threads, steps: quick ? 10_000_000 : 40_000_000);
        output.WriteLine();
        if (double.IsNaN(probe.Gflops))
        {
            output.WriteLine($"threads = {threads}: bf16 compute runs the managed path ({probe.Detail}); its share is of the fp32 FMA peak above");
        }
        else
        {
            output.WriteLine($"threads = {threads}: bf16 peak {probe.Gflops:F1} GFLOP/s ({probe.Detail}); bf16 rows are % of it, ratio = bf16 time / fp32 time");
        }

        double peak = double.IsNaN(probe.Gflops) ? MachineProbe.FmaPeakGflops(threads, steps: quick ? 10_000_000 : 40_000_000) : probe.Gflops;
        var fp32 = new KernelOptions(threads);
        var bf16 = fp32 with { Compute = ComputePrecision.Bf16 };
        var gemmShapes = quick ? new[] { (1024, 1024, 1024) } : new[] { (1024, 1024, 1024), (2048, 4096, 4096) };
        foreach (var (m, n, k) in gemmShapes)
        {
            var a = BenchCommand.Random(m * k, 1);
            var b = BenchCommand.Random(k * n, 2);
            var c = new float[m * n];
            var times = BenchCommand.TimeInterleaved(repeats,
                () => Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c, fp32),
                () => Gemm.Multiply(false, true, m, n, k, 1f, a, b, 0f, c, bf16));
            BenchCommand.Row(output, "bf16 gemm x·Wᵀ", $"{m}x{n}x{k}", times.Ms[1], 2.0 * m * n * k, peak, times.Ratio[1], double.NaN);
        }

        var loraShapes = quick ? new[] { (512, 4096, 4096, 16) } : new[] { (512, 4096, 4096, 16), (2048, 4096, 4096, 16) };
        foreach (var (rows, inF, outF, r) in loraShapes)
        {
            var x = BenchCommand.Random(rows * inF, 3);
            var w = WeightOperand.F32(BenchCommand.Random(outF * inF, 4), outF, inF);
            var la = BenchCommand.Random(r * inF, 5);
            var lb = BenchCommand.Random(outF * r, 6);
            var y = new float[rows * outF];
            var h = new float[rows * r];
            var dy = BenchCommand.Random(rows * outF, 7);
            var dx = new float[rows * inF];
            var da = new float[r * inF];
            var db = new float[outF * r];
            var lora32 = new LoraOptions(Kernel: fp32);
            var lora16 = new LoraOptions(Kernel: bf16);
            var fwd = BenchCommand.TimeInterleaved(repeats,
                () => LoraMatmul.Forward(x, w, [], la, lb, 2f, y, h, rows, inF, outF, r, lora32),
                () => LoraMatmul.Forward(x, w, [], la, lb, 2f, y, h, rows, inF, outF, r, lora16));
            var bwd = BenchCommand.TimeInterleaved(repeats,
                () => LoraMatmul.Backward(dy, x, h, w, la, lb, 2f, dx, da, db, rows, inF, outF, r, lora32),
                () => LoraMatmul.Backward(dy, x, h, w, la, lb, 2f, dx, da, db, rows, inF, outF, r, lora16));
            string shape = $"{rows}x{inF}x{outF} r{r}";
            double baseFlops = 2.0 * rows * inF * outF;
            Row(output, "bf16 lora forward", shape, fwd, baseFlops + (2.0 * rows * r * (inF + outF)), peak);
            Row(output, "bf16 lora backward", shape, bwd, baseFlops + (2.0 * rows * r * ((2 * outF) + (2 * inF))), peak);
        }
    }

    private static void Row(TextWriter output, string name, string shape, (double[] Ms, double[] Ratio) times, double flops, double peak) =>
        BenchCommand.Row(output, name, shape, times.Ms[1], flops, peak, times.Ratio[1], double.NaN);
}
