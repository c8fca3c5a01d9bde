// Segmented multi-adapter LoRA on the CPU: many adapters, of different ranks, in one batch of rows.
// x [n, in], y [n, out]; adapter k (SegmentedLoraAdapters: one fp32 pool, per-adapter offsets):
// A_k [r_k, in], B_k [out, r_k], PEFT's layout. Per row i with adapter a(i) and scale s_i:
//   h_i  = A_a(i) · x_i                 [r_a(i)]
//   y_i += s_i · (B_a(i) · h_i)         [out]       rows with a(i) = −1 (no adapter) are not touched
// BGMV (decode): a(i) and s_i per row. SGMV (prefill): rows of one adapter contiguous, segment t =
// rows [starts[t], starts[t + 1]) with one adapter and scale; rows outside every segment untouched.
// Why: S-LoRA / Punica serve many tenants from one base model; gathering each adapter's rows and
// running one LoraBranch per adapter costs a gather, a scatter and two small GEMMs per adapter. Here
// no rank is padded to the largest (an adapter costs r_k·(in + out) per row) and nothing is copied.
// How: rows sharing an adapter are cut into tiles of up to 4 rows (BGMV: rows ordered by adapter by a
// counting sort; SGMV: consecutive rows of a segment); a tile streams A_k's rows once against its 4
// x rows (h, fp32 dots of length in), then B_k's rows once against its 4 h rows (dots of length r_k),
// and adds s·(B·h) to its rows of y. Each row's dots use the same operations whichever tile it is in
// (one accumulator vector per row, lanes summed in Vector.Sum's order, then a scalar tail), and tiles
// write disjoint rows, so y is bit-identical for any thread count and any grouping (SGMV = BGMV).
// Scratch comes from ArrayPool (no managed allocation per call once warm, apart from the closure).
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>SGMV and BGMV: a batch of rows, each with its own LoRA adapter (ranks may differ), on the CPU.</summary>
public static unsafe class SegmentedLora
{
    private const int TileRows = 4;
    private const int ParallelThreshold = 16 * 1024;

    /// <summary>BGMV: y_i += scales[i]·B_k·(A_k·x_i) with k = adapterOfRow[i]; rows with k = −1 are left as they are.</summary>
    /// <param name="x">Input [n, in].</param>
    /// <param name="adapterOfRow">Adapter index per row [n], in [−1, K); −1 = no adapter.</param>
    /// <param name="scales">LoRA scale per row [n] (e.g. alpha_k / r_k).</param>
    /// <param name="adapters">The adapter table: factors read in place.</param>
    /// <param name="y">Output [n, out], accumulated into.</param>
    /// <param name="n">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, an adapter index is outside [−1, K), or an adapter's factors fall outside the pool.</exception>
    public static void Bgmv(ReadOnlySpan<float> x, ReadOnlySpan<int> adapterOfRow, ReadOnlySpan<float> scales, in SegmentedLoraAdapters adapters,
        Span<float> y, int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        int maxRank = SegmentedLoraShapes.Bgmv(x.Length, adapterOfRow, scales.Length, adapters, y.Length, n, inFeatures, outFeatures);
        if (n == 0 || maxRank == 0)
        {
            return;
        }

        int k = adapters.Count;
        var order = ArrayPool<int>.Shared.Rent(n);
        var rowScale = ArrayPool<float>.Shared.Rent(n);
        var tiles = ArrayPool<int>.Shared.Rent(3 * n);
        var next = ArrayPool<int>.Shared.Rent(k + 1);
        try
        {
            // Counting sort of the rows by adapter (stable): next[a] = where adapter a's next row goes.
            Array.Clear(next, 0, k + 1);
            for (int i = 0; i < n; i++)
            {
                if (adapterOfRow[i] >= 0)
                {
                    next[adapterOfRow[i] + 1]++;
                }
            }

            for (int a = 0; a < k; a++)
            {
                next[a + 1] += next[a];
            }

            for (int i = 0; i < n; i++)
            {
                int a = adapterOfRow[i];
                if (a >= 0)
                {
                    int pos = next[a]++;
                    order[pos] = i;
                    rowScale[pos] = scales[i];
                }
            }

            // next[a] is now the end of adapter a's rows (and the start of adapter a + 1's).
            int count = 0;
            for (int a = 0, start = 0; a < k; start = next[a], a++)
            {
                count = AddTiles(tiles, count, start, next[a], a);
            }

            Run(x, order, rowScale, tiles, count, adapters, y, maxRank, inFeatures, outFeatures, options);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(next);
            ArrayPool<int>.Shared.Return(tiles);
            ArrayPool<float>.Shared.Return(rowScale);
            ArrayPool<int>.Shared.Return(order);
        }
    }

