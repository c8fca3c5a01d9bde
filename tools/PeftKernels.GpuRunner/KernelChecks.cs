// Every GPU kernel on the CUDA accelerator against the CPU kernel (or, for IA³, the double
// reference) at moderate shapes. Pass/fail per output: |gpu − cpu| ≤ atol + rtol·|cpu|, with the
// tolerance of the matching unit test, doubled because both sides round (see tests/PeftKernels.Tests/Gpu<Stem>Tests.cs).
using ILGPU;
using ILGPU.Runtime;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Gpu;

namespace PeftKernels.GpuRunner;

internal static partial class KernelChecks
{
    public static void RunAll(Accelerator acc, Report report)
    {
        var checks = new (string Name, Action Run)[]
        {
            ("gemm", () => Gemm(acc, report)),
            ("lora", () => Lora(acc, report)),
            ("quant4", () => Quant4Checks(acc, report)),
            ("qlora", () => QLora(acc, report)),
            ("ia3", () => Ia3(acc, report)),
            ("adamw", () => AdamWCheck(acc, report)),
            ("rmsnorm", () => RmsNormCheck(acc, report)),
            ("rope", () => RopeCheck(acc, report)),
            ("swiglu", () => SwiGluCheck(acc, report)),
            ("attention", () => AttentionCheck(acc, report)),
            ("cross-entropy", () => CrossEntropyCheck(acc, report)),
            ("lora branch", () => LoraBranch(acc, report)),
            ("segmented lora", () => SegmentedLoraCheck(acc, report)),
            ("dora norm", () => DoraNormCheck(acc, report)),
            ("training kernels", () => TrainingKernels(acc, report)),
        };
        foreach (var (name, run) in checks)
        {
            try
            {
                run();
            }
            catch (Exception e)
            {
                report.Add(new CheckResult(name, "-", double.NaN, double.NaN, 0, 0, false, $"threw {e.GetType().Name}: {e.Message}"));
            }
        }
    }

    /// <summary>fp32 sums of k terms of size ≤ scale, both sides reassociated: 2 · 4·k·2⁻²⁴·scale.</summary>
    private static double DotAtol(int k, double scale = 1) => 8.0 * Math.Max(k, 16) * Math.Pow(2, -24) * Math.Max(1, scale);

    private static void Gemm(Accelerator acc, Report report)
    {
        foreach (var (m, n, k, ta, tb) in new[] { (512, 384, 1024, false, false), (500, 300, 777, false, true), (257, 513, 129, true, false), (33, 17, 65, true, true) })
        {
            var a = Data.Random(m * k, 1);
            var b = Data.Random(k * n, 2);
            var cpu = new float[m * n];
            PeftKernels.Kernels.Cpu.Gemm.Multiply(ta, tb, m, n, k, 1f, a, b, 0f, cpu);
            using var da = acc.Allocate1D(a);
            using var db = acc.Allocate1D(b);
            using var dc = acc.Allocate1D<float>(m * n);
            string shape = $"{m}x{n}x{k} tA={ta} tB={tb}";
            foreach (var path in new[] { GemmPath.Naive, GemmPath.Tiled })
            {
                GemmKernels.Multiply(acc, ta, tb, m, n, k, 1f, da.View, db.View, 0f, dc.View, path);
                Compare(report, $"gemm {path.ToString().ToLowerInvariant()}", shape, Data.Down(acc, dc.View), cpu, DotAtol(k), 1e-5);
            }

            if (GemmKernels.SupportsTf32(acc))
            {
                // tf32 inputs: ≤ 2⁻¹¹ relative each, so ≤ 2⁻¹⁰ per product of values in [-1, 1].
                GemmKernels.Multiply(acc, ta, tb, m, n, k, 1f, da.View, db.View, 0f, dc.View, GemmPrecision.Tf32);
                Compare(report, "gemm tf32 tensor cores", shape, Data.Down(acc, dc.View), cpu, k * Math.Pow(2, -10), 1e-3);
            }
        }
    }

