// LoRA linear vs the plain base linear of the same shape, in one run, so BenchmarkDotNet's Ratio
// column is the LoRA overhead. Shape n×in×out×r: x [n, in], W [out, in], A [r, in], B [out, r],
// h [n, r], y and dy [n, out]; no bias, no dropout, scale 2. Formulas (see Shapes.cs):
//   BaseGemm  y = x·Wᵀ                 FLOPs = 2·n·in·out
//                                      Bytes = 4·(n·in + out·in + n·out)
//   Forward   y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ   FLOPs = 2·n·in·out + 2·n·r·(in + out)
//             and h = x·Aᵀ             Bytes = 4·(n·in + out·in + n·out + r·in + out·r + n·r)
//   Backward  dx, dA, dB               FLOPs = 2·n·in·out + 2·n·r·(2·in + 2·out)
//             (dh = s·dy·B, dB = s·dyᵀ·h, dA = dhᵀ·x, dx = dy·W + dh·A)
//                                      Bytes = 4·(n·out + n·in + n·r + out·in + r·in + out·r
//                                                 + n·in + r·in + out·r)
// Bytes are the minimum traffic (every operand read once, every result written once) and, unlike
// a plain GEMM, include the adapter matrices A, B and the kept activation h. Data: uniform
// [-1, 1) from fixed seeds, allocated in [GlobalSetup]; h comes from one Forward there.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>LoRA forward and backward against the base x·Wᵀ (the baseline) at the design doc's shapes.</summary>
public class LoraMatmulBench : IWorkload
{
    private const float Scale = 2f;
    private float[] _x = [], _w = [], _a = [], _b = [], _y = [], _h = [], _dy = [], _dx = [], _da = [], _db = [];
    private int _n, _in, _out, _r;
    private LoraOptions _options;

    public static IEnumerable<LoraShape> Shapes =>
        [new(1, 4096, 4096, 16), new(512, 4096, 4096, 16), new(2048, 4096, 4096, 16), new(512, 4096, 4096, 64)];

    [ParamsSource(nameof(Shapes), Priority = -1)]
    public LoraShape Shape { get; set; } = new(1, 4096, 4096, 16);

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        (_n, _in, _out, _r) = Shape;
        _options = new LoraOptions(Kernel: new KernelOptions(Threads));
        _x = Workload.Random((long)_n * _in, seed: 1);
        _w = Workload.Random((long)_out * _in, seed: 2);
        _a = Workload.Random((long)_r * _in, seed: 3);
        _b = Workload.Random((long)_out * _r, seed: 4);
        _dy = Workload.Random((long)_n * _out, seed: 5);
        _y = new float[(long)_n * _out];
        _h = new float[(long)_n * _r];
        _dx = new float[(long)_n * _in];
        _da = new float[(long)_r * _in];
        _db = new float[(long)_out * _r];
        Forward();
    }

    [Benchmark(Baseline = true)]
    public void BaseGemm() => Gemm.Multiply(false, true, _n, _out, _in, 1f, _x, _w, 0f, _y, _options.Kernel);

    [Benchmark]
    public void Forward() =>
        LoraMatmul.Forward(_x, WeightOperand.F32(_w, _out, _in), ReadOnlySpan<float>.Empty, _a, _b, Scale, _y, _h, _n, _in, _out, _r, in _options);

    [Benchmark]
    public void Backward() =>
        LoraMatmul.Backward(_dy, _x, _h, WeightOperand.F32(_w, _out, _in), _a, _b, Scale, _dx, _da, _db, _n, _in, _out, _r, in _options);

    public double Flops(BenchmarkCase benchmarkCase)
    {
        var shape = benchmarkCase.Param<LoraShape>(nameof(Shape));
        return benchmarkCase.Method() switch
        {
            nameof(Forward) => shape.ForwardFlops,
            nameof(Backward) => shape.BackwardFlops,
            _ => shape.BaseFlops,
        };
    }

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var shape = benchmarkCase.Param<LoraShape>(nameof(Shape));
        return benchmarkCase.Method() switch
        {
            nameof(Forward) => shape.ForwardBytes,
            nameof(Backward) => shape.BackwardBytes,
            _ => shape.BaseBytes,
        };
    }
}
