// The engine's batched decode product on one thread, K = 768 (a ~125M Llama's hidden size): M decode
// rows (one per running sequence) against a weight [N, 768], fp32 or NF4 (blocksize 64, fp32 absmax).
//   GemmForward   Gemm.Forward: the packed GEMM, which transposes the weight into micro-panels per call
//   BatchGemv     BatchGemv.Forward: x and W read in place by a 4×4 inner-product tile, no packing
//   FLOPs = 2·M·N·K.   Bytes = the weight once + x + y (fp32).
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>BatchGemv against the packed GEMM for 16 and 64 decode rows, fp32 and NF4, K = 768.</summary>
public class BatchGemvBench : IWorkload
{
    private const int K = 768;
    private float[] _x = [], _y = [];
    private WeightOperand _w;

    /// <summary>Rows (running sequences).</summary>
    [Params(16, 64)]
    public int M { get; set; } = 64;

    /// <summary>Output features.</summary>
    [Params(768, 2048)]
    public int N { get; set; } = 768;

    /// <summary>The weight's storage: F32 or Q4 (NF4).</summary>
    [Params(WeightFormat.F32, WeightFormat.Q4)]
    public WeightFormat Storage { get; set; } = WeightFormat.F32;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)M * K, seed: 1);
        _y = new float[M * N];
        var w = Workload.Random((long)N * K, seed: 2);
        _w = Storage == WeightFormat.Q4 ? WeightOperand.Quant4(QuantizedWeight.Quantize(w, [N, K], Quant4Type.Nf4, 64, doubleQuant: false)) : WeightOperand.F32(w, N, K);
    }

    [Benchmark(Baseline = true)]
    public void GemmForward() => Gemm.Forward(_x, _w, ReadOnlySpan<float>.Empty, _y, M, K, N, new KernelOptions(1));

    [Benchmark]
    public void BatchGemv() => Kernels.Cpu.BatchGemv.Forward(_x, _w, _y, M, K, N, new KernelOptions(1));

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * benchmarkCase.Param<int>(nameof(M)) * benchmarkCase.Param<int>(nameof(N)) * K;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        double m = benchmarkCase.Param<int>(nameof(M)), n = benchmarkCase.Param<int>(nameof(N));
        double weight = benchmarkCase.Param<WeightFormat>(nameof(Storage)) == WeightFormat.Q4 ? (n * K / 2) + (4.0 * n * K / 64) : 4.0 * n * K;
        return weight + (4.0 * m * (K + n));
    }
}
