// 4-bit (NF4, double-quantized scales, blocksize 64) kernels against their fp32 baselines in
// one run, so the Ratio column reads directly as the targets of the QLoRA issue.
//   Quant4GemvBench   (1, 8192, 8192): fp32 GEMV vs NF4 GEMV.  FLOPs = 2·N·K.
//       Bytes fp32 = 4·(K + N·K + N); NF4 = 4·(K + N) + N·K/2 + 4·N·K/64 (codes + the fp32 absmax it reads)
//   Quant4GemmBench   (512, 4096, 4096): fp32 GEMM vs fused dequant-GEMM. FLOPs = 2·M·N·K.
//   QLoraBench        (512, 4096, 4096, r 16): fp32 LoRA vs QLoRA, forward and backward
//       (FLOPs as in LoraMatmulBench; Bytes with W at 4 bits).
//   Quant4CodecBench  quantize / dequantize a 4096×4096 fp32 tensor: Bytes = 4·n + n/2 + n/64·4
//       (fp32 side + codes + absmax), FLOPs 0.
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>
/// NF4 GEMV (decode) vs fp32 GEMV of the same shape. Nf4Gemv reads the same 36 MiB weight on
/// every call, so part of it can stay in this machine's large shared L3; Nf4GemvCold cycles
/// through <see cref="ColdCopies"/> copies of it (≈ 450 MB, more than the L3), so each call
/// reads its weight from DRAM as a model's decode step does, and is the figure to set against
/// the 1 GiB read probe. The fp32 weight (256 MiB) is streamed from DRAM either way.
/// </summary>
public class Quant4GemvBench : IWorkload
{
    private const int N = 8192, K = 8192, ColdCopies = 12;
    private float[] _x = [], _w = [], _y = [];
    private QuantizedWeight _wq = null!;
    private QuantizedWeight[] _cold = [];
    private int _next;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random(K, seed: 1);
        _w = Workload.Random((long)N * K, seed: 2);
        _y = new float[N];
        _wq = QuantizedWeight.Quantize(_w, [N, K]);
        var absmax = _wq.AbsmaxFp32();

        // Copies read the same bytes as _wq: the codes and the fp32 absmax.
        _cold = Enumerable.Range(0, ColdCopies)
            .Select(_ => new QuantizedWeight((byte[])_wq.Packed.Clone(), (float[])absmax.Clone(), null, null, 0f, 64, Quant4Type.Nf4, [N, K], "float32"))
            .ToArray();
    }

    [Benchmark(Baseline = true)]
    public void Fp32Gemv() => Gemm.Multiply(false, true, 1, N, K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads));

    [Benchmark]
    public void Nf4Gemv() => Quant4Matmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(Threads));

    [Benchmark]
    public void Nf4GemvCold()
    {
        var wq = _cold[_next];
        _next = (_next + 1) % ColdCopies;
        Quant4Matmul.Forward(_x, wq, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(Threads));
    }

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * N * K;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Method() == nameof(Fp32Gemv)
        ? 4.0 * (K + ((double)N * K) + N)
        : (4.0 * (K + N)) + (N * (double)K / 2) + (4.0 * N * K / 64);
}

/// <summary>Fused NF4 dequant-GEMM vs fp32 GEMM at (512, 4096, 4096).</summary>
public class Quant4GemmBench : IWorkload
{
    private const int M = 512, N = 4096, K = 4096;
    private float[] _x = [], _w = [], _y = [];
    private QuantizedWeight _wq = null!;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random((long)M * K, seed: 1);
        _w = Workload.Random((long)N * K, seed: 2);
        _y = new float[(long)M * N];
        _wq = QuantizedWeight.Quantize(_w, [N, K]);
        _wq.AbsmaxFp32();
    }

    [Benchmark(Baseline = true)]
    public void Fp32Gemm() => Gemm.Multiply(false, true, M, N, K, 1f, _x, _w, 0f, _y, new KernelOptions(Threads));

    [Benchmark]
    public void Nf4Gemm() => Quant4Matmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, M, K, N, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * M * N * K;

    public double Bytes(BenchmarkCase benchmarkCase) =>
        (4.0 * M * K) + (4.0 * M * N) + (benchmarkCase.Method() == nameof(Nf4Gemm) ? (N * (double)K / 2) + (4.0 * N * K / 64) : 4.0 * N * K);
}