    /// <summary>SGMV: for each segment t, y_i += segmentScales[t]·B_k·(A_k·x_i) on its rows i ∈ [segmentStarts[t], segmentStarts[t + 1]), k = segmentAdapters[t] (−1: rows left as they are).</summary>
    /// <param name="x">Input [n, in].</param>
    /// <param name="segmentStarts">S + 1 row indices: each segment's first row, then the end of the last; never decreasing, inside [0, n].</param>
    /// <param name="segmentAdapters">Adapter index per segment [S], in [−1, K).</param>
    /// <param name="segmentScales">LoRA scale per segment [S].</param>
    /// <param name="adapters">The adapter table: factors read in place.</param>
    /// <param name="y">Output [n, out], accumulated into (rows outside every segment are not touched).</param>
    /// <param name="n">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, segment starts decrease or leave [0, n], an adapter index is outside [−1, K), or an adapter's factors fall outside the pool.</exception>
    public static void Sgmv(ReadOnlySpan<float> x, ReadOnlySpan<int> segmentStarts, ReadOnlySpan<int> segmentAdapters, ReadOnlySpan<float> segmentScales,
        in SegmentedLoraAdapters adapters, Span<float> y, int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        int maxRank = SegmentedLoraShapes.Sgmv(x.Length, segmentStarts, segmentAdapters, segmentScales.Length, adapters, y.Length, n, inFeatures, outFeatures);
        if (n == 0 || maxRank == 0)
        {
            return;
        }

        var order = ArrayPool<int>.Shared.Rent(n);
        var rowScale = ArrayPool<float>.Shared.Rent(n);
        var tiles = ArrayPool<int>.Shared.Rent(3 * n);
        try
        {
            int count = 0;
            for (int t = 0; t < segmentAdapters.Length; t++)
            {
                int start = segmentStarts[t], end = segmentStarts[t + 1];
                for (int i = start; i < end; i++)
                {
                    order[i] = i;
                    rowScale[i] = segmentScales[t];
                }

                if (segmentAdapters[t] >= 0)
                {
                    count = AddTiles(tiles, count, start, end, segmentAdapters[t]);
                }
            }

            Run(x, order, rowScale, tiles, count, adapters, y, maxRank, inFeatures, outFeatures, options);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(tiles);
            ArrayPool<float>.Shared.Return(rowScale);
            ArrayPool<int>.Shared.Return(order);
        }
    }

    /// <summary>Cuts entries [start, end) of the row order into tiles (first entry, rows, adapter) of up to TileRows rows.</summary>
    private static int AddTiles(int[] tiles, int count, int start, int end, int adapter)
    {
        for (int p = start; p < end; p += TileRows)
        {
            tiles[3 * count] = p;
            tiles[(3 * count) + 1] = Math.Min(TileRows, end - p);
            tiles[(3 * count) + 2] = adapter;
            count++;
        }

        return count;
    }