    private static void Lora(Accelerator acc, Report report)
    {
        foreach (var (n, inF, outF, r, dropout) in new[] { (256, 1024, 768, 16, 0.1f), (3, 512, 1000, 8, 0f) })
        {
            var x = Data.Random(n * inF, 1);
            var w = Data.Random(outF * inF, 2);
            var bias = Data.Random(outF, 3);
            var a = Data.Random(r * inF, 4);
            var b = Data.Random(outF * r, 5);
            var dy = Data.Random(n * outF, 6);
            var options = new LoraOptions(dropout, 1234);
            float[] y = new float[n * outF], h = new float[n * r], dx = new float[n * inF], da = new float[r * inF], db = new float[outF * r];
            var wo = WeightOperand.F32(w, outF, inF);
            LoraMatmul.Forward(x, wo, bias, a, b, 2f, y, h, n, inF, outF, r, options);
            LoraMatmul.Backward(dy, x, h, wo, a, b, 2f, dx, da, db, n, inF, outF, r, options);
            using var gx = acc.Allocate1D(x);
            using var gw = acc.Allocate1D(w);
            using var gbias = acc.Allocate1D(bias);
            using var ga = acc.Allocate1D(a);
            using var gb = acc.Allocate1D(b);
            using var gdy = acc.Allocate1D(dy);
            using var gy = acc.Allocate1D<float>(n * outF);
            using var gh = acc.Allocate1D<float>(n * r);
            using var gdx = acc.Allocate1D<float>(n * inF);
            using var gda = acc.Allocate1D<float>(r * inF);
            using var gdb = acc.Allocate1D<float>(outF * r);
            var gwo = DeviceWeightOperand.Dense(gw.View, outF, inF);
            LoraMatmulKernels.Forward(acc, gx.View, gwo, gbias.View, ga.View, gb.View, 2f, gy.View, gh.View, n, inF, outF, r, options);
            LoraMatmulKernels.Backward(acc, gdy.View, gx.View, gh.View, gwo, ga.View, gb.View, 2f, gdx.View, gda.View, gdb.View, n, inF, outF, r, options);
            string shape = $"n{n} in{inF} out{outF} r{r} p{dropout}";
            Compare(report, "lora forward h", shape, Data.Down(acc, gh.View), h, DotAtol(inF), 1e-5);
            Compare(report, "lora forward y", shape, Data.Down(acc, gy.View), y, DotAtol(inF + r, 3), 1e-5);
            Compare(report, "lora backward dx", shape, Data.Down(acc, gdx.View), dx, DotAtol(outF + r, 2 * r), 1e-5);
            Compare(report, "lora backward da", shape, Data.Down(acc, gda.View), da, DotAtol(n * outF, 2), 1e-4);
            Compare(report, "lora backward db", shape, Data.Down(acc, gdb.View), db, DotAtol(n, 2 * inF), 1e-4);
        }
    }

    private static void Quant4Checks(Accelerator acc, Report report)
    {
        foreach (var (type, blocksize, nested) in new[] { (Quant4Type.Nf4, 64, true), (Quant4Type.Fp4, 128, false) })
        {
            var q = QuantizedWeight.Quantize(Data.Random(1024 * 1000, 7, 2f), [1024, 1000], type, blocksize, nested);
            using var wq = Quant4Buffers.Upload(acc, q);
            using var output = acc.Allocate1D<float>(q.Count);
            Quant4Kernels.Dequantize(acc, wq.View, output.View);
            Compare(report, $"dequantize {type}", $"1024x1000 bs{blocksize} nested={nested}", Data.Down(acc, output.View), q.Dequantize(), 0, 0, "(bit-exact)");
        }

        var w = QuantizedWeight.Quantize(Data.Random(1024 * 4096, 8), [1024, 4096], Quant4Type.Nf4, 64, true);
        using var wbuf = Quant4Buffers.Upload(acc, w);
        foreach (int n in new[] { 1, 3, 4, 64 })
        {
            var x = Data.Random(n * 4096, 9);
            var dy = Data.Random(n * 1024, 10);
            float[] y = new float[n * 1024], dx = new float[n * 4096];
            PeftKernels.Kernels.Cpu.Gemm.Forward(x, WeightOperand.Quant4(w), [], y, n, 4096, 1024);
            PeftKernels.Kernels.Cpu.Gemm.Backward(dy, WeightOperand.Quant4(w), dx, n, 4096, 1024);
            using var gx = acc.Allocate1D(x);
            using var gdy = acc.Allocate1D(dy);
            using var gy = acc.Allocate1D<float>(n * 1024);
            using var gdx = acc.Allocate1D<float>(n * 4096);
            GemmKernels.Forward(acc, gx.View, DeviceWeightOperand.Quant4(wbuf.View), default, gy.View, n, 4096, 1024);
            GemmKernels.Backward(acc, gdy.View, DeviceWeightOperand.Quant4(wbuf.View), gdx.View, n, 4096, 1024);
            Compare(report, n <= Quant4MatmulKernels.GemvMaxRows ? "nf4 gemv forward" : "nf4 gemm forward", $"n{n} in4096 out1024", Data.Down(acc, gy.View), y, DotAtol(4096), 1e-5);
            Compare(report, "nf4 gemm backward dx", $"n{n} in4096 out1024", Data.Down(acc, gdx.View), dx, DotAtol(1024), 1e-5);
        }
    }

