// IA³ column scaling at a Llama-7B-ish activation: n = 2048 tokens, features = 4096; x, y, dy,
// dx [n, features], l, dl [features]. Work of one call (fp32 = 4 bytes; bytes = every operand
// read once, every result written once):
//   ScaleColumns          y = x ⊙ l                FLOPs = n·f        Bytes = 4·(2·n·f + f)
//   ScaleColumnsBackward  dx = dy ⊙ l, dl = Σ dy⊙x  FLOPs = 3·n·f      Bytes = 4·(3·n·f + 2·f)
// Both are memory bound: read the GB/s column against the machine's read bandwidth.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>IA³ scaling forward and backward (dx and dl).</summary>
public class Ia3Bench : IWorkload
{
    private const int N = 2048, Features = 4096;
    private float[] _x = [], _l = [], _y = [], _dy = [], _dx = [], _dl = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)N * Features, seed: 1);
        _l = Workload.Random(Features, seed: 2);
        _dy = Workload.Random((long)N * Features, seed: 3);
        _y = new float[N * Features];
        _dx = new float[N * Features];
        _dl = new float[Features];
    }

    [Benchmark]
    public void ScaleColumns() => Ia3.ScaleColumns(_x, _l, _y, N, Features, new KernelOptions(Threads));

    [Benchmark]
    public void ScaleColumnsBackward() => Ia3.ScaleColumnsBackward(_dy, _x, _l, _dx, _dl, N, Features, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) =>
        (benchmarkCase.Method() == nameof(ScaleColumns) ? 1.0 : 3.0) * N * Features;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(ScaleColumns)
        ? 4.0 * ((2.0 * N * Features) + Features)
        : 4.0 * ((3.0 * N * Features) + (2.0 * Features));
}
