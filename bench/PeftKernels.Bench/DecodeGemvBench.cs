// The decode GEMV on one thread at the ~125M Llama's shapes, batch 1, K = 768: N = 768 (q/k/v/o),
// 3072 (gate/up), 32000 (lm_head); an fp32 weight and an NF4 one (double-quantized, blocksize 64).
//   GemmForward   Gemm.Forward with one thread (Quant4Matmul.Forward for NF4): the existing GEMV
//   DecodeRows    DecodeGemv.Rows over all N columns: the same dot code, no fork-join, no allocation
//   FLOPs = 2·N·K.   Bytes = the weight (4·N·K fp32; N·K/2 + 4·N·K/64 NF4) + 4·(K + N)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>DecodeGemv.Rows against the existing one-thread GEMV, fp32 and NF4, K = 768.</summary>
public class DecodeGemvBench : IWorkload
{
    private const int K = 768;
    private float[] _x = [], _y = [];
    private WeightOperand _w;

    /// <summary>Output features.</summary>
    [Params(768, 3072, 32000)]
    public int N { get; set; } = 768;

    /// <summary>The weight's storage: F32 or Q4 (NF4).</summary>
    [Params(WeightFormat.F32, WeightFormat.Q4)]
    public WeightFormat Storage { get; set; } = WeightFormat.F32;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random(K, seed: 1);
        _y = new float[N];
        var w = Workload.Random((long)N * K, seed: 2);
        if (Storage == WeightFormat.Q4)
        {
            var q = QuantizedWeight.Quantize(w, [N, K]);
            q.AbsmaxFp32();
            _w = WeightOperand.Quant4(q);
        }
        else
        {
            _w = WeightOperand.F32(w, N, K);
        }
    }

    [Benchmark(Baseline = true)]
    public void GemmForward() => Gemm.Forward(_x, _w, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(1));

    [Benchmark]
    public void DecodeRows() => DecodeGemv.Rows(_x, _w, _y, 1, K, N, 0, N, SimdPath.Auto);

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * benchmarkCase.Param<int>(nameof(N)) * K;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        double n = benchmarkCase.Param<int>(nameof(N));
        double weight = benchmarkCase.Param<WeightFormat>(nameof(Storage)) == WeightFormat.Q4 ? (n * K / 2) + (4.0 * n * K / 64) : 4.0 * n * K;
        return weight + (4.0 * (K + n));
    }
}
