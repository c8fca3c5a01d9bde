// `peft bench lora`: the fused LoRA forward and backward (LoraMatmul) and the base GEMM of the same
// shape, timed in rounds (base, forward, backward in turn; median over rounds), at chosen shapes and
// thread counts, as one machine-readable RESULT line each. It is the project side of the LoRA
// backward comparison with PyTorch (bench/peers/lora-backward-vs-torch.sh, whose Python side
// times the same formulas as explicit matmuls):
//   forward   y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, h = x·Aᵀ
//   backward  dh = s·dy·B, dB = s·dyᵀ·h, dA = dhᵀ·x, dx = dy·W + dh·A
// with x [n, in], W [out, in], A [r, in], B [out, r], dy [n, out]. FLOPs as in bench/Shapes.cs.
using System.CommandLine;
using System.Globalization;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Cli;

internal static class BenchLoraCommand
{
    /// <summary>The ~125M Llama's LoRA shapes at 256 tokens (q/k/v/o, gate/up, down) and the design doc's 4096² ones.</summary>
    internal static readonly string[] DefaultShapes = ["256x768x768r16", "256x768x2048r16", "256x2048x768r16", "512x4096x4096r16", "2048x4096x4096r16"];

    public static Command Create()
    {
        var shapes = new Option<string[]>("--shape") { Description = "Shapes NxINxOUTrR (default: the ~125M Llama's at 256 tokens, and 512/2048x4096x4096r16).", AllowMultipleArgumentsPerToken = true };
        var threads = new Option<int[]>("--threads") { Description = "Thread counts to run, 0 = all processors (default: 1 and the processor count).", AllowMultipleArgumentsPerToken = true };
        var repeats = new Option<int>("--repeats") { Description = "Timed rounds per shape (median).", DefaultValueFactory = _ => 15 };
        var command = new Command("lora", "Time the fused LoRA forward/backward against the base GEMM; one RESULT line per shape and thread count.")
        {
            shapes, threads, repeats,
        };
        command.SetAction(parse => Cli.Guard(parse, log =>
        {
            string[] given = parse.GetValue(shapes) ?? [];
            var parsed = (given.Length > 0 ? given : DefaultShapes).Select(ParseShape).ToArray();
            int rounds = parse.AtLeast(repeats, 1);
            foreach (int t in BenchCommand.ThreadCounts(parse.Threads(threads)))
            {
                double peak = MachineProbe.FmaPeakGflops(t, steps: 20_000_000);
                foreach (var shape in parsed)
                {
                    Run(shape, t, rounds, peak, log);
                }
            }

            return 0;
        }));
        return command;
    }

    /// <summary>Parses NxINxOUTrR (e.g. 256x768x2048r16); every number positive.</summary>
    internal static (int N, int In, int Out, int R) ParseShape(string text)
    {
        string[] parts = text.Split(['x', 'r']);
        var values = new int[parts.Length];
        bool ok = parts.Length == 4;
        for (int i = 0; ok && i < 4; i++)
        {
            ok = int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out values[i]) && values[i] > 0;
        }

        return ok ? (values[0], values[1], values[2], values[3])
            : throw new ArgumentException($"--shape '{text}': expected NxINxOUTrR with positive integers, e.g. 256x768x2048r16.");
    }

    private static void Run((int N, int In, int Out, int R) shape, int threads, int rounds, double peak, TextWriter log)
    {
        var (n, inF, outF, r) = shape;
        var options = new KernelOptions(threads);
        var lora = new LoraOptions(Kernel: options);
        var x = BenchCommand.Random(n * inF, 3);
        var w = BenchCommand.Random(outF * inF, 4);
        var a = BenchCommand.Random(r * inF, 5);
        var b = BenchCommand.Random(outF * r, 6);
        var dy = BenchCommand.Random(n * outF, 7);
        var (y, h, dx, da, db) = (new float[n * outF], new float[n * r], new float[n * inF], new float[r * inF], new float[outF * r]);
        var wo = WeightOperand.F32(w, outF, inF);
        var times = BenchCommand.TimeInterleaved(rounds,
            () => Gemm.Multiply(false, true, n, outF, inF, 1f, x, w, 0f, y, options),
            () => LoraMatmul.Forward(x, wo, [], a, b, 2f, y, h, n, inF, outF, r, lora),
            () => LoraMatmul.Backward(dy, x, h, wo, a, b, 2f, dx, da, db, n, inF, outF, r, lora));
        double baseFlops = 2.0 * n * inF * outF;
        double[] flops = [baseFlops, baseFlops + (2.0 * n * r * (inF + outF)), baseFlops + (2.0 * n * r * ((2.0 * inF) + (2.0 * outF)))];
        string[] ops = ["base_gemm", "forward", "backward"];
        for (int i = 0; i < ops.Length; i++)
        {
            double ms = times.Ms[i];
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"RESULT side=peft op={ops[i]} threads={threads} shape={n}x{inF}x{outF}r{r} median_ms={ms:F3} gflops={flops[i] / ms / 1e6:F1} peak_pct={100 * flops[i] / ms / 1e6 / peak:F0} fma_peak={peak:F1} simd={KernelOptions.Best}"));
        }
    }
}
