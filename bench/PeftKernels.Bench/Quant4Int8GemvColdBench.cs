// The integer 4-bit decode GEMV on one thread over weights that come from DRAM, as in a real decode
// step (a ~125M Llama reads 85 distinct matrices per token). Like DecodeGemvColdBench: distinct NF4
// weights of one shape (blocksize 64, fp32 absmax), about 64 MB in all (twice a 32 MB L3); one
// invocation quantizes x once (QuantizeActivations, Vector512 layout where supported) and runs
// Quant4Int8Gemv.Rows (batch 1, all columns) over every copy once, so each weight is cold.
//   PlainRead     the same bytes summed as floats (TensorPrimitives.Sum): the one-thread streaming ceiling
//   Int8Managed   Rows with the managed SIMD rows (Int8Kernel.Managed)
//   Int8Native    Rows with Int8Kernel.Auto: the native AVX512-VNNI rows where available, else managed
//   Bytes = the weights' bytes (codes + absmax), the same for all three; GB/s compares them.
// Shapes: [768, 768] (q, k, v, o), [2048, 768] (gate, up), [768, 2048] (down), [32000, 768] (lm_head).
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>Quant4Int8Gemv.Rows (managed and native) over ~64 MB of distinct NF4 weights against a plain read.</summary>
public class Quant4Int8GemvColdBench : IWorkload
{
    private const long TargetBytes = 64L << 20;
    private readonly List<QuantizedWeight> _weights = [];
    private readonly List<float[]> _asFloats = [];
    private float[] _x = [], _y = [], _scales = [];
    private sbyte[] _qx = [];

    /// <summary>The weight's shape, "out x in".</summary>
    [Params("768x768", "2048x768", "768x2048", "32000x768")]
    public string Shape { get; set; } = "768x768";

    [GlobalSetup]
    public void Setup()
    {
        var (n, k) = Quant4Int8GemvBench.Parse(Shape);
        long each = WeightBytes(n, k);
        int copies = (int)Math.Max(1, TargetBytes / each);
        _x = Workload.Random(k, seed: 1);
        _y = new float[n];
        _qx = new sbyte[k];
        _scales = new float[Quant4Int8Gemv.ScaleLength(1, k, SimdPath.Auto)];
        for (int c = 0; c < copies; c++)
        {
            var q = QuantizedWeight.Quantize(Workload.Random((long)n * k, seed: 2 + c), [n, k], Quant4Type.Nf4, 64, doubleQuant: false);
            _weights.Add(q);
            _asFloats.Add(MemoryMarshal.Cast<byte, float>(q.Packed).ToArray());
            _asFloats.Add(q.AbsmaxFp32());
        }

        Console.WriteLine($"// Native AVX512-VNNI integer GEMV rows: {PeftKernels.Kernels.Native.NativeQ4Int8.Status}");
    }

    [Benchmark(Baseline = true)]
    public float PlainRead()
    {
        float total = 0;
        foreach (var data in _asFloats)
        {
            total += TensorPrimitives.Sum<float>(data);
        }

        return total;
    }

    [Benchmark]
    public void Int8Managed() => Rows(Int8Kernel.Managed);

    [Benchmark]
    public void Int8Native() => Rows(Int8Kernel.Auto);

    private void Rows(Int8Kernel kernel)
    {
        var (n, k) = Quant4Int8GemvBench.Parse(Shape);
        Quant4Int8Gemv.QuantizeActivations(_x, 1, k, _qx, _scales, SimdPath.Auto);
        foreach (var w in _weights)
        {
            Quant4Int8Gemv.Rows(_qx, _scales, w, _y, 1, k, n, 0, n, SimdPath.Auto, kernel);
        }
    }

    public double Flops(BenchmarkCase benchmarkCase) => 0;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var (n, k) = Quant4Int8GemvBench.Parse(benchmarkCase.Param<string>(nameof(Shape)));
        long each = WeightBytes(n, k);
        return (double)Math.Max(1, TargetBytes / each) * each;
    }

    /// <summary>Bytes of one weight: 4-bit codes plus one fp32 absmax per 64.</summary>
    private static long WeightBytes(int n, int k) => ((long)n * k / 2) + (4L * n * k / 64);
}
