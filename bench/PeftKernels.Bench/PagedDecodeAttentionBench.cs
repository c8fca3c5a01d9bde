// Decode attention of one query row over a paged KV cache at the ~125M Llama's shape: length 256,
// 12 query heads of 64, blocks of 16 positions, one layer, one thread.
//   PagedAttentionDecode   PagedAttention.Decode: the general attention kernel once per block, merged by log-sum-exp
//   PagedDecodeAttention   PagedDecodeAttention.Row: one online-softmax pass over the blocks, no allocation
// Both read the same keys and values: Row's pools hold the sequence's blocks at the same block ids.
//   FLOPs = 4·heads·length·headDim (q·k and p·v)      Bytes = 2·4·length·kvHeads·headDim (K and V read once)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Engine;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>PagedDecodeAttention.Row against PagedAttention.Decode, length 256, 12 heads of 64.</summary>
public class PagedDecodeAttentionBench : IWorkload
{
    private const int Heads = 12, HeadDim = 64, Length = 256, BlockSize = 16;
    private const float Scale = 0.125f;
    private float[] _q = [], _o = [], _keys = [], _values = [];
    private int[] _table = [];
    private PagedSequence? _sequence;

    /// <summary>Key/value heads: 12 (multi-head) or 4 (grouped-query).</summary>
    [Params(12, 4)]
    public int KvHeads { get; set; } = 12;

    [GlobalSetup]
    public void Setup()
    {
        int kvDim = KvHeads * HeadDim, blocks = Length / BlockSize;
        var pool = new KvBlockPool(1, KvHeads, HeadDim, BlockSize, blocks + 4);
        _sequence = pool.CreateSequence();
        for (int p = 0; p < Length; p++)
        {
            _sequence.Append(p);
        }

        _sequence.WriteRange(0, 0, Workload.Random((long)Length * kvDim, seed: 1), Workload.Random((long)Length * kvDim, seed: 2));
        _table = [.. _sequence.BlockTable];
        int poolFloats = (blocks + 4) * BlockSize * kvDim;
        _keys = new float[poolFloats];
        _values = new float[poolFloats];
        for (int b = 0; b < blocks; b++)
        {
            _sequence.KeyBlock(0, b).CopyTo(_keys.AsSpan(_table[b] * BlockSize * kvDim));
            _sequence.ValueBlock(0, b).CopyTo(_values.AsSpan(_table[b] * BlockSize * kvDim));
        }

        _q = Workload.Random(Heads * HeadDim, seed: 3);
        _o = new float[Heads * HeadDim];
    }

    [Benchmark(Baseline = true)]
    public void PagedAttentionDecode() => PagedAttention.Decode(_q, _sequence!, 0, _o, Heads, Scale, new KernelOptions(1));

    [Benchmark]
    public void PagedDecodeAttention() =>
        Kernels.Cpu.PagedDecodeAttention.Row(_q, _keys, _values, _table, BlockSize, Length, Heads, KvHeads, HeadDim, 0, Heads, Scale, _o, SimdPath.Auto);

    public double Flops(BenchmarkCase benchmarkCase) => 4.0 * Heads * Length * HeadDim;

    public double Bytes(BenchmarkCase benchmarkCase) => 2.0 * 4 * Length * benchmarkCase.Param<int>(nameof(KvHeads)) * HeadDim;
}
