// GEMM of a linear layer, y = x·Wᵀ: Shape M×N×K means x [M, K] (M tokens), W [N, K] (out, in),
// y [M, N], i.e. Gemm.Multiply(false, true, M, N, K, 1, x, W, 0, y).
//   FLOPs = 2·M·N·K
//   Bytes = 4·(M·K + K·N + M·N)         fp32 W: minimum traffic, x and W read once, y written once
//   Bytes = 4·M·K + 2·K·N + 4·M·N       bf16 W (Bf16GemmBench): the weight is half the bytes
// Inputs are uniform in [-1, 1) from fixed seeds, allocated in [GlobalSetup].
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>fp32 x·Wᵀ at the design doc's shapes, 1 and 2 threads.</summary>
public class GemmBench : IWorkload
{
    private float[] _x = [], _w = [], _y = [];

    public static IEnumerable<GemmShape> Shapes =>
        [new(1024, 1024, 1024), new(512, 4096, 4096), new(2048, 4096, 4096)];

    [ParamsSource(nameof(Shapes), Priority = -1)]
    public GemmShape Shape { get; set; } = new(1024, 1024, 1024);

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)Shape.M * Shape.K, seed: 1);
        _w = Workload.Random((long)Shape.N * Shape.K, seed: 2);
        _y = new float[(long)Shape.M * Shape.N];
    }

    [Benchmark]
    public void Fp32() =>
        Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Param<GemmShape>(nameof(Shape)).Flops;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Param<GemmShape>(nameof(Shape)).Bytes(weightBytes: 4);
}

/// <summary>bf16 vs fp32 weight at one shape; Ratio shows what halving the weight's bytes buys.</summary>
public class Bf16GemmBench : IWorkload
{
    private float[] _x = [], _w = [], _y = [];
    private ushort[] _wBf16 = [];

    public static IEnumerable<GemmShape> Shapes => [new(512, 4096, 4096)];

    [ParamsSource(nameof(Shapes), Priority = -1)]
    public GemmShape Shape { get; set; } = new(512, 4096, 4096);

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)Shape.M * Shape.K, seed: 1);
        _w = Workload.Random((long)Shape.N * Shape.K, seed: 2);
        _wBf16 = new ushort[_w.Length];
        Bf16.FromSingle(_w, _wBf16);
        _y = new float[(long)Shape.M * Shape.N];
    }

    [Benchmark(Baseline = true)]
    public void Fp32() =>
        Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads));

    [Benchmark]
    public void Bf16Weight() =>
        Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, (ReadOnlySpan<ushort>)_wBf16, 0f, _y, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Param<GemmShape>(nameof(Shape)).Flops;

    public double Bytes(BenchmarkCase benchmarkCase) =>
        benchmarkCase.Param<GemmShape>(nameof(Shape)).Bytes(weightBytes: benchmarkCase.Method() == nameof(Bf16Weight) ? 2 : 4);
}

/// <summary>
/// How much of a second core the machine gives: one GEMM on 1 thread (baseline), two
/// independent single-thread GEMMs at once on two threads (no shared data or
/// synchronisation: the ceiling any 2-thread split can reach on this machine), and one GEMM
/// on 2 threads. FLOPs of TwoIndependent count both problems.
/// </summary>
public class GemmScalingBench : IWorkload
{
    private static readonly GemmShape Shape = new(2048, 4096, 4096);
    private float[] _x = [], _w = [], _y = [], _x2 = [], _w2 = [], _y2 = [];

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)Shape.M * Shape.K, seed: 1);
        _w = Workload.Random((long)Shape.N * Shape.K, seed: 2);
        _y = new float[(long)Shape.M * Shape.N];
        _x2 = Workload.Random((long)Shape.M * Shape.K, seed: 3);
        _w2 = Workload.Random((long)Shape.N * Shape.K, seed: 4);
        _y2 = new float[(long)Shape.M * Shape.N];
    }

    [Benchmark(Baseline = true)]
    public void OneThread() => Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(1));

    [Benchmark]
    public void TwoIndependent()
    {
        var other = new Thread(() => Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x2, _w2, 0f, _y2, new KernelOptions(1)));
        other.Start();
        OneThread();
        other.Join();
    }

    [Benchmark]
    public void TwoThreads() => Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(2));

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(TwoIndependent) ? 2 * Shape.Flops : Shape.Flops;

    public double Bytes(BenchmarkCase benchmarkCase) =>
        (benchmarkCase.Method() == nameof(TwoIndependent) ? 2 : 1) * Shape.Bytes(weightBytes: 4);
}