    private static void QLora(Accelerator acc, Report report)
    {
        foreach (int n in new[] { 2, 200 })
        {
            var (inF, outF, r) = (768, 1024, 16);
            var q = QuantizedWeight.Quantize(Data.Random(outF * inF, 11), [outF, inF], Quant4Type.Nf4, 64, true);
            var x = Data.Random(n * inF, 12);
            var a = Data.Random(r * inF, 13);
            var b = Data.Random(outF * r, 14);
            var dy = Data.Random(n * outF, 15);
            var options = new LoraOptions(0.05f, 99);
            float[] y = new float[n * outF], h = new float[n * r], dx = new float[n * inF], da = new float[r * inF], db = new float[outF * r];
            LoraMatmul.Forward(x, WeightOperand.Quant4(q), [], a, b, 0.5f, y, h, n, inF, outF, r, options);
            LoraMatmul.Backward(dy, x, h, WeightOperand.Quant4(q), a, b, 0.5f, dx, da, db, n, inF, outF, r, options);
            using var wq = Quant4Buffers.Upload(acc, q);
            using var gx = acc.Allocate1D(x);
            using var ga = acc.Allocate1D(a);
            using var gb = acc.Allocate1D(b);
            using var gdy = acc.Allocate1D(dy);
            using var gy = acc.Allocate1D<float>(n * outF);
            using var gh = acc.Allocate1D<float>(n * r);
            using var gdx = acc.Allocate1D<float>(n * inF);
            using var gda = acc.Allocate1D<float>(r * inF);
            using var gdb = acc.Allocate1D<float>(outF * r);
            var gwq = DeviceWeightOperand.Quant4(wq.View);
            LoraMatmulKernels.Forward(acc, gx.View, gwq, default, ga.View, gb.View, 0.5f, gy.View, gh.View, n, inF, outF, r, options);
            LoraMatmulKernels.Backward(acc, gdy.View, gx.View, gh.View, gwq, ga.View, gb.View, 0.5f, gdx.View, gda.View, gdb.View, n, inF, outF, r, options);
            string shape = $"n{n} in{inF} out{outF} r{r} nf4";
            Compare(report, "qlora forward y", shape, Data.Down(acc, gy.View), y, DotAtol(inF + r, 2), 1e-5);
            Compare(report, "qlora backward dx", shape, Data.Down(acc, gdx.View), dx, DotAtol(outF + r, r), 1e-5);
            Compare(report, "qlora backward da", shape, Data.Down(acc, gda.View), da, DotAtol(n * outF), 1e-4);
            Compare(report, "qlora backward db", shape, Data.Down(acc, gdb.View), db, DotAtol(n, inF), 1e-4);
        }
    }

    private static void Compare(Report report, string kernel, string shape, float[] gpu, float[] cpu, double atol, double rtol, string note = "")
    {
        double maxAbs = 0, maxRel = 0;
        bool pass = gpu.Length == cpu.Length;
        for (int i = 0; i < Math.Min(gpu.Length, cpu.Length); i++)
        {
            double diff = Math.Abs((double)gpu[i] - cpu[i]);
            if (float.IsNaN(gpu[i]) != float.IsNaN(cpu[i]))
            {
                diff = double.PositiveInfinity;
            }
            else if (float.IsNaN(cpu[i]) || gpu[i] == cpu[i])
            {
                diff = 0;
            }

            maxAbs = Math.Max(maxAbs, diff);
            maxRel = Math.Max(maxRel, diff / Math.Max(Math.Abs((double)cpu[i]), 1e-30));
            pass &= diff <= atol + (rtol * Math.Abs(cpu[i]));
        }

        report.Add(new CheckResult(kernel, shape, maxAbs, maxRel, atol, rtol, pass, note));
    }
}
