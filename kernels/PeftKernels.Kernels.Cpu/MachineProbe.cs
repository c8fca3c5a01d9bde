// Peak probes, run in the same process as a benchmark so kernel figures can be read as a
// fraction of this machine's own limits:
//   FMA peak:  24 independent vector accumulators per thread (≥ latency × FMA ports), each
//              step one FMA per accumulator: flops = 2 · width · 24 · steps · threads.
//   Read BW:   each thread sums its contiguous share of a buffer with 4 vector accumulators;
//              bytes = buffer size × passes.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Measures this machine's fp32 FMA peak and memory read bandwidth.</summary>
public static unsafe partial class MachineProbe
{
    /// <summary>fp32 FMA throughput in GFLOP/s over <paramref name="threads"/> threads, best of <paramref name="repeats"/>.</summary>
    public static double FmaPeakGflops(int threads, SimdPath path = SimdPath.Auto, long steps = 20_000_000, int repeats = 3)
    {
        var resolved = new KernelOptions(threads, path).ResolvePath();
        int width = resolved switch { SimdPath.Vector512 => 16, SimdPath.Vector256 => 8, _ => 1 };
        double best = 0;
        for (int rep = 0; rep < repeats; rep++)
        {
            var sinks = new float[threads];
            var sw = Stopwatch.StartNew();
            RunThreads(threads, t => sinks[t] = FmaLoop(resolved, steps));
            double seconds = sw.Elapsed.TotalSeconds;
            best = Math.Max(best, 2.0 * width * 24 * steps * threads / seconds / 1e9);
            GC.KeepAlive(sinks);
        }

        return best;
    }

    /// <summary>Read bandwidth in GB/s over a buffer of <paramref name="bytes"/> split across threads, best of <paramref name="repeats"/>.</summary>
    public static double ReadBandwidthGBs(int threads, long bytes, int repeats = 5)
    {
        using var buffer = new ReadBuffer(bytes);
        buffer.Pass(threads); // warm-up, not counted
        double best = 0;
        for (int rep = 0; rep < repeats; rep++)
        {
            best = Math.Max(best, buffer.Pass(threads));
        }

        return best;
    }

    /// <summary>
    /// A buffer for read-bandwidth passes, also interleaved with a kernel's own runs so the
    /// kernel and the probe see the same moment of a shared machine. Every page is touched once
    /// when it is created; a pass sums each thread's contiguous share with 4 vector accumulators.
    /// </summary>
    public sealed class ReadBuffer : IDisposable
    {
        private float* data;
        private readonly long count;

