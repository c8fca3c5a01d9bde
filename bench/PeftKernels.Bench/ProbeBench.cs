// The peak probes as benchmarks, so the machine's limits sit in the same table as the kernels.
//   Fma:  MachineProbe's FMA loop, 24 independent vector accumulators per thread, one FMA each
//         per step, width = fp32 lanes of the widest SIMD path (16, 8 or 1):
//         FLOPs = 2 · width · 24 · steps · threads                       (no memory traffic)
//   Read: each thread sums its contiguous share of the first `mib` MiB of a 1 GiB buffer with
//         4 vector accumulators: Bytes = mib · 2²⁰ (read once; the adds are not counted as
//         FLOPs). 64 MiB fits this machine's last-level cache; 1 GiB does not.
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Bench;

/// <summary>FMA throughput and memory read bandwidth, 1 and 2 threads.</summary>
public unsafe class ProbeBench : IWorkload
{
    private const long FmaSteps = 10_000_000;
    private const long BufferBytes = 1L << 30;
    private float* _buffer;

    [Params(1, 2)]
    public int Threads { get; set; } = 1;

    [GlobalSetup(Target = nameof(Read))]
    public void SetupRead()
    {
        _buffer = (float*)NativeMemory.AlignedAlloc((nuint)BufferBytes, 64);
        new Span<float>(_buffer, (int)(BufferBytes / sizeof(float))).Fill(1f); // every page touched before timing
    }

    [GlobalCleanup(Target = nameof(Read))]
    public void CleanupRead()
    {
        NativeMemory.AlignedFree(_buffer);
        _buffer = null;
    }

    [Benchmark]
    public double Fma() => MachineProbe.FmaPeakGflops(Threads, SimdPath.Auto, FmaSteps, repeats: 1);

    [Benchmark]
    [Arguments(64)]
    [Arguments(1024)]
    public float Read(int mib)
    {
        long count = (long)mib << 18; // floats in mib MiB
        if (Threads == 1)
        {
            return Sum(_buffer, count);
        }

        var sums = new float[Threads];
        float* p = _buffer;
        Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, t =>
        {
            long start = count * t / Threads / 64 * 64, end = count * (t + 1) / Threads / 64 * 64;
            sums[t] = Sum(p + start, end - start);
        });
        return sums.Sum();
    }

    public double Flops(BenchmarkCase benchmarkCase)
    {
        if (benchmarkCase.Method() != nameof(Fma))
        {
            return 0;
        }

        int width = KernelOptions.Best switch { SimdPath.Vector512 => 16, SimdPath.Vector256 => 8, _ => 1 };
        return 2.0 * width * 24 * FmaSteps * benchmarkCase.Param<int>(nameof(Threads));
    }

    public double Bytes(BenchmarkCase benchmarkCase) =>
        benchmarkCase.Method() == nameof(Read) ? benchmarkCase.Param<int>("mib") * 1048576.0 : 0;

    private static float Sum(float* p, long count) => MachineProbe.SumLoop(p, count);
}