/// <summary>QLoRA vs fp32 LoRA forward and backward at (512, 4096, 4096, r 16).</summary>
public class QLoraBench : IWorkload
{
    private static readonly LoraShape Shape = new(512, 4096, 4096, 16);
    private float[] _x = [], _w = [], _a = [], _b = [], _y = [], _h = [], _dy = [], _dx = [], _da = [], _db = [];
    private QuantizedWeight _wq = null!;
    private LoraOptions _options;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        var (n, inF, outF, r) = Shape;
        _options = new LoraOptions(Kernel: new KernelOptions(Threads));
        _x = Workload.Random((long)n * inF, seed: 1);
        _w = Workload.Random((long)outF * inF, seed: 2);
        _a = Workload.Random((long)r * inF, seed: 3);
        _b = Workload.Random((long)outF * r, seed: 4);
        _dy = Workload.Random((long)n * outF, seed: 5);
        _y = new float[(long)n * outF];
        _h = new float[(long)n * r];
        _dx = new float[(long)n * inF];
        _da = new float[(long)r * inF];
        _db = new float[(long)outF * r];
        _wq = QuantizedWeight.Quantize(_w, [outF, inF]);
        _wq.AbsmaxFp32();
        LoraForward();
    }

    [Benchmark(Baseline = true)]
    public void LoraForward() =>
        LoraMatmul.Forward(_x, WeightOperand.F32(_w, Shape.Out, Shape.In), ReadOnlySpan<float>.Empty, _a, _b, 2f, _y, _h, Shape.N, Shape.In, Shape.Out, Shape.R, in _options);

    [Benchmark]
    public void QLoraForward() =>
        QLoraMatmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _a, _b, 2f, _y, _h, Shape.N, Shape.In, Shape.Out, Shape.R, in _options);

    [Benchmark]
    public void LoraBackward() =>
        LoraMatmul.Backward(_dy, _x, _h, WeightOperand.F32(_w, Shape.Out, Shape.In), _a, _b, 2f, _dx, _da, _db, Shape.N, Shape.In, Shape.Out, Shape.R, in _options);

    [Benchmark]
    public void QLoraBackward() =>
        QLoraMatmul.Backward(_dy, _x, _h, _wq, _a, _b, 2f, _dx, _da, _db, Shape.N, Shape.In, Shape.Out, Shape.R, in _options);

    public double Flops(BenchmarkCase benchmarkCase) =>
        benchmarkCase.Method().Contains("Forward", StringComparison.Ordinal) ? Shape.ForwardFlops : Shape.BackwardFlops;

    public double Bytes(BenchmarkCase benchmarkCase)
    {
        double full = benchmarkCase.Method().Contains("Forward", StringComparison.Ordinal) ? Shape.ForwardBytes : Shape.BackwardBytes;
        double w = 4.0 * Shape.In * Shape.Out;
        return benchmarkCase.Method().StartsWith('Q') ? full - w + (w / 8) + (w / 64) : full;
    }
}

/// <summary>Quantize and dequantize throughput of a 4096×4096 fp32 tensor (NF4, blocksize 64).</summary>
public class Quant4CodecBench : IWorkload
{
    private const int Count = 4096 * 4096;
    private float[] _x = [], _back = [], _absmax = [];
    private byte[] _packed = [];

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random(Count, seed: 1);
        _back = new float[Count];
        _packed = new byte[Count / 2];
        _absmax = new float[Count / 64];
        Quantize();
    }

    [Benchmark]
    public void Quantize() => Quant4.Quantize(_x, _packed, _absmax, Quant4Type.Nf4, 64, new KernelOptions(Threads));

    [Benchmark]
    public void Dequantize() => Quant4.Dequantize(_packed, _absmax, Quant4Type.Nf4, 64, _back, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 0;

    public double Bytes(BenchmarkCase benchmarkCase) => (4.0 * Count) + (Count / 2.0) + (4.0 * Count / 64);
}

