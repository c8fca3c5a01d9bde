// Many adapters in one decode batch at a Llama-125M-ish projection: n = 64 rows (one token of each of
// 64 sequences), in = out = 768, with 1, 8 or 64 distinct adapters; adapter k has rank
// Ranks[k mod 4] (8, 64, 16, 32: ranks 8–64 mixed; one adapter: rank 8) and row i uses adapter i mod K.
//   Bgmv           SegmentedLora.Bgmv over the 64 rows, each with its adapter index
//   Sgmv           SegmentedLora.Sgmv over the same rows sorted into one segment per adapter
//   PerAdapter     today's way: one LoraBranch.ForwardAccumulate per adapter on its rows (gather, two GEMMs, scatter)
// Work of one call, r(i) = rank of row i's adapter, the sums over the distinct adapters read each A and B once:
//   FLOPs = Σ_i 2·r(i)·(in + out)      Bytes = 4·(n·in + 2·n·out + Σ_k r_k·(in + out))
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Bench;

/// <summary>SGMV / BGMV against one LoraBranch per adapter, 64 decode rows, 1 to 64 distinct adapters.</summary>
public class SegmentedLoraBench : IWorkload
{
    private const int N = 64, In = 768, Out = 768;
    private static readonly int[] RankCycle = [8, 64, 16, 32];
    private float[] _x = [], _y = [], _rowScales = [], _segmentScales = [], _sortedX = [];
    private int[] _adapterOfRow = [], _segmentStarts = [], _segmentAdapters = [];
    private int[][] _rowsOf = [];
    private float[][] _h = [];
    private SegmentedLoraPack? _pack;

    [Params(1, 8, 64)]
    public int DistinctAdapters { get; set; } = 1;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        int k = DistinctAdapters;
        var ranks = Enumerable.Range(0, k).Select(RankOf).ToArray();
        _pack = SegmentedLoraPack.Pack(
            [.. ranks.Select((r, i) => Workload.Random((long)r * In, seed: 10 + (2 * i)))],
            [.. ranks.Select((r, i) => Workload.Random((long)Out * r, seed: 11 + (2 * i)))], In, Out);
        _x = Workload.Random((long)N * In, seed: 1);
        _y = new float[N * Out];
        _adapterOfRow = [.. Enumerable.Range(0, N).Select(i => i % k)];
        _rowScales = [.. Enumerable.Repeat(0.5f, N)];
        _rowsOf = [.. Enumerable.Range(0, k).Select(a => Enumerable.Range(0, N).Where(i => i % k == a).ToArray())];
        _h = [.. Enumerable.Range(0, k).Select(a => new float[_rowsOf[a].Length * ranks[a]])];

        // SGMV: the same rows sorted by adapter (its x a permutation of the rows), one segment each.
        var sorted = _rowsOf.SelectMany(rows => rows).ToArray();
        _sortedX = new float[N * In];
        for (int i = 0; i < N; i++)
        {
            _x.AsSpan(sorted[i] * In, In).CopyTo(_sortedX.AsSpan(i * In, In));
        }

        _segmentStarts = new int[k + 1];
        for (int a = 0; a < k; a++)
        {
            _segmentStarts[a + 1] = _segmentStarts[a] + _rowsOf[a].Length;
        }

        _segmentAdapters = [.. Enumerable.Range(0, k)];
        _segmentScales = [.. Enumerable.Repeat(0.5f, k)];
    }

    [Benchmark(Baseline = true)]
    public void Bgmv() => SegmentedLora.Bgmv(_x, _adapterOfRow, _rowScales, _pack!.Adapters, _y, N, In, Out, new KernelOptions(Threads));

    [Benchmark]
    public void Sgmv() => SegmentedLora.Sgmv(_sortedX, _segmentStarts, _segmentAdapters, _segmentScales, _pack!.Adapters, _y, N, In, Out,
        new KernelOptions(Threads));

    [Benchmark]
    public void PerAdapter()
    {
        var pack = _pack!;
        var options = new LoraOptions(Kernel: new KernelOptions(Threads));
        for (int a = 0; a < DistinctAdapters; a++)
        {
            int r = pack.Ranks[a];
            CpuLoraBranch.ForwardAccumulate(_x, _rowsOf[a], pack.Factors.AsSpan(pack.AOffsets[a], r * In), pack.Factors.AsSpan(pack.BOffsets[a], Out * r),
                [], 0.5f, _y, _h[a], N, In, Out, r, options);
        }
    }

    public double Flops(BenchmarkCase benchmarkCase)
    {
        int k = benchmarkCase.Param<int>(nameof(DistinctAdapters));
        return Enumerable.Range(0, N).Sum(i => 2.0 * RankOf(i % k) * (In + Out));
    }

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        int k = benchmarkCase.Param<int>(nameof(DistinctAdapters));
        return 4.0 * (((double)N * In) + (2.0 * N * Out) + Enumerable.Range(0, k).Sum(a => (double)RankOf(a) * (In + Out)));
    }

    private static int RankOf(int adapter) => RankCycle[adapter % RankCycle.Length];
}
