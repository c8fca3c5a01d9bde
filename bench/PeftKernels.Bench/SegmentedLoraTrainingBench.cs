// Segmented LoRA for training at MixLoRA's gate/up shape (docs/formats/mixlora.md#cost): 8 experts,
// top-2 of 256 tokens = 512 routed rows sorted by expert (8 segments of 64 rows), in 768, out 2048,
// rank 16. Segmented: SegmentedLoraTraining on the sorted rows in place. PerExpert: what MixLoRA did
// before, one LoraBranch per expert on its rows gathered out of a [512, ·] batch (the gather and the
// scatter of dx included, as the per-expert path paid them through GatherRows).
// Work of one call (m = 512 rows in all; two GEMMs forward, four backward, per segment):
//   Forward    FLOPs = 2·m·r·(in + out)
//   Backward   FLOPs = 4·m·r·(in + out)
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;
using CpuLoraBranch = PeftKernels.Kernels.Cpu.LoraBranch;

namespace PeftKernels.Bench;

/// <summary>Segmented LoRA forward and backward over 8 expert segments against one LoraBranch per expert.</summary>
public class SegmentedLoraTrainingBench : IWorkload
{
    private const int Experts = 8, M = 512, In = 768, Out = 2048, Rank = 16;
    private float[] _x = [], _y = [], _h = [], _dy = [], _dx = [];
    private float[][] _a = [], _b = [];
    private float[]?[] _da = [], _db = [];
    private readonly int[] _starts = [.. Enumerable.Range(0, Experts + 1).Select(t => t * M / Experts)];
    private readonly float[] _scales = [.. Enumerable.Repeat(2f, Experts)];
    private readonly ulong[] _seeds = new ulong[Experts];

    [Params("segmented", "per-expert")]
    public string Path { get; set; } = "segmented";

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)M * In, seed: 1);
        _dy = Workload.Random((long)M * Out, seed: 2);
        _a = [.. Enumerable.Range(0, Experts).Select(t => Workload.Random((long)Rank * In, seed: 10 + t))];
        _b = [.. Enumerable.Range(0, Experts).Select(t => Workload.Random((long)Out * Rank, seed: 20 + t))];
        _da = [.. _a.Select(a => new float[a.Length])];
        _db = [.. _b.Select(b => new float[b.Length])];
        _y = new float[M * Out];
        _h = new float[M * Rank];
        _dx = new float[M * In];
        Forward();
    }

    [Benchmark]
    public void Forward()
    {
        var options = new KernelOptions(Threads);
        if (Path == "segmented")
        {
            SegmentedLoraTraining.ForwardAccumulate(_x, _starts, _a, _b, _scales, _seeds, 0f, _y, _h, M, In, Out, options);
            return;
        }

        for (int t = 0; t < Experts; t++)
        {
            int[] rows = [.. Enumerable.Range(_starts[t], _starts[t + 1] - _starts[t])];
            var xe = Gather(_x, rows, In);
            var ye = Gather(_y, rows, Out);
            CpuLoraBranch.ForwardAccumulate(xe, null, _a[t], _b[t], [], _scales[t], ye, _h.AsSpan(_starts[t] * Rank, rows.Length * Rank),
                rows.Length, In, Out, Rank, new LoraOptions(Kernel: options));
            ye.CopyTo(_y.AsSpan(_starts[t] * Out));
        }
    }

    [Benchmark]
    public void Backward()
    {
        var options = new KernelOptions(Threads);
        if (Path == "segmented")
        {
            SegmentedLoraTraining.Backward(_dy, _x, _starts, _h, _a, _b, _scales, _seeds, 0f, _dx, _da, _db, M, In, Out, options);
            return;
        }

        var dx = new float[M * In];
        for (int t = 0; t < Experts; t++)
        {
            int[] rows = [.. Enumerable.Range(_starts[t], _starts[t + 1] - _starts[t])];
            var dxe = new float[rows.Length * In];
            CpuLoraBranch.Backward(Gather(_dy, rows, Out), Gather(_x, rows, In), null, _h.AsSpan(_starts[t] * Rank, rows.Length * Rank), _a[t], _b[t],
                _scales[t], dxe, _da[t], _db[t], rows.Length, In, Out, Rank, new LoraOptions(Kernel: options));
            for (int i = 0; i < rows.Length; i++)
            {
                dxe.AsSpan(i * In, In).CopyTo(dx.AsSpan(rows[i] * In, In));
            }
        }
    }

    public double Flops(BenchmarkCase benchmarkCase) =>
        (benchmarkCase.Method() == nameof(Forward) ? 2.0 : 4.0) * M * Rank * (In + Out);

    public double Bytes(BenchmarkCase benchmarkCase) => 0;

    private static float[] Gather(float[] source, int[] rows, int cols)
    {
        var result = new float[rows.Length * cols];
        for (int i = 0; i < rows.Length; i++)
        {
            source.AsSpan(rows[i] * cols, cols).CopyTo(result.AsSpan(i * cols, cols));
        }

        return result;
    }
}
