// Bias-gradient column sums at a Llama-7B-ish activation: rows = 2048 tokens, cols = 4096; g [rows, cols],
// dst [cols]. Work of one call: dst += scale·Σ_rows g   FLOPs = rows·cols (+ cols)   Bytes = 4·(rows·cols + 2·cols).
// Memory bound: read the GB/s column against the machine's read bandwidth.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using CpuColumnSums = PeftKernels.Kernels.Cpu.ColumnSums;

namespace PeftKernels.Bench;

/// <summary>ColumnSums.Add, unscaled (a Linear bias) and scaled (a LoRA bias_B).</summary>
public class ColumnSumsBench : IWorkload
{
    private const int Rows = 2048, Cols = 4096;
    private float[] _g = [], _dst = [];

    [Params(1f, 0.5f)]
    public float Scale { get; set; } = 1f;

    [GlobalSetup]
    public void Setup()
    {
        _g = Workload.Random((long)Rows * Cols, seed: 1);
        _dst = new float[Cols];
    }

    [Benchmark]
    public void Add() => CpuColumnSums.Add(_g, _dst, Rows, Cols, Scale);

    public double Flops(BenchmarkCase benchmarkCase) => ((double)Rows * Cols) + Cols;

    public double Bytes(BenchmarkCase benchmarkCase) => 4.0 * (((double)Rows * Cols) + (2.0 * Cols));
}
