// dB = s·gᵀ·h and dh = s·g·B of LowRankGrads over threads, for the fused LoRA backward
// (LoraMatmul.Backward). Shapes as in LowRankGrads.cs: g [m, out], h [m, r], B [out, r].
// The out columns are cut into fixed chunks k of OutChunk columns [o_k, o_k+1):
//   dB[o_k..o_k+1), :] = s · g[:, o_k..o_k+1)ᵀ · h          (whole: dB's rows never mix chunks)
//   P_k [m, r]         = s · g[:, o_k..o_k+1) · B[o_k..o_k+1), :]
//   dh                 = P_0 + P_1 + …                         (summed in chunk order)
// A thread takes a contiguous run of chunks. The chunks and the order of the final sum do not depend
// on the thread count, so the results are bit-identical for any number of threads (they are not
// Compute(…, SimdPath)'s bits, whose dh sums over all of out in one run).
// Why: as two GEMMs (N = r and M·N = out·r, K = m or out) each product packs g again and forks its
// own threads; here g is read once for both, and 128 rows of B and dB (8 KiB each at r = 16) stay in
// L1 while four rows of g stream past. Six chunks at out = 768 split evenly over two threads.
using System.Buffers;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class LowRankGrads
{
    /// <summary>Out columns per chunk of the threaded dB/dh pass.</summary>
    internal const int OutChunk = 128;

    /// <summary>dB = s·gᵀ·h [out, r] and dh = s·g·B [m, r], both overwritten, on <see cref="KernelOptions.Threads"/> threads;
    /// bit-identical for every thread count.</summary>
    /// <param name="g">Output gradient [m, out].</param>
    /// <param name="h">The forward's h [m, r].</param>
    /// <param name="b">B [out, r].</param>
    /// <param name="scale">s.</param>
    /// <param name="db">Output dB [out, r].</param>
    /// <param name="dh">Output dh [m, r].</param>
    /// <param name="m">Rows.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">r.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A dim is out of range or a span's length differs from what the dims imply.</exception>
    public static void Compute(ReadOnlySpan<float> g, ReadOnlySpan<float> h, ReadOnlySpan<float> b, float scale, Span<float> db, Span<float> dh,
        int m, int outFeatures, int rank, KernelOptions options)
    {
        CheckShapes(g.Length, h.Length, b.Length, db.Length, dh.Length, m, outFeatures, rank);
        db.Clear();
        if (m == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int chunks = (outFeatures + OutChunk - 1) / OutChunk;
        int parts = Math.Min(options.ResolveThreads(), chunks);
        long partial = (long)m * rank;

        // One chunk writes dh itself; more write their partial sums side by side, added after the join
        // (a pooled buffer: at m = 256, out = 768, r = 16 it is 96 KiB, a large-object allocation per call otherwise).
        float[]? partials = chunks == 1 ? null : ArrayPool<float>.Shared.Rent((int)(chunks * partial));
        try
        {
            Run(g, h, b, scale, db, dh, m, outFeatures, rank, path, chunks, parts, partial, partials);
        }
        finally
        {
            if (partials != null)
            {
                ArrayPool<float>.Shared.Return(partials);
            }
        }
    }

    private static void Run(ReadOnlySpan<float> g, ReadOnlySpan<float> h, ReadOnlySpan<float> b, float scale, Span<float> db, Span<float> dh,
        int m, int outFeatures, int rank, SimdPath path, int chunks, int parts, long partial, float[]? partials)
    {
        fixed (float* pg = g, ph = h, pb = b, pdb = db, pdh = dh, pp = partials)
        {
            nint ag = (nint)pg, ah = (nint)ph, ab = (nint)pb, adb = (nint)pdb, adh = (nint)pdh, ap = (nint)pp;
            CpuParallel.For(parts, parts, part =>
            {
                var (first, end) = CpuParallel.Split(chunks, parts, part);
                for (int k = first; k < end; k++)
                {
                    int o0 = k * OutChunk, count = Math.Min(OutChunk, outFeatures - o0);
                    float* target = chunks == 1 ? (float*)adh : (float*)ap + (k * partial);
                    Chunk((float*)ag + o0, outFeatures, (float*)ah, (float*)ab + ((long)o0 * rank), (float*)adb + ((long)o0 * rank), target,
                        scale, m, count, rank, path);
                }
            });

            if (chunks > 1)
            {
                SumPartials(pp, pdh, chunks, partial, path);
            }
        }
    }

    /// <summary>The lengths Compute needs, with the reason when one is off.</summary>
    private static void CheckShapes(long g, long h, long b, long db, long dh, int m, int outFeatures, int rank)
    {
        if (m < 0 || outFeatures <= 0 || rank <= 0)
        {
            throw new ArgumentException($"low-rank grads: m = {m}, out = {outFeatures}, r = {rank} (need m ≥ 0, out ≥ 1, r ≥ 1).", nameof(m));
        }

        if (g != (long)m * outFeatures || h != (long)m * rank || b != (long)outFeatures * rank || db != (long)outFeatures * rank || dh != (long)m * rank)
        {
            throw new ArgumentException($"low-rank grads: g {g}, h {h}, B {b}, dB {db}, dh {dh} floats; "
                + $"m = {m}, out = {outFeatures}, r = {rank} need g [m, out], h and dh [m, r], B and dB [out, r].", nameof(g));
        }
    }

    /// <summary>One chunk: dB's rows accumulated into (already zero), the chunk's dh written to <paramref name="dh"/>.</summary>
    private static void Chunk(float* g, long ldg, float* h, float* b, float* db, float* dh, float scale, int m, int count, int r, SimdPath path)
    {
        int done = 0;
        if (path == SimdPath.Vector512)
        {
            done = Columns<Vector512<float>, V512>(g, ldg, h, b, db, dh, scale, m, count, r, 0);
        }
        else if (path == SimdPath.Vector256)
        {
            done = Columns<Vector256<float>, V256>(g, ldg, h, b, db, dh, scale, m, count, r, 0);
        }

        Columns<float, V1>(g, ldg, h, b, db, dh, scale, m, count, r, done);
    }

    /// <summary>dh = P_0 + P_1 + … in chunk order, element by element (each lane's sum is the same on every path).</summary>
    private static void SumPartials(float* parts, float* dh, int chunks, long count, SimdPath path)
    {
        long i = 0;
        if (path == SimdPath.Vector512)
        {
            i = Sum<Vector512<float>, V512>(parts, dh, chunks, count);
        }
        else if (path == SimdPath.Vector256)
        {
            i = Sum<Vector256<float>, V256>(parts, dh, chunks, count);
        }

        for (; i < count; i++)
        {
            float s = parts[i];
            for (int k = 1; k < chunks; k++)
            {
                s += parts[(k * count) + i];
            }

            dh[i] = s;
        }
    }

    private static long Sum<TV, T>(float* parts, float* dh, int chunks, long count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        long i = 0;
        for (; i + T.Width <= count; i += T.Width)
        {
            TV s = T.Load(parts + i);
            for (int k = 1; k < chunks; k++)
            {
                s = T.Add(s, T.Load(parts + (k * count) + i));
            }

            T.Store(dh + i, s);
        }

        return i;
    }
}
