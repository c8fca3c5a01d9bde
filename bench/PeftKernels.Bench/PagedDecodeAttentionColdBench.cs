// Decode attention over a KV cache that comes from DRAM, as in a real decode step (the weights streamed
// since the previous step have evicted the cache): one query row, 12 heads of 64 (a ~125M Llama), blocks
// of 16 positions scattered over the pool, and enough distinct layers' pools (about 64 MB in all, twice
// the machine's L3) that each is cold when read. One invocation runs PagedDecodeAttention.Row over every
// layer once, one thread.
//   PlainRead              the same key and value bytes summed by TensorPrimitives.Sum: the streaming ceiling
//   PagedDecodeAttention   PagedDecodeAttention.Row over every layer
//   Bytes = 2·4·length·kvDim per layer (K and V read once); FLOPs = 4·heads·length·headDim per layer.
using System.Numerics.Tensors;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;

namespace PeftKernels.Bench;

/// <summary>PagedDecodeAttention.Row over ~64 MB of distinct layers' caches (cold) against a plain read of them.</summary>
public class PagedDecodeAttentionColdBench : IWorkload
{
    private const int Heads = 12, HeadDim = 64, BlockSize = 16;
    private const float Scale = 0.125f;
    private const long TargetBytes = 64L << 20;
    private readonly List<(float[] Keys, float[] Values, int[] Table)> _layers = [];
    private float[] _q = [], _o = [];

    /// <summary>Cached positions attended.</summary>
    [Params(88, 208)]
    public int Length { get; set; } = 88;

    [GlobalSetup]
    public void Setup()
    {
        int kvDim = Heads * HeadDim, blocks = (Length + BlockSize - 1) / BlockSize, poolBlocks = 2 * blocks;
        var rng = new Random(1);
        for (int l = 0; l < Layers(Length); l++)
        {
            var table = Enumerable.Range(0, poolBlocks).OrderBy(_ => rng.Next()).Take(blocks).ToArray();
            _layers.Add((Workload.Random((long)poolBlocks * BlockSize * kvDim, seed: (2 * l) + 2),
                Workload.Random((long)poolBlocks * BlockSize * kvDim, seed: (2 * l) + 3), table));
        }

        _q = Workload.Random(Heads * HeadDim, seed: 1);
        _o = new float[Heads * HeadDim];
    }

    [Benchmark(Baseline = true)]
    public float PlainRead()
    {
        float total = 0;
        foreach (var (keys, values, _) in _layers)
        {
            total += TensorPrimitives.Sum<float>(keys) + TensorPrimitives.Sum<float>(values);
        }

        return total;
    }

    [Benchmark]
    public void PagedDecodeAttention()
    {
        foreach (var (keys, values, table) in _layers)
        {
            Kernels.Cpu.PagedDecodeAttention.Row(_q, keys, values, table, BlockSize, Length, Heads, Heads, HeadDim, 0, Heads, Scale, _o, SimdPath.Auto);
        }
    }

    public double Flops(BenchmarkCase benchmarkCase)
    {
        int length = benchmarkCase.Param<int>(nameof(Length));
        return benchmarkCase.Method() == nameof(PlainRead) ? 0 : 4.0 * Heads * length * HeadDim * Layers(length);
    }

    /// <summary>The bytes the attention reads (PlainRead reads the pools whole: twice that, as half of each pool is unused blocks).</summary>
    public double Bytes(BenchmarkCase benchmarkCase)
    {
        int length = benchmarkCase.Param<int>(nameof(Length));
        return 2.0 * 4 * length * Heads * HeadDim * Layers(length) * (benchmarkCase.Method() == nameof(PlainRead) ? 2 : 1);
    }

    private static int Layers(int length) => (int)Math.Max(8, TargetBytes / (2L * 4 * 2 * length * Heads * HeadDim));
}
