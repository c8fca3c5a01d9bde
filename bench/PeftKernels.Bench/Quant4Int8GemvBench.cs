// Integer 4-bit decode GEMV (Quant4Int8Gemv: int8 activations, int8 code table, integer dot
// products) against the exact fp32 NF4 GEMV (Quant4Matmul) of the same shape, batch 1, one weight
// that stays in the caches (warm; Quant4Int8GemvColdBench streams them from DRAM):
//   Nf4Fp32Gemv     the exact fp32 path (baseline)
//   Nf4Int8Gemv     the integer path, managed rows forced (Int8Kernel.Managed)
//   Nf4Int8Native   the integer path with Int8Kernel.Auto: the native AVX512-VNNI rows
//                   (native/q4_int8_kernels.c) where the CPU and the library have them, else managed
//                   (Setup prints which)
// Shapes "out x in" of the ~125M Llama: [768, 768] (q/k/v/o), [2048, 768] (gate/up), [768, 2048]
// (down), [32000, 768] (lm_head). NF4, blocksize 64, as the model loader writes it.
//   FLOPs = 2·N·K. Bytes = N·K/2 + 4·N·K/64 (the codes and the fp32 absmax both kernels read)
//   + 4·(K + N) (x and y), so the GB/s column reads as weight bandwidth.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;
using PeftKernels.Kernels.Native;

namespace PeftKernels.Bench;

/// <summary>Integer (managed and native) vs exact fp32 NF4 GEMV (decode, one row), warm weights.</summary>
public class Quant4Int8GemvBench : IWorkload
{
    private float[] _x = [], _y = [];
    private QuantizedWeight _wq = null!;

    /// <summary>The weight's shape, "out x in".</summary>
    [Params("768x768", "2048x768", "768x2048", "32000x768")]
    public string Shape { get; set; } = "768x768";

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    private (int N, int K) Dims => Parse(Shape);

    [GlobalSetup]
    public void Setup()
    {
        var (n, k) = Dims;
        _x = Workload.Random(k, seed: 1);
        _y = new float[n];
        _wq = QuantizedWeight.Quantize(Workload.Random((long)n * k, seed: 2), [n, k]);
        _wq.AbsmaxFp32();
        Console.WriteLine($"// Native AVX512-VNNI integer GEMV rows: {NativeQ4Int8.Status}");
    }

    [Benchmark(Baseline = true)]
    public void Nf4Fp32Gemv()
    {
        var (n, k) = Dims;
        Quant4Matmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, k, n, new KernelOptions(Threads));
    }

    [Benchmark]
    public void Nf4Int8Gemv()
    {
        var (n, k) = Dims;
        Quant4Int8Gemv.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, k, n, new KernelOptions(Threads) { Int8Kernel = Int8Kernel.Managed });
    }

    [Benchmark]
    public void Nf4Int8Native()
    {
        var (n, k) = Dims;
        Quant4Int8Gemv.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, k, n, new KernelOptions(Threads) { Int8Kernel = Int8Kernel.Auto });
    }

    public double Flops(BenchmarkCase benchmarkCase)
    {
        var (n, k) = Parse(benchmarkCase.Param<string>(nameof(Shape)));
        return 2.0 * n * k;
    }

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var (n, k) = Parse(benchmarkCase.Param<string>(nameof(Shape)));
        return ((double)n * k / 2) + (4.0 * n * k / 64) + (4.0 * (k + n));
    }

    internal static (int Out, int In) Parse(string shape)
    {
        var parts = shape.Split('x');
        return (int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
    }
}
