// SwiGLU at a Llama-125M-ish MLP: n = 256 tokens × intermediate 2048 = 524 288 elements (count).
// Work of one call (fp32 = 4 bytes; exp is not counted in FLOPs):
//   Forward   FLOPs = 5·count (negate, add, divide, two multiplies)      Bytes = 4·3·count (gate, up read; y written)
//   Backward  FLOPs = 11·count                                           Bytes = 4·5·count (dy, gate, up read; dgate, dup written)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>SwiGLU forward and backward.</summary>
public class SwiGluBench : IWorkload
{
    private const int Count = 256 * 2048;
    private float[] _gate = [], _up = [], _y = [], _dy = [], _dgate = [], _dup = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _gate = Workload.Random(Count, seed: 1);
        _up = Workload.Random(Count, seed: 2);
        _dy = Workload.Random(Count, seed: 3);
        _y = new float[Count];
        _dgate = new float[Count];
        _dup = new float[Count];
    }

    [Benchmark]
    public void Forward() => SwiGlu.Forward(_gate, _up, _y, new KernelOptions(Threads));

    [Benchmark]
    public void Backward() => SwiGlu.Backward(_dy, _gate, _up, _dgate, _dup, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => (benchmarkCase.Method() == nameof(Forward) ? 5.0 : 11.0) * Count;

    public double Bytes(BenchmarkCase benchmarkCase) => 4.0 * (benchmarkCase.Method() == nameof(Forward) ? 3.0 : 5.0) * Count;
}
