// The decode GEMV on one thread over weights that come from DRAM, as in a real decode step (a ~125M
// Llama reads 85 distinct matrices per token, far more than the caches hold). Copies distinct
// weights of one shape, about 64 MB in all (twice the 32 MB L3 of the machines this project runs on),
// and one invocation runs DecodeGemv.Rows (batch 1, all columns) over every copy once, so each weight
// is cold when it is read.
//   DecodeRows   DecodeGemv.Rows over every copy: the 4-bit (NF4, blocksize 64, fp32 absmax) or fp32 GEMV
//   PlainRead    the same bytes summed as floats by TensorPrimitives.Sum: the machine's streaming rate
//                from one thread, the ceiling for the GEMV
//   Bytes = the weights' bytes (codes + absmax, or fp32), the same for both methods; GB/s compares them.
// Shapes: [768, 768] (q, k, v, o), [2048, 768] (gate, up), [768, 2048] (down), [32000, 768] (lm_head).
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>DecodeGemv.Rows over ~64 MB of distinct weights (cold) against a plain read of the same bytes.</summary>
public class DecodeGemvColdBench : IWorkload
{
    private const long TargetBytes = 64L << 20;
    private readonly List<WeightOperand> _weights = [];
    private readonly List<float[]> _asFloats = [];
    private float[] _x = [], _y = [];

    /// <summary>The weight's shape, "out x in".</summary>
    [Params("768x768", "2048x768", "768x2048", "32000x768")]
    public string Shape { get; set; } = "768x768";

    /// <summary>The weight's storage: Q4 (NF4) or F32.</summary>
    [Params(WeightFormat.Q4, WeightFormat.F32)]
    public WeightFormat Storage { get; set; } = WeightFormat.Q4;

    private (int Out, int In) Dims => Parse(Shape);

    [GlobalSetup]
    public void Setup()
    {
        var (n, k) = Dims;
        long each = WeightBytes(n, k, Storage);
        int copies = (int)Math.Max(1, TargetBytes / each);
        _x = Workload.Random(k, seed: 1);
        _y = new float[n];
        for (int c = 0; c < copies; c++)
        {
            var w = Workload.Random((long)n * k, seed: 2 + c);
            if (Storage == WeightFormat.Q4)
            {
                var q = QuantizedWeight.Quantize(w, [n, k], Quant4Type.Nf4, 64, doubleQuant: false);
                _weights.Add(WeightOperand.Quant4(q));
                _asFloats.Add(MemoryMarshal.Cast<byte, float>(q.Packed).ToArray());
                _asFloats.Add(q.AbsmaxFp32());
            }
            else
            {
                _weights.Add(WeightOperand.F32(w, n, k));
                _asFloats.Add(w);
            }
        }
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
    public void DecodeRows()
    {
        var (n, k) = Dims;
        foreach (var w in _weights)
        {
            DecodeGemv.Rows(_x, w, _y, 1, k, n, 0, n, SimdPath.Auto);
        }
    }

    public double Flops(BenchmarkCase benchmarkCase) => 0;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var (n, k) = Parse(benchmarkCase.Param<string>(nameof(Shape)));
        var storage = benchmarkCase.Param<WeightFormat>(nameof(Storage));
        long each = WeightBytes(n, k, storage);
        return (double)Math.Max(1, TargetBytes / each) * each;
    }

    private static (int Out, int In) Parse(string shape)
    {
        var parts = shape.Split('x');
        return (int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>Bytes of one weight: fp32, or 4-bit codes plus one fp32 absmax per 64.</summary>
    private static long WeightBytes(int n, int k, WeightFormat storage) =>
        storage == WeightFormat.Q4 ? ((long)n * k / 2) + (4L * n * k / 64) : 4L * n * k;
}
