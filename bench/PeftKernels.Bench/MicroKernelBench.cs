// The GEMM micro-kernel alone: 24 calls of the 12 × 32 Vector512 kernel (one MC = 288-row
// block of packed A against one packed B micro-panel, both already in cache), so its
// GFLOP/s can be compared with the FMA peak apart from packing and C traffic.
//   FLOPs = 2 · 12 · 32 · kc · 24;  Bytes = 0 (in-cache operands are not memory traffic)
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>The Vector512 12 × 32 micro-kernel on packed, cache-resident panels.</summary>
public unsafe class MicroKernelBench : IWorkload
{
    private const int Strips = 24;
    private float* _a, _b, _c;

    [Params(256, 512)]
    public int Kc { get; set; } = 256;

    [GlobalSetup]
    public void Setup()
    {
        _a = (float*)NativeMemory.AlignedAlloc((nuint)(12 * Kc * Strips * sizeof(float)), 64);
        _b = (float*)NativeMemory.AlignedAlloc((nuint)(32 * Kc * sizeof(float)), 64);
        _c = (float*)NativeMemory.AlignedAlloc((nuint)(12 * 32 * Strips * sizeof(float)), 64);
        var a = Workload.Random(12L * Kc * Strips, seed: 1);
        var b = Workload.Random(32L * Kc, seed: 2);
        a.CopyTo(new Span<float>(_a, a.Length));
        b.CopyTo(new Span<float>(_b, b.Length));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_a);
        NativeMemory.AlignedFree(_b);
        NativeMemory.AlignedFree(_c);
    }

    [Benchmark]
    public void Vector512Tile()
    {
        for (int s = 0; s < Strips; s++)
        {
            Vector512Kernel.Run(_a + (s * 12 * Kc), _b, Kc, _c + (s * 12 * 32), 32, 1f, 0f, null);
        }
    }

    public double Flops(BenchmarkCase benchmarkCase) => 2.0 * 12 * 32 * benchmarkCase.Param<int>(nameof(Kc)) * Strips;

    public double Bytes(BenchmarkCase benchmarkCase) => 0;
}
