// The small-m (n ≤ 4 rows of op(A)) paths of the GEMM driver: each streams op(B) once.
//   Gemv:      op(B) columns contiguous (x·Wᵀ, W [out, in]): C[r, j] = Σ_p A[r, p]·W[j, p] as
//              row dot products, threads claiming ranges of j from a shared counter.
//   GemvRows:  op(B) rows contiguous (g·W): C[r, :] += A[r, p]·W[p, :] as row axpys over
//              column chunks that stay in L1.
//   GemvRange: Gemv's body on one thread for columns [j0, j1) only (DecodeGemv, whose caller
//              splits a projection over its own threads): the same PrepareDot and DotRange, so
//              every column equals Gemv's bit for bit.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe partial class GemmDriver
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Gemv<TA, TB>(SimdPath path, int threads, TA a, TB b, int m, int n, int k, float alpha,
        float beta, float* c, int ldc, float* bias)
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        float* rows = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * k * sizeof(float)), 64);
        try
        {
            for (int r = 0; r < m; r++)
            {
                a.Pack(rows + ((long)r * k), r, 1, 0, k, 1);
            }

            b.PrepareDot(rows, k, m);
            int parts = Math.Max(1, Math.Min(threads, n / 64));

            // Each output element is one row's dot product, computed whole by whichever thread
            // takes its range, so the result does not depend on the schedule: threads claim
            // ranges of about 1/16 of a thread's share from a shared counter, and a thread that
            // starts late or runs slow (another VM on its core) takes fewer.
            int grain = parts == 1 ? n : Math.Max(16, n / (parts * 16));
            int next = 0;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                float* sums = stackalloc float[RowDot.MaxRows];
                int j0;
                while ((j0 = Interlocked.Add(ref next, grain) - grain) < n)
                {
                    int j1 = Math.Min(n, j0 + grain);
                    DotRange(b, j0, j1, rows, k, m, path, alpha, beta, c, ldc, bias, sums);
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(rows);
        }
    }

    /// <summary>
    /// c[r·ldc + j] = Σ_p rows[r·k + p]·op(B)[p, j] for j in [j0, j1), r &lt; m, on the calling thread; rows is the caller's
    /// own 64-byte-aligned copy of op(A) [m, k], which the source may rewrite in place (PrepareDot).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void GemvRange<TB>(SimdPath path, TB b, float* rows, int m, int k, int j0, int j1, float* c, int ldc)
        where TB : struct, IPanelB
    {
        b.PrepareDot(rows, k, m);
        float* sums = stackalloc float[RowDot.MaxRows];
        DotRange(b, j0, j1, rows, k, m, path, 1f, 0f, c, ldc, null, sums);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotRange<TB>(TB b, int j0, int j1, float* rows, int k, int m, SimdPath path, float alpha,
        float beta, float* c, int ldc, float* bias, float* sums)
        where TB : struct, IPanelB
    {
        int j = j0;
        if (m == 1)
        {
            for (; j + 1 < j1; j += 2)
            {
                sums[0] = sums[1] = 0f;
                b.DotAddPair(j, rows, path, sums);
                Store(c + j, sums[0], alpha, beta, bias, j);
                Store(c + j + 1, sums[1], alpha, beta, bias, j + 1);
            }
        }

        for (; j < j1; j++)
        {
            new Span<float>(sums, RowDot.MaxRows).Clear();
            b.DotAdd(j, rows, k, m, path, sums);
            for (int r = 0; r < m; r++)
            {
                Store(c + ((long)r * ldc) + j, sums[r], alpha, beta, bias, j);
            }
        }
    }

    /// <summary>*dst = alpha·sum (+ beta·*dst when beta ≠ 0) (+ bias[j] when there is a bias).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* dst, float sum, float alpha, float beta, float* bias, int j)
    {
        float v = alpha * sum;
        if (beta != 0f)
        {
            v += beta * *dst;
        }

        *dst = bias == null ? v : v + bias[j];
    }

    /// <summary>
    /// Small m with op(B) rows contiguous: acc[r, j] = Σ_p A[r, p]·B[p, j] by row axpys over
    /// column chunks that stay in L1, so B is streamed once. With a masked epilogue the
    /// K ≥ split part is summed separately and masked before it is added.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvRows<TA, TB>(SimdPath path, int threads, TA a, TB b, int m, int n, int k, float alpha,
        float beta, float* c, int ldc, float* bias, GemmEpilogue epilogue)
        where TA : struct, IPanelA
        where TB : struct, IPanelB
    {
        const int chunk = 1024;
        int split = epilogue.Active ? Math.Clamp(epilogue.KSplit, 0, k) : k;
        float* rows = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * k * sizeof(float)), 64);
        try
        {
            for (int r = 0; r < m; r++)
            {
                a.Pack(rows + ((long)r * k), r, 1, 0, k, 1);
            }

            int chunks = (n + chunk - 1) / chunk;
            int parts = Math.Max(1, Math.Min(threads, chunks));
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (c0, c1) = CpuParallel.Split(chunks, parts, part);
                float* acc = (float*)NativeMemory.AlignedAlloc((nuint)(2 * RowDot.MaxRows * chunk * sizeof(float)), 64);
                float* masked = acc + (RowDot.MaxRows * chunk);
                try
                {
                    for (int ch = c0; ch < c1; ch++)
                    {
                        int j0 = ch * chunk, j1 = Math.Min(n, j0 + chunk);
                        new Span<float>(acc, 2 * RowDot.MaxRows * chunk).Clear();
                        b.AxpyAdd(rows, k, m, j0, j1, 0, split, acc, chunk, path);
                        if (split < k)
                        {
                            b.AxpyAdd(rows, k, m, j0, j1, split, k, masked, chunk, path);
                        }

                        for (int r = 0; r < m; r++)
                        {
                            float* dst = c + ((long)r * ldc);
                            long maskRow = (long)r * epilogue.MaskLd;
                            for (int j = j0; j < j1; j++)
                            {
                                float sum = acc[(r * chunk) + j - j0];
                                if (split < k)
                                {
                                    sum += epilogue.Mask.Apply(masked[(r * chunk) + j - j0], maskRow + j);
                                }

                                float v = alpha * sum;
                                if (beta != 0f)
                                {
                                    v += beta * dst[j];
                                }

                                dst[j] = bias == null ? v : v + bias[j];
                            }
                        }
                    }
                }
                finally
                {
                    NativeMemory.AlignedFree(acc);
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(rows);
        }
    }
}
