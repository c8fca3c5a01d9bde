// Causal GQA attention (Attention.Forward / Backward), fp32. Shape B×Tq×Tk×H×Hkv×d:
// q, o, dO, dq [B, Tq, H, d], k, v, dk, dv [B, Tk, Hkv, d], lse [B, H, Tq]; scale 1/√d.
// Query i sees keys 0..i + (Tk − Tq), so the visible (query, key) pairs per head are
//   pairs = Tq·(Tk − Tq) + Tq·(Tq + 1)/2          (≈ T²/2 for prefill Tq = Tk = T; Tk for decode Tq = 1)
//   Forward   FLOPs = 4·B·H·pairs·d               (q·k and p·v, 2 per multiply-add)
//             Bytes = 4·(2·B·Tq·H·d + 2·B·Tk·Hkv·d + B·H·Tq)          (q, k, v read; o, lse written)
//   Backward  FLOPs = 2.5 × forward               (q·k recomputed, dO·v, and dv, dq, dk: 5 products, not 2)
//             Bytes = 4·(4·B·Tq·H·d + 4·B·Tk·Hkv·d + B·H·Tq)          (dO, q, o, k, v, lse read; dq, dk, dv written)
// Bytes are the minimum traffic (every operand read once, every result written once). Data:
// uniform [-1, 1) from fixed seeds, allocated in [GlobalSetup]; o and lse come from one Forward there.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>Attention forward and backward at a GPT-2-small-sized prefill (T = 256) and a decode step (1 query, 1024 keys).</summary>
public class AttentionBench : IWorkload
{
    private float[] _q = [], _k = [], _v = [], _o = [], _lse = [], _dO = [], _dq = [], _dk = [], _dv = [];
    private KernelOptions _options;

    public static IEnumerable<AttentionShape> Shapes => [new(1, 256, 256, 12, 12, 64), new(1, 1, 1024, 12, 12, 64)];

    [ParamsSource(nameof(Shapes), Priority = -1)]
    public AttentionShape Shape { get; set; } = new(1, 256, 256, 12, 12, 64);

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _options = new KernelOptions(Threads);
        var s = Shape;
        long queries = (long)s.B * s.Tq * s.H * s.D, keys = (long)s.B * s.Tk * s.Hkv * s.D;
        _q = Workload.Random(queries, seed: 1);
        _k = Workload.Random(keys, seed: 2);
        _v = Workload.Random(keys, seed: 3);
        _dO = Workload.Random(queries, seed: 4);
        _o = new float[queries];
        _lse = new float[(long)s.B * s.H * s.Tq];
        _dq = new float[queries];
        _dk = new float[keys];
        _dv = new float[keys];
        Forward();
    }

    [Benchmark]
    public void Forward()
    {
        var s = Shape;
        Attention.Forward(_q, _k, _v, _o, _lse, s.B, s.Tq, s.Tk, s.H, s.Hkv, s.D, s.Scale, _options);
    }

    [Benchmark]
    public void Backward()
    {
        var s = Shape;
        Attention.Backward(_dO, _q, _k, _v, _o, _lse, _dq, _dk, _dv, s.B, s.Tq, s.Tk, s.H, s.Hkv, s.D, s.Scale, _options);
    }

    public double Flops(BenchmarkCase benchmarkCase)
    {
        var shape = benchmarkCase.Param<AttentionShape>(nameof(Shape));
        return benchmarkCase.Method() == nameof(Backward) ? shape.BackwardFlops : shape.ForwardFlops;
    }

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        var shape = benchmarkCase.Param<AttentionShape>(nameof(Shape));
        return benchmarkCase.Method() == nameof(Backward) ? shape.BackwardBytes : shape.ForwardBytes;
    }
}

/// <summary>Attention shape: B sequences, Tq queries (the last of Tk positions), H query heads, Hkv kv heads, head dim d.</summary>
public sealed record AttentionShape(int B, int Tq, int Tk, int H, int Hkv, int D) : IComparable
{
    public float Scale => 1f / MathF.Sqrt(D);

    public double Pairs => ((double)Tq * (Tk - Tq)) + ((double)Tq * (Tq + 1) / 2);

    public double ForwardFlops => 4.0 * B * H * Pairs * D;

    public double BackwardFlops => 2.5 * ForwardFlops;

    public double ForwardBytes => 4.0 * ((2.0 * Queries) + (2.0 * Keys) + Rows);

    public double BackwardBytes => 4.0 * ((4.0 * Queries) + (4.0 * Keys) + Rows);

    private double Queries => (double)B * Tq * H * D;

    private double Keys => (double)B * Tk * Hkv * D;

    private double Rows => (double)B * H * Tq;

    public int CompareTo(object? obj) => obj is AttentionShape o
        ? (Tq, Tk, B, H, Hkv, D).CompareTo((o.Tq, o.Tk, o.B, o.H, o.Hkv, o.D))
        : throw new ArgumentException($"Not an {nameof(AttentionShape)}.", nameof(obj));

    public override string ToString() => $"{B}x{Tq}x{Tk}x{H}x{Hkv}x{D}";
}
