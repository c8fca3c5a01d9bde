// RoPE at a Llama-125M-ish shape: n = 256 tokens, 12 heads × headDim 64; x, y [n, heads, headDim],
// positions [n] (0..n−1), invFreq [headDim/2] (theta 10000). Work of one call (fp32 = 4 bytes):
//   FLOPs = 3·n·heads·headDim (4 multiplies + 2 adds per pair; the n·headDim/2 cos/sin are not counted)
//   Bytes = 4·(2·n·heads·headDim + n + headDim/2)     (x read, y written, positions, invFreq)
// Backward is the same rotation transposed: same work.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>RoPE forward and backward, out of place.</summary>
public class RopeBench : IWorkload
{
    private const int N = 256, Heads = 12, HeadDim = 64;
    private float[] _x = [], _y = [], _invFreq = [];
    private int[] _positions = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)N * Heads * HeadDim, seed: 1);
        _y = new float[N * Heads * HeadDim];
        _positions = Enumerable.Range(0, N).ToArray();
        _invFreq = Rope.InverseFrequencies(HeadDim, 10000);
    }

    [Benchmark]
    public void Forward() => Rope.Forward(_x, _positions, _invFreq, _y, N, Heads, HeadDim, new KernelOptions(Threads));

    [Benchmark]
    public void Backward() => Rope.Backward(_x, _positions, _invFreq, _y, N, Heads, HeadDim, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 3.0 * N * Heads * HeadDim;

    public double Bytes(BenchmarkCase benchmarkCase) => 4.0 * ((2.0 * N * Heads * HeadDim) + N + (HeadDim / 2));
}