/// <summary>
/// NF4 GEMV on a cache-resident weight (256 × 8192: 1 MiB of codes), to separate the decode
/// cost from memory: GFLOP/s / 2 = codes per ns. If this is no faster than the 8192 × 8192
/// case, the GEMV is compute-bound.
/// </summary>
public class Quant4GemvHotBench : IWorkload
{
    private const int N = 256, K = 8192;
    private float[] _x = [], _y = [];
    private QuantizedWeight _wq = null!;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup]
    public void Setup()
    {
        _x = Workload.Random(K, seed: 1);
        _y = new float[N];
        _wq = QuantizedWeight.Quantize(Workload.Random((long)N * K, seed: 2), [N, K]);
        _wq.AbsmaxFp32();
    }

    [Benchmark]
    public void Nf4GemvHot() => Quant4Matmul.Forward(_x, _wq, ReadOnlySpan<float>.Empty, _y, 1, K, N, new KernelOptions(Threads));

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * N * K;

    public double Bytes(BenchmarkCase benchmarkCase) => (4.0 * (K + N)) + (N * (double)K / 2) + (4.0 * N * K / 64);
}

/// <summary>
/// The two Vector512 row-dot decoders of the NF4 GEMV, one thread, each over every row of the
/// weight: the 8-byte broadcast decode (<c>Quant4Simd.DotRunPermuted</c>, the GEMV's path for
/// block size 32 and rows not a multiple of 128) as the baseline, and the 64-byte wide decode
/// (<c>Quant4Simd.DotRunWide</c>, the path for block size ≥ 64), and that decode over pairs of rows
/// (<c>Quant4Simd.DotRunWidePair</c>, the GEMV's path for block size 64). Rows = 256 keeps the 1 MiB of
/// codes in L2 (decode cost only); rows = 8192 streams 36 MiB. FLOPs = 2·rows·K; Bytes = codes +
/// fp32 absmax.
/// </summary>
public unsafe class Quant4DotDecodeBench : IWorkload
{
    private const int K = 8192;
    private float* _xp, _xq;
    private float[] _y = [], _table = [];
    private QuantizedWeight _wq = null!;

    [Params(256, 8192)]
    public int Rows { get; set; } = 256;

    [GlobalSetup]
    public void Setup()
    {
        var x = Workload.Random(K, seed: 1);
        _xp = (float*)NativeMemory.AlignedAlloc(K * sizeof(float), 64); // as the GEMV's pinned, aligned buffer
        _xq = (float*)NativeMemory.AlignedAlloc(K * sizeof(float), 64);
        fixed (float* px = x)
        {
            Quant4Simd.PermuteForDot(px, K, _xp);
            Quant4Simd.PermuteForWideDot(px, K, _xq);
        }

        _y = new float[Rows];
        _wq = QuantizedWeight.Quantize(Workload.Random((long)Rows * K, seed: 2), [Rows, K]);
        _wq.AbsmaxFp32();
        _table = Quant4Codes.Search(Quant4Type.Nf4).Values;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_xp);
        NativeMemory.AlignedFree(_xq);
        _xp = _xq = null;
    }

    [Benchmark(Baseline = true)]
    public void Broadcast8Bytes()
    {
        fixed (byte* q = _wq.Packed)
        fixed (float* s = _wq.AbsmaxFp32())
        {
            for (int j = 0; j < Rows; j++)
            {
                _y[j] = Quant4Simd.DotRunPermuted(q, s, _table, 64, (long)j * K, K, _xp);
            }
        }
    }

    [Benchmark]
    public void Wide64Bytes()
    {
        fixed (byte* q = _wq.Packed)
        fixed (float* s = _wq.AbsmaxFp32())
        {
            for (int j = 0; j < Rows; j++)
            {
                _y[j] = Quant4Simd.DotRunWide(q, s, _table, 64, (long)j * K, K, _xq);
            }
        }
    }

    [Benchmark]
    public void Wide64BytesPairs()
    {
        fixed (byte* q = _wq.Packed)
        fixed (float* s = _wq.AbsmaxFp32(), y = _y)
        {
            for (int j = 0; j < Rows; j += 2)
            {
                y[j] = y[j + 1] = 0f;
                Quant4Simd.DotRunWidePair(q, s, _table, (long)j * K, K, _xq, y + j);
            }
        }
    }

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * benchmarkCase.Param<int>(nameof(Rows)) * K;

    public double Bytes(BenchmarkCase benchmarkCase) => benchmarkCase.Param<int>(nameof(Rows)) * ((K / 2.0) + (4.0 * K / 64));
}
