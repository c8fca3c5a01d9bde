// bf16 compute (KernelOptions.Compute = Bf16: operands rounded to bf16 while packing, fp32 sums,
// native vdpbf16ps / AMX micro-kernel where the CPU has it) against fp32 compute, x·Wᵀ at
// 2048×4096×4096 (the shape) and 512×4096×4096, and the bf16 peak probe in the same table:
//   FLOPs = 2·M·N·K (GEMM);  Bf16Peak: MachineProbe.Bf16PeakGflops' own count, reported as its result
//   Bytes = 4·(M·K + K·N + M·N) (fp32 storage of every operand)
// A GEMM's share of the bf16 peak = its GFLOP/s / the Bf16Peak row's GFLOP/s at the same threads.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>bf16 vs fp32 compute of x·Wᵀ, 1 and 2 threads.</summary>
public class Bf16ComputeBench : IWorkload
{
    private float[] _x = [], _w = [], _y = [];

    public static IEnumerable<GemmShape> Shapes => [new(512, 4096, 4096), new(2048, 4096, 4096)];

    [ParamsSource(nameof(Shapes), Priority = -1)]
    public GemmShape Shape { get; set; } = new(2048, 4096, 4096);

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)Shape.M * Shape.K, seed: 1);
        _w = Workload.Random((long)Shape.N * Shape.K, seed: 2);
        _y = new float[(long)Shape.M * Shape.N];
    }

    [Benchmark(Baseline = true)]
    public void Fp32() =>
        Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads));

    [Benchmark]
    public void Bf16() =>
        Gemm.Multiply(false, true, Shape.M, Shape.N, Shape.K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads) { Compute = ComputePrecision.Bf16 });

    /// <summary>The bf16 peak (GFLOP/s) at these threads, as the benchmark's result.</summary>
    [Benchmark]
    public double Bf16Peak() => MachineProbe.Bf16PeakGflops(Threads, 10_000_000, repeats: 1).Gflops;

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Bf16Peak) ? 0 : benchmarkCase.Param<GemmShape>(nameof(Shape)).Flops;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Bf16Peak) ? 0 : benchmarkCase.Param<GemmShape>(nameof(Shape)).Bytes(weightBytes: 4);
}
