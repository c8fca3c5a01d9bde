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
// counting sort; SGMV: consecutive rows of a segment); a tile streams A_k once against its x rows
// (h = fp32 dots of length in), then B_k once against its h rows (on the 512-bit path 16 outputs a vector
// over register-transposed blocks of B, SegmentedLoraExpand.cs; else dots of length r_k), and adds s·(B·h)
// to its rows of y. Several weight rows go at a time
// (4 for a lone row, 2 for 2–4 rows) so the FMA chains are independent. Every dot is one accumulator's
// chain of FMAs over whole vectors, its lanes summed in Vector.Sum's order, then a scalar tail: the same
// operations whichever tile a row is in and whatever shares it (the 512-bit expand included: per output
// lane, fixed FMA chains over r); tiles write disjoint rows and are split over threads in contiguous runs,
// so y is bit-identical for any thread count and grouping (SGMV = BGMV).
// Scratch comes from ArrayPool, and the fork-join's closure is only created when the work is split
// over threads: on one thread a call allocates nothing once warm.
using System.Buffers;
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

/// <summary>SGMV and BGMV: a batch of rows, each with its own LoRA adapter (ranks may differ), on the CPU.</summary>
public static unsafe class SegmentedLora
{
    private const int TileRows = SegmentedLoraDot.TileRows;
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

        // Tile t's work is rows·r·(in + out); a thread takes a contiguous run of tiles of about equal work.
        var prefix = ArrayPool<long>.Shared.Rent(count + 1);
        try
        {
            prefix[0] = 0;
            for (int t = 0; t < count; t++)
            {
                prefix[t + 1] = prefix[t] + ((long)tiles[(3 * t) + 1] * adapters.Ranks[tiles[(3 * t) + 2]] * (inFeatures + outFeatures));
            }

            int parts = prefix[count] < ParallelThreshold ? 1 : Math.Min(threads, count);
            Run(x, order, rowScale, tiles, prefix, count, parts, threads, adapters, y, maxRank, inFeatures, outFeatures, path);
        }
        finally
        {
            ArrayPool<long>.Shared.Return(prefix);
        }
    }

    private static void Run(ReadOnlySpan<float> x, int[] order, float[] rowScale, int[] tiles, long[] prefix, int count, int parts, int threads,
        in SegmentedLoraAdapters adapters, Span<float> y, int maxRank, int inFeatures, int outFeatures, SimdPath path)
    {
        fixed (float* px = x, py = y, pf = adapters.Factors, ps = rowScale)
        fixed (int* po = order, pt = tiles, pr = adapters.Ranks, pa = adapters.AOffsets, pb = adapters.BOffsets)
        {
            var job = new TileJob(px, po, ps, pt, pf, pr, pa, pb, py, prefix, count, maxRank, inFeatures, outFeatures, path);
            if (parts == 1)
            {
                job.Part(0, 1);
            }
            else
            {
                RunParallel(job, parts, threads);
            }
        }
    }

    /// <summary>The fork-join over parts: its own method, so the closure is only created when there is more than one part.</summary>
    private static void RunParallel(TileJob job, int parts, int threads) =>
        CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) => job.Part(part, parts));

    /// <summary>The pointers and dims of one call; <see cref="Part"/> runs one thread's contiguous run of tiles.</summary>
    private readonly struct TileJob(float* x, int* order, float* rowScale, int* tiles, float* factors, int* ranks, int* aOffsets, int* bOffsets,
        float* y, long[] prefix, int count, int maxRank, int inFeatures, int outFeatures, SimdPath path)
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Part(int part, int parts)
        {
            int t0 = FirstTile(prefix, count, prefix[count] * part / parts), t1 = FirstTile(prefix, count, prefix[count] * (part + 1) / parts);
            var scratch = ArrayPool<float>.Shared.Rent(TileRows * maxRank);
            try
            {
                fixed (float* h = scratch)
                {
                    for (int t = t0; t < t1; t++)
                    {
                        int first = tiles[3 * t], m = tiles[(3 * t) + 1], k = tiles[(3 * t) + 2];
                        Tile(x, order + first, rowScale + first, m, factors + aOffsets[k], factors + bOffsets[k], ranks[k], y, h, inFeatures, outFeatures, path);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        }
    }

    /// <summary>The first tile whose work starts at or after <paramref name="at"/> (count when none).</summary>
    private static int FirstTile(long[] prefix, int count, long at)
    {
        int lo = 0, hi = count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (prefix[mid] < at)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }

    /// <summary>y[rows[j]] += scale[j]·B·(A·x[rows[j]]) for the m (≤ 4) rows of one tile; h is scratch [4, r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(float* x, int* rows, float* scale, int m, float* a, float* b, int rank, float* y, float* h,
        int inFeatures, int outFeatures, SimdPath path)
    {
        var xr = stackalloc float*[TileRows];
        var yr = stackalloc float*[TileRows];
        for (int j = 0; j < TileRows; j++)
        {
            xr[j] = x + ((long)rows[j < m ? j : 0] * inFeatures);
            yr[j] = y + ((long)rows[j < m ? j : 0] * outFeatures);
        }

        // Weight rows per block: 4 independent chains for a lone row, 2 × m for more (8 accumulators at most).
        int block = m == 1 ? 4 : 2;
        var d = stackalloc float[TileRows * TileRows];
        for (int q = 0; q < rank; q += block)
        {
            int nw = Math.Min(block, rank - q);
            SegmentedLoraDot.Dot(a + ((long)q * inFeatures), inFeatures, nw, xr, m, inFeatures, path, d);
            for (int i = 0; i < nw; i++)
            {
                for (int j = 0; j < m; j++)
                {
                    h[(j * rank) + q + i] = d[(i * TileRows) + j];
                }
            }
        }

        // 512-bit: 16 outputs a vector over a register-transposed block of B (SegmentedLoraExpand).
        if (path == SimdPath.Vector512)
        {
            SegmentedLoraExpand.Run(b, rank, h, m, scale, yr, outFeatures);
            return;
        }

        // Otherwise dots over r, on 256-bit lanes when r fills one.
        var rankPath = path == SimdPath.Scalar || rank < 8 ? SimdPath.Scalar : SimdPath.Vector256;
        var hr = stackalloc float*[TileRows];
        for (int j = 0; j < TileRows; j++)
        {
            hr[j] = h + (j * rank);
        }

        for (int o = 0; o < outFeatures; o += block)
        {
            int nw = Math.Min(block, outFeatures - o);
            SegmentedLoraDot.Dot(b + ((long)o * rank), rank, nw, hr, m, rank, rankPath, d);
            for (int i = 0; i < nw; i++)
            {
                for (int j = 0; j < m; j++)
                {
                    yr[j][o + i] += scale[j] * d[(i * TileRows) + j];
                }
            }
        }
    }
}
