// RMSNorm at a Llama-125M-ish shape: n = 256 tokens, dim = 768; x, y, dy, dx [n, dim], w, dw [dim],
// rstd [n]. Work of one call (fp32 = 4 bytes; bytes = every operand read once, every result written once):
//   Forward   FLOPs = 4·n·dim (square-add, scale, weight)      Bytes = 4·(2·n·dim + dim + n)
//   Backward  FLOPs = 9·n·dim (dot, dx, dw)                    Bytes = 4·(3·n·dim + 2·dim + n)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>RMSNorm forward and backward (dx and dweight).</summary>
public class RmsNormBench : IWorkload
{
    private const int N = 256, Dim = 768;
    private float[] _x = [], _w = [], _y = [], _rstd = [], _dy = [], _dx = [], _dw = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)N * Dim, seed: 1);
        _w = Workload.Random(Dim, seed: 2);
        _dy = Workload.Random((long)N * Dim, seed: 3);
        _y = new float[N * Dim];
        _dx = new float[N * Dim];
        _rstd = new float[N];
        _dw = new float[Dim];
        Forward();
    }

    [Benchmark]
    public void Forward() => RmsNorm.Forward(_x, _w, 1e-5f, _y, _rstd, N, Dim, new KernelOptions(Threads));

    [Benchmark]
    public void Backward() => RmsNorm.Backward(_dy, _x, _w, _rstd, _dx, _dw, N, Dim, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) =>
        (benchmarkCase.Method() == nameof(Forward) ? 4.0 : 9.0) * N * Dim;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Forward)
        ? 4.0 * ((2.0 * N * Dim) + Dim + N)
        : 4.0 * ((3.0 * N * Dim) + (2.0 * Dim) + N);
}