    private static void Run(ReadOnlySpan<float> x, int[] order, float[] rowScale, int[] tiles, int count, in SegmentedLoraAdapters adapters,
        Span<float> y, int maxRank, int inFeatures, int outFeatures, in KernelOptions options)
    {
        if (count == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        long work = 0;
        for (int t = 0; t < count; t++)
        {
            work += (long)tiles[(3 * t) + 1] * adapters.Ranks[tiles[(3 * t) + 2]] * (inFeatures + outFeatures);
        }

        int parts = work < ParallelThreshold ? 1 : Math.Min(threads, count);
        fixed (float* px = x, py = y, pf = adapters.Factors, ps = rowScale)
        fixed (int* po = order, pt = tiles, pr = adapters.Ranks, pa = adapters.AOffsets, pb = adapters.BOffsets)
        {
            float* xs = px, ys = py, fs = pf, ss = ps;
            int* os = po, ts = pt, rs = pr, aos = pa, bos = pb;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (t0, t1) = CpuParallel.Split(count, parts, part);
                var scratch = ArrayPool<float>.Shared.Rent(TileRows * maxRank);
                try
                {
                    fixed (float* h = scratch)
                    {
                        for (int t = t0; t < t1; t++)
                        {
                            int first = ts[3 * t], m = ts[(3 * t) + 1], k = ts[(3 * t) + 2];
                            Tile(xs, os + first, ss + first, m, fs + aos[k], fs + bos[k], rs[k], ys, h, inFeatures, outFeatures, path);
                        }
                    }
                }
                finally
                {
                    ArrayPool<float>.Shared.Return(scratch);
                }
            });
        }
    }

    /// <summary>y[rows[j]] += scale[j]·B·(A·x[rows[j]]) for the m (≤ 4) rows of one tile; h is scratch [4, r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(float* x, int* rows, float* scale, int m, float* a, float* b, int rank, float* y, float* h,
        int inFeatures, int outFeatures, SimdPath path)
    {
        float* x0 = x + ((long)rows[0] * inFeatures);
        float* x1 = m > 1 ? x + ((long)rows[1] * inFeatures) : x0;
        float* x2 = m > 2 ? x + ((long)rows[2] * inFeatures) : x0;
        float* x3 = m > 3 ? x + ((long)rows[3] * inFeatures) : x0;
        for (int q = 0; q < rank; q++)
        {
            Dot(a + ((long)q * inFeatures), x0, x1, x2, x3, m, inFeatures, path, out h[q], out h[rank + q], out h[(2 * rank) + q], out h[(3 * rank) + q]);
        }

        // The dots over r use the widest path whose vector fits in r (r = 8 on AVX-512 takes 256-bit lanes).
        var rankPath = path == SimdPath.Scalar || rank < 8 ? SimdPath.Scalar
            : path == SimdPath.Vector512 && rank >= 16 ? SimdPath.Vector512 : SimdPath.Vector256;
        float* y0 = y + ((long)rows[0] * outFeatures);
        float* y1 = m > 1 ? y + ((long)rows[1] * outFeatures) : y0;
        float* y2 = m > 2 ? y + ((long)rows[2] * outFeatures) : y0;
        float* y3 = m > 3 ? y + ((long)rows[3] * outFeatures) : y0;
        float s0 = scale[0], s1 = m > 1 ? scale[1] : 0f, s2 = m > 2 ? scale[2] : 0f, s3 = m > 3 ? scale[3] : 0f;
        for (int o = 0; o < outFeatures; o++)
        {
            Dot(b + ((long)o * rank), h, h + rank, h + (2 * rank), h + (3 * rank), m, rank, rankPath, out float d0, out float d1, out float d2, out float d3);
            y0[o] += s0 * d0;
            if (m > 1)
            {
                y1[o] += s1 * d1;
                if (m > 2)
                {
                    y2[o] += s2 * d2;
                    if (m > 3)
                    {
                        y3[o] += s3 * d3;
                    }
                }
            }
        }
    }

    /// <summary>s_j = w · r_j (length k) for the first m rows; a row's sum does not depend on m or on the other rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot(float* w, float* r0, float* r1, float* r2, float* r3, int m, int k, SimdPath path,
        out float s0, out float s1, out float s2, out float s3)
    {
        int p = 0;
        s0 = s1 = s2 = s3 = 0f;
        if (path == SimdPath.Vector512)
        {
            p = Dot<Vector512<float>, V512>(w, r0, r1, r2, r3, m, k, out s0, out s1, out s2, out s3);
        }
        else if (path == SimdPath.Vector256)
        {
            p = Dot<Vector256<float>, V256>(w, r0, r1, r2, r3, m, k, out s0, out s1, out s2, out s3);
        }

        for (; p < k; p++)
        {
            float wv = w[p];
            s0 += r0[p] * wv;
            s1 += r1[p] * wv;
            s2 += r2[p] * wv;
            s3 += r3[p] * wv;
        }
    }

    /// <summary>The whole vectors of the m row sums, one accumulator a row; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot<TV, TVec>(float* w, float* r0, float* r1, float* r2, float* r3, int m, int k,
        out float s0, out float s1, out float s2, out float s3)
        where TV : unmanaged
        where TVec : struct, IVec<TV>
    {
        int width = TVec.Width, p = 0;
        TV c0 = default, c1 = default, c2 = default, c3 = default;
        for (; p <= k - width; p += width)
        {
            TV wv = TVec.Load(w + p);
            c0 = TVec.Fma(TVec.Load(r0 + p), wv, c0);
            if (m > 1)
            {
                c1 = TVec.Fma(TVec.Load(r1 + p), wv, c1);
                if (m > 2)
                {
                    c2 = TVec.Fma(TVec.Load(r2 + p), wv, c2);
                    if (m > 3)
                    {
                        c3 = TVec.Fma(TVec.Load(r3 + p), wv, c3);
                    }
                }
            }
        }

        s0 = TVec.Sum(c0);
        s1 = TVec.Sum(c1);
        s2 = TVec.Sum(c2);
        s3 = TVec.Sum(c3);
        return p;
    }
}
