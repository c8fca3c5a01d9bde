// Token embedding at a Llama-7B-ish table: vocab = 32000, dim = 4096, n = 512 tokens (ids with repeats);
// y, dy [n, dim], weight, dw [vocab, dim]. Work of one call (bytes = the rows read and written):
//   Forward      y[t] = W[ids[t]] (fp32 / bf16 / fp16 table)   FLOPs = 0       Bytes = n·dim·(w + 4)
//   Backward     dW[ids[t]] += dy[t] in token order           FLOPs = n·dim   Bytes = 4·3·n·dim
// All are memory bound: read the GB/s column against the machine's read bandwidth.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;
using CpuEmbedding = PeftKernels.Kernels.Cpu.Embedding;

namespace PeftKernels.Bench;

/// <summary>Embedding gather (fp32, bf16, fp16 tables) and scatter-add backward.</summary>
public class EmbeddingBench : IWorkload
{
    private const int Vocab = 32000, Dim = 4096, N = 512;
    private float[] _w = [], _y = [], _dy = [], _dw = [];
    private ushort[] _wBf16 = [];
    private Half[] _wF16 = [];
    private int[] _ids = [];

    [GlobalSetup]
    public void Setup()
    {
        _w = Workload.Random((long)Vocab * Dim, seed: 1);
        _wBf16 = [.. _w.Select(Bf16.FromSingle)];
        _wF16 = [.. _w.Select(v => (Half)v)];
        _dy = Workload.Random((long)N * Dim, seed: 2);
        _ids = [.. Enumerable.Range(0, N).Select(t => (int)((t * 7919L) % 4000) * 7)];
        _y = new float[N * Dim];
        _dw = new float[Vocab * Dim];
    }

    [Benchmark]
    public void ForwardF32() => CpuEmbedding.Forward(_w, _ids, _y, Vocab, Dim);

    [Benchmark]
    public void ForwardBf16() => CpuEmbedding.Forward(_wBf16, _ids, _y, Vocab, Dim);

    [Benchmark]
    public void ForwardF16() => CpuEmbedding.Forward(_wF16, _ids, _y, Vocab, Dim);

    [Benchmark]
    public void Backward() => CpuEmbedding.Backward(_dy, _ids, _dw, Vocab, Dim);

    public double Flops(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Backward) ? (double)N * Dim : 0;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() switch
    {
        nameof(ForwardF32) => 8.0 * N * Dim,
        nameof(ForwardBf16) or nameof(ForwardF16) => 6.0 * N * Dim,
        _ => 12.0 * N * Dim,
    };
}
