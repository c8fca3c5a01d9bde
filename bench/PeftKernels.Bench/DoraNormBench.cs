// DoRA row norms ‖W + s·B·A‖₂ at a Llama-7B projection: W [4096, 4096], r = 16, as fp32, bf16,
// fp16 and NF4 (blocksize 64, double-quantized). Work of one call:
//   FLOPs = 2·out·in·r (the B·A update, one FMA per element and rank) + 2·out·in (squares)
//   Bytes = weight (4, 2, 2 or ½ byte per element; NF4 adds 4·out·in/64 of fp32 absmax it reads)
//           + 4·(r·in + out·r) (A and B) + 4·out (norms)
// The op runs once per step (the norm is a constant in backward), so it is FMA bound at r = 16.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>DoRA weight row norms over fp32, bf16, fp16 and NF4 base weights.</summary>
public class DoraNormBench : IWorkload
{
    private const int In = 4096, Out = 4096, R = 16;
    private const float Scale = 2f;
    private float[] _w = [], _a = [], _b = [], _norms = [];
    private ushort[] _w16 = [];
    private Half[] _wHalf = [];
    private QuantizedWeight _wq = null!;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _w = Workload.Random((long)Out * In, seed: 1);
        _a = Workload.Random((long)R * In, seed: 2);
        _b = Workload.Random((long)Out * R, seed: 3);
        _w16 = new ushort[_w.Length];
        Bf16.FromSingle(_w, _w16);
        _wHalf = [.. _w.Select(v => (Half)v)];
        _wq = QuantizedWeight.Quantize(_w, [Out, In]);
        _wq.AbsmaxFp32();
        _norms = new float[Out];
    }

    [Benchmark(Baseline = true)]
    public void Fp32() => DoraNorm.RowNorms(WeightOperand.F32(_w, Out, In), _a, _b, Scale, _norms, In, Out, R, new KernelOptions(Threads));

    [Benchmark]
    public void Bf16Weight() => DoraNorm.RowNorms(WeightOperand.Bf16(_w16, Out, In), _a, _b, Scale, _norms, In, Out, R, new KernelOptions(Threads));

    [Benchmark]
    public void Fp16Weight() => DoraNorm.RowNorms(WeightOperand.F16(_wHalf, Out, In), _a, _b, Scale, _norms, In, Out, R, new KernelOptions(Threads));

    [Benchmark]
    public void Nf4Weight() => DoraNorm.RowNorms(WeightOperand.Quant4(_wq), _a, _b, Scale, _norms, In, Out, R, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * Out * In * (R + 1);

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        double elements = (double)Out * In;
        double weight = benchmarkCase.Method() switch
        {
            nameof(Bf16Weight) or nameof(Fp16Weight) => 2 * elements,
            nameof(Nf4Weight) => (elements / 2) + (4 * elements / 64),
            _ => 4 * elements,
        };
        return weight + (4.0 * ((R * In) + (Out * R) + Out));
    }
}
