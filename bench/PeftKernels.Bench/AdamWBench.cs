// AdamW over 4M parameters (count = 4·2²⁰): param, grad, m, v [count]. Work of one call (fp32 = 4 bytes):
//   Step          FLOPs = 14·count (decay, moments, sqrt, divides, update)   Bytes = 4·7·count (p, g, m, v read; p, m, v written)
//   SumOfSquares  FLOPs = 2·count                                            Bytes = 4·count
//   Scale         FLOPs = count                                              Bytes = 4·2·count
// The step number is fixed at 10 and the same gradient is applied each call: the work does not depend on the values.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>Fused AdamW step and the gradient-clipping helpers.</summary>
public class AdamWBench : IWorkload
{
    private const int Count = 4 << 20;
    private float[] _p = [], _g = [], _m = [], _v = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _p = Workload.Random(Count, seed: 1);
        _g = Workload.Random(Count, seed: 2);
        _m = new float[Count];
        _v = new float[Count];
    }

    [Benchmark]
    public void Step() => AdamW.Step(_p, _g, _m, _v, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 10, new KernelOptions(Threads));

    [Benchmark]
    public double SumOfSquares() => AdamW.SumOfSquares(_g, new KernelOptions(Threads));

    [Benchmark]
    public void Scale() => AdamW.Scale(_g, 1f, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Method() switch
    {
        nameof(Step) => 14.0 * Count,
        nameof(SumOfSquares) => 2.0 * Count,
        _ => Count,
    };

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() switch
    {
        nameof(Step) => 4.0 * 7 * Count,
        nameof(SumOfSquares) => 4.0 * Count,
        _ => 4.0 * 2 * Count,
    };
}
