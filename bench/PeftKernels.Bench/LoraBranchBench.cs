// One extra LoRA branch at a Llama-125M-ish projection: n = 256 tokens, in = out = 768, rank 16;
// all rows, or every other row (a per-row adapter batch); x [n, in], a [r, in], b [out, r], y [n, out].
// Work of one call (m = rows of the branch; two GEMMs forward, four backward):
//   ForwardAccumulate   FLOPs = 2·m·r·(in + out)          Bytes = 4·(m·in + r·in + out·r + 2·m·out + m·r)
//   Backward            FLOPs = 2·m·r·(2·out + 2·in)      Bytes = 4·(m·out + m·in + m·r + 2·r·in + 2·out·r + n·in)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Bench;

/// <summary>LoraBranch forward and backward, all rows or half of them.</summary>
public class LoraBranchBench : IWorkload
{
    private const int N = 256, In = 768, Out = 768, Rank = 16;
    private float[] _x = [], _a = [], _b = [], _y = [], _h = [], _dy = [], _dx = [], _da = [], _db = [];
    private int[]? _rows;

    [Params(false, true)]
    public bool HalfTheRows { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    private int M => HalfTheRows ? N / 2 : N;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)N * In, seed: 1);
        _a = Workload.Random((long)Rank * In, seed: 2);
        _b = Workload.Random((long)Out * Rank, seed: 3);
        _dy = Workload.Random((long)N * Out, seed: 4);
        _rows = HalfTheRows ? [.. Enumerable.Range(0, N / 2).Select(i => 2 * i)] : null;
        _y = new float[N * Out];
        _h = new float[M * Rank];
        _dx = new float[N * In];
        _da = new float[Rank * In];
        _db = new float[Out * Rank];
        Forward();
    }

    [Benchmark]
    public void Forward() => CpuLoraBranch.ForwardAccumulate(_x, _rows, _a, _b, [], 2f, _y, _h, N, In, Out, Rank,
        new LoraOptions(Kernel: new KernelOptions(Threads)));

    [Benchmark]
    public void Backward() => CpuLoraBranch.Backward(_dy, _x, _rows, _h, _a, _b, 2f, _dx, _da, _db, N, In, Out, Rank,
        new LoraOptions(Kernel: new KernelOptions(Threads)));

    public double Flops(BenchmarkCase benchmarkCase) =>
        (benchmarkCase.Method() == nameof(Forward) ? 2.0 : 4.0) * M * Rank * (In + Out);

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Forward)
        ? 4.0 * (((double)M * In) + (Rank * In) + (Out * Rank) + (2.0 * M * Out) + (M * Rank))
        : 4.0 * (((double)M * Out) + (M * In) + (M * Rank) + (2.0 * Rank * In) + (2.0 * Out * Rank) + ((double)N * In));
}