        /// <summary>Allocates and touches <paramref name="bytes"/> (rounded down to 256 bytes).</summary>
        public ReadBuffer(long bytes)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 256L, nameof(bytes));
            count = bytes / sizeof(float) / 64 * 64;
            data = (float*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);
            for (long i = 0; i < count; i += int.MaxValue)
            {
                new Span<float>(data + i, (int)Math.Min(int.MaxValue, count - i)).Fill(1f);
            }
        }

        /// <summary>Bytes read by one <see cref="Pass"/>.</summary>
        public long Bytes => count * sizeof(float);

        /// <summary>Reads the whole buffer once over <paramref name="threads"/> threads; returns GB/s.</summary>
        public double Pass(int threads)
        {
            ObjectDisposedException.ThrowIf(data == null, this);
            var sinks = new float[threads];
            float* p = data;
            long n = count;
            var sw = Stopwatch.StartNew();
            RunThreads(threads, t =>
            {
                long start = n * t / threads / 64 * 64, end = n * (t + 1) / threads / 64 * 64;
                sinks[t] = SumLoop(p + start, end - start);
            });
            double seconds = sw.Elapsed.TotalSeconds;
            GC.KeepAlive(sinks);
            return Bytes / seconds / 1e9;
        }

        /// <summary>Frees the buffer.</summary>
        public void Dispose()
        {
            NativeMemory.AlignedFree(data);
            data = null;
        }
    }

    internal static void RunThreads(int threads, Action<int> body)
    {
        var workers = new Thread[threads];
        using var start = new ManualResetEventSlim(false);
        for (int t = 0; t < threads; t++)
        {
            int id = t;
            workers[t] = new Thread(() =>
            {
                start.Wait();
                body(id);
            });
            workers[t].Start();
        }

        start.Set();
        foreach (var w in workers)
        {
            w.Join();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float FmaLoop(SimdPath path, long steps)
    {
        if (path == SimdPath.Vector512)
        {
            return Fma512(steps);
        }

        if (path == SimdPath.Vector256)
        {
            return Fma256(steps);
        }

        float s0 = 1, s1 = 1, s2 = 1, s3 = 1, s4 = 1, s5 = 1, s6 = 1, s7 = 1;
        float m = 0.999999f, c = 1e-7f;
        for (long i = 0; i < steps * 3; i++)
        {
            s0 = (s0 * m) + c;
            s1 = (s1 * m) + c;
            s2 = (s2 * m) + c;
            s3 = (s3 * m) + c;
            s4 = (s4 * m) + c;
            s5 = (s5 * m) + c;
            s6 = (s6 * m) + c;
            s7 = (s7 * m) + c;
        }

        return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Fma512(long steps)
    {
        var m = Vector512.Create(0.999999f);
        var c = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512<float>.One, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
            a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0,
            a16 = a0, a17 = a0, a18 = a0, a19 = a0, a20 = a0, a21 = a0, a22 = a0, a23 = a0;
        for (long i = 0; i < steps; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c);
            a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c);
            a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c);
            a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c);
            a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c);
            a9 = Vector512.FusedMultiplyAdd(a9, m, c);
            a10 = Vector512.FusedMultiplyAdd(a10, m, c);
            a11 = Vector512.FusedMultiplyAdd(a11, m, c);
            a12 = Vector512.FusedMultiplyAdd(a12, m, c);
            a13 = Vector512.FusedMultiplyAdd(a13, m, c);
            a14 = Vector512.FusedMultiplyAdd(a14, m, c);
            a15 = Vector512.FusedMultiplyAdd(a15, m, c);
            a16 = Vector512.FusedMultiplyAdd(a16, m, c);
            a17 = Vector512.FusedMultiplyAdd(a17, m, c);
            a18 = Vector512.FusedMultiplyAdd(a18, m, c);
            a19 = Vector512.FusedMultiplyAdd(a19, m, c);
            a20 = Vector512.FusedMultiplyAdd(a20, m, c);
            a21 = Vector512.FusedMultiplyAdd(a21, m, c);
            a22 = Vector512.FusedMultiplyAdd(a22, m, c);
            a23 = Vector512.FusedMultiplyAdd(a23, m, c);
        }

        var sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15
            + a16 + a17 + a18 + a19 + a20 + a21 + a22 + a23;
        return Vector512.Sum(sum);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Fma256(long steps)
    {
        var m = Vector256.Create(0.999999f);
        var c = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256<float>.One, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
            a8 = a0, a9 = a0, a10 = a0, a11 = a0;
        for (long i = 0; i < steps * 2; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c);
            a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c);
            a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c);
            a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c);
            a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c);
            a9 = Vector256.FusedMultiplyAdd(a9, m, c);
            a10 = Vector256.FusedMultiplyAdd(a10, m, c);
            a11 = Vector256.FusedMultiplyAdd(a11, m, c);
        }

        var sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
        return Vector256.Sum(sum);
    }

    // The read probe's inner loop: sums count floats (a multiple of 64) with four vector accumulators.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float SumLoop(float* p, long count)
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            Vector256<float> t0 = default, t1 = default, t2 = default, t3 = default;
            for (long i = 0; i < count; i += 32)
            {
                t0 += Vector256.Load(p + i);
                t1 += Vector256.Load(p + i + 8);
                t2 += Vector256.Load(p + i + 16);
                t3 += Vector256.Load(p + i + 24);
            }

            return Vector256.Sum(t0 + t1 + t2 + t3);
        }

        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (long i = 0; i < count; i += 64)
        {
            s0 += Vector512.Load(p + i);
            s1 += Vector512.Load(p + i + 16);
            s2 += Vector512.Load(p + i + 32);
            s3 += Vector512.Load(p + i + 48);
        }

        return Vector512.Sum(s0 + s1 + s2 + s3);
    }
}
