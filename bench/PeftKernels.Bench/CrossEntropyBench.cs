// Fused cross-entropy at a Llama-125M-ish LM head: n = 256 tokens, vocab = 32000; logits [n, vocab],
// labels [n] (one in eight −100), lse [n]. Work of one call (fp32 = 4 bytes; exp is counted as 1 FLOP):
//   Forward          FLOPs = 4·n·vocab (max, subtract, exp, add)   Bytes = 4·(n·vocab + 2·n)   (logits, labels read; lse written)
//   BackwardInPlace  FLOPs = 3·n·vocab (subtract, exp, scale)      Bytes = 4·(2·n·vocab + 2·n) (logits read and written; labels, lse read)
// BackwardInPlace overwrites its logits with their gradient, so each call after the first works on the
// previous call's output (values in (−1, 1), lse from the original logits): finite, no overflow or
// subnormals, and the same work.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>Cross-entropy forward (log-sum-exp + NLL) and in-place backward.</summary>
public class CrossEntropyBench : IWorkload
{
    private const int N = 256, Vocab = 32000;
    private float[] _logits = [], _grad = [], _lse = [];
    private int[] _labels = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _logits = Workload.Random((long)N * Vocab, seed: 1).Select(v => 8 * v).ToArray();
        _grad = (float[])_logits.Clone();
        _labels = Enumerable.Range(0, N).Select(i => i % 8 == 7 ? CrossEntropy.IgnoreIndex : (i * 7919) % Vocab).ToArray();
        _lse = new float[N];
        Forward();
    }

    [Benchmark]
    public double Forward() => CrossEntropy.Forward(_logits, _labels, _lse, N, Vocab, new KernelOptions(Threads));

    [Benchmark]
    public void BackwardInPlace() =>
        CrossEntropy.BackwardInPlace(_grad, _labels, _lse, 1f / CrossEntropy.CountValid(_labels), N, Vocab, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => (benchmarkCase.Method() == nameof(Forward) ? 4.0 : 3.0) * N * Vocab;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Forward)
        ? 4.0 * (((double)N * Vocab) + (2.0 * N))
        : 4.0 * ((2.0 * N * Vocab) + (2.0 * N));
}
