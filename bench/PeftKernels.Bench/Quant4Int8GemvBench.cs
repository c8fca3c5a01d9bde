// Integer 4-bit decode GEMV (Quant4Int8Gemv: int8 activations, int8 code table, integer dot
// products) against the exact fp32 NF4 GEMV (Quant4Matmul) of the same shape, batch 1, K = 768
// (the ~125M Llama's hidden size): N = 768 (q/k/v/o), 2048 (gate/up), 32000 (lm_head).
// NF4 with double-quantized scales, blocksize 64, as the model loader writes it.
//   FLOPs = 2·N·K. Bytes = N·K/2 + 4·N·K/64 (the codes and the fp32 absmax both kernels read)
//   + 4·(K + N) (x and y), so the GB/s column reads as weight bandwidth.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>Integer vs exact fp32 NF4 GEMV (decode, one row) at K = 768.</summary>
public class Quant4Int8GemvBench : IWorkload
{
    private const int K = 768;
    private float[] _x = [], _y = [];
    private QuantizedWeight _wq = null!;

    /// <summary>Output features.</summary>
    [Params(768, 2048, 32000)]
    public int N { get; set; } = 768;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random(K, seed: 1);
        _y = new float[N];
        _wq = QuantizedWeight.Quantize(Workload.Random((long)N * K, seed: 2), [N, K]);
        _wq.AbsmaxFp32();
    }

    [Benchmark(Baseline = true)]
    public void Nf4Fp32Gemv() => Quant4Matmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(Threads));

    [Benchmark]
    public void Nf4Int8Gemv() => Quant4Int8Gemv.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * benchmarkCase.Param<int>(nameof(N)) * K;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        double n = benchmarkCase.Param<int>(nameof(N));
        return (n * K / 2) + (4.0 * n * K / 64) + (4.0 * (K + n));
    }
}
