// Segmented multi-adapter LoRA on the GPU (SegmentedLora's math on device views): many adapters, of
// different ranks, in one batch of rows. x [n, in], y [n, out]; the adapter table on the device is
// SegmentedLoraAdapters' layout: one fp32 pool `factors`, per adapter k the rank ranks[k] and the
// offsets of A_k [r_k, in] (aOffsets[k]) and B_k [out, r_k] (bOffsets[k]), PEFT's layout, no padding
// to the largest rank. Per row i with adapter a(i) and scale s_i:
//   h[i, q] = Σ_p A_a(i)[q, p] · x[i, p]          q < r_a(i)       (phase 1, ShrinkKernel)
//   y[i, j] += s_i · Σ_q B_a(i)[j, q] · h[i, q]    j < out          (phase 2, ExpandKernel)
// rows with a(i) = −1 are not touched. BGMV (decode): a(i), s_i per row. SGMV (prefill): segment t =
// rows [starts[t], starts[t + 1]) with one adapter and scale (a row finds its segment by a binary
// search over the starts; empty segments allowed); rows outside every segment are not touched.
// h is the caller's scratch [n, maxRank] (row i at i·maxRank, its first r_a(i) entries used), so a
// decode loop allocates nothing and the launchers only enqueue (GpuLaunch's rule).
// Why: S-LoRA / Punica serve many tenants from one base model; one LoraBranch per adapter costs a
// gather, a scatter and two GEMMs per adapter; here each row reads its own adapter in place.
// How: phase 1 is one group of 8 warps per (row, block of 32 rank indices), each warp 4 consecutive
// rank indices: lane-strided dots over in (x read once for the 4 rows of A_k, four chains in flight),
// the four reduced together by an xor butterfly that halves the set at its first two steps (6
// shuffles, not 4·5); warps and groups past the row's rank return at once. Phase 2 is one thread per
// output element: a sequential dot of length r_a(i) (B_k's row j is contiguous, so a warp reads one
// contiguous block of B_k), then y += s·dot. The sums are reassociated (warp tree instead of the CPU's
// vector lanes): equal to the CPU SegmentedLora within fp32 rounding, and the same on every run; a row
// gets the same bits from SGMV and BGMV.
// Values that live on the device (adapter indices, segment starts, ranks, offsets) are not downloaded
// (GpuLaunch's rule): the caller checks them on the host before upload (CheckAdapters, CheckRows,
// CheckSegments, the same checks and messages as SegmentedLoraShapes). The kernels still skip an
// adapter index outside [0, K) and never touch h past a row's maxRank entries. Forward only (serving).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Gpu;

/// <summary>SGMV and BGMV: a batch of rows, each with its own LoRA adapter (ranks may differ), on an ILGPU accelerator.</summary>
public static class SegmentedLoraKernels
{
    private const int WarpsPerGroup = 8;
    private const int RanksPerWarp = 4;
    private const int RanksPerGroup = WarpsPerGroup * RanksPerWarp;

    /// <summary>BGMV: y_i += scales[i]·B_k·(A_k·x_i) with k = adapterOfRow[i]; rows with k = −1 are left as they are. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">Input [n, in].</param>
    /// <param name="adapterOfRow">Adapter index per row [n], in [−1, K) (checked on the host: <see cref="CheckRows"/>).</param>
    /// <param name="scales">LoRA scale per row [n].</param>
    /// <param name="factors">The adapter pool (SegmentedLoraAdapters' layout).</param>
    /// <param name="ranks">r_k per adapter [K].</param>
    /// <param name="aOffsets">Start of A_k [r_k, in] in the pool [K].</param>
    /// <param name="bOffsets">Start of B_k [out, r_k] in the pool [K].</param>
    /// <param name="maxRank">The largest rank (≥ every r_k; <see cref="CheckAdapters"/> returns it).</param>
    /// <param name="y">Output [n, out], accumulated into.</param>
    /// <param name="h">Scratch of at least n·maxRank floats (contents overwritten, meaningless after).</param>
    /// <param name="n">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply, maxRank is below 1 with adapters present, or h is too short.</exception>
    public static void Bgmv(Accelerator accelerator, FloatView x, IntView adapterOfRow, FloatView scales,
        FloatView factors, IntView ranks, IntView aOffsets, IntView bOffsets, int maxRank,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures)
    {
        GpuCheck.NotNull(accelerator);
        Common(x, factors, ranks, aOffsets, bOffsets, maxRank, y, h, n, inFeatures, outFeatures);
        Check.Length(nameof(adapterOfRow), adapterOfRow.Length, n, "n: one adapter index per row");
        Check.Length(nameof(scales), scales.Length, n, "n: one scale per row");
        var rows = new RowAdapters(adapterOfRow, scales, default, -1, (int)ranks.Length);
        Launch(accelerator, x, factors, ranks, aOffsets, bOffsets, maxRank, rows, y, h, n, inFeatures, outFeatures);
    }

    /// <summary>SGMV: for each segment t, y_i += segmentScales[t]·B_k·(A_k·x_i) on its rows i ∈ [segmentStarts[t], segmentStarts[t + 1]), k = segmentAdapters[t] (−1: rows left as they are); rows outside every segment are left as they are. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">Input [n, in].</param>
    /// <param name="segmentStarts">S + 1 row indices, never decreasing, inside [0, n] (checked on the host: <see cref="CheckSegments"/>).</param>
    /// <param name="segmentAdapters">Adapter index per segment [S], in [−1, K).</param>
    /// <param name="segmentScales">LoRA scale per segment [S].</param>
    /// <param name="factors">The adapter pool (SegmentedLoraAdapters' layout).</param>
    /// <param name="ranks">r_k per adapter [K].</param>
    /// <param name="aOffsets">Start of A_k [r_k, in] in the pool [K].</param>
    /// <param name="bOffsets">Start of B_k [out, r_k] in the pool [K].</param>
    /// <param name="maxRank">The largest rank (≥ every r_k; <see cref="CheckAdapters"/> returns it).</param>
    /// <param name="y">Output [n, out], accumulated into.</param>
    /// <param name="h">Scratch of at least n·maxRank floats (contents overwritten, meaningless after).</param>
    /// <param name="n">Rows.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply, maxRank is below 1 with adapters present, or h is too short.</exception>
    public static void Sgmv(Accelerator accelerator, FloatView x, IntView segmentStarts, IntView segmentAdapters, FloatView segmentScales,
        FloatView factors, IntView ranks, IntView aOffsets, IntView bOffsets, int maxRank,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures)
    {
        GpuCheck.NotNull(accelerator);
        Common(x, factors, ranks, aOffsets, bOffsets, maxRank, y, h, n, inFeatures, outFeatures);
        long s = segmentAdapters.Length;
        GpuCheck.FitsInt(s, nameof(segmentAdapters));
        Check.Length(nameof(segmentStarts), segmentStarts.Length, s + 1, "segments + 1: each segment's first row, then the end of the last");
        Check.Length(nameof(segmentScales), segmentScales.Length, s, "segments: one scale per segment");
        var rows = new RowAdapters(segmentAdapters, segmentScales, segmentStarts, (int)s, (int)ranks.Length);
        Launch(accelerator, x, factors, ranks, aOffsets, bOffsets, maxRank, rows, y, h, n, inFeatures, outFeatures);
    }

    /// <summary>Checks a device adapter table's host copy before upload (as SegmentedLoraShapes): K = ranks.Length offsets each, every r_k ≥ 1, every A_k and B_k inside the pool. Returns the largest rank (0 when K = 0), the launchers' maxRank.</summary>
    /// <param name="ranks">r_k per adapter.</param>
    /// <param name="aOffsets">Start of A_k per adapter.</param>
    /// <param name="bOffsets">Start of B_k per adapter.</param>
    /// <param name="poolLength">Floats in the pool (factors.Length).</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <exception cref="ArgumentException">A length, rank or offset is wrong (the message names it).</exception>
    public static int CheckAdapters(ReadOnlySpan<int> ranks, ReadOnlySpan<int> aOffsets, ReadOnlySpan<int> bOffsets, long poolLength,
        int inFeatures, int outFeatures)
    {
        Check.Positive((inFeatures, "inFeatures"), (outFeatures, "outFeatures"));
        int k = ranks.Length;
        Check.Length("aOffsets", aOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        Check.Length("bOffsets", bOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        int maxRank = 0;
        for (int i = 0; i < k; i++)
        {
            int r = ranks[i];
            Check.Require(r > 0, "ranks", $"ranks[{i}] = {r}; an adapter's rank must be ≥ 1.");
            Extent("aOffsets", i, aOffsets[i], (long)r * inFeatures, $"A [{r}, {inFeatures}]", poolLength);
            Extent("bOffsets", i, bOffsets[i], (long)outFeatures * r, $"B [{outFeatures}, {r}]", poolLength);
            maxRank = Math.Max(maxRank, r);
        }

        return maxRank;
    }

    /// <summary>Checks BGMV's adapter indices on the host before upload: each in [−1, K).</summary>
    /// <param name="adapterOfRow">Adapter index per row.</param>
    /// <param name="adapterCount">K.</param>
    /// <exception cref="ArgumentException">An index is outside [−1, K) (the message names the row).</exception>
    public static void CheckRows(ReadOnlySpan<int> adapterOfRow, int adapterCount)
    {
        for (int i = 0; i < adapterOfRow.Length; i++)
        {
            Index("adapterOfRow", i, adapterOfRow[i], adapterCount);
        }
    }

    /// <summary>Checks SGMV's segments on the host before upload: S + 1 starts, never decreasing, inside [0, n]; each adapter index in [−1, K).</summary>
    /// <param name="segmentStarts">S + 1 row indices.</param>
    /// <param name="segmentAdapters">Adapter index per segment [S].</param>
    /// <param name="n">Rows.</param>
    /// <param name="adapterCount">K.</param>
    /// <exception cref="ArgumentException">A length, start or index is wrong (the message names it).</exception>
    public static void CheckSegments(ReadOnlySpan<int> segmentStarts, ReadOnlySpan<int> segmentAdapters, int n, int adapterCount)
    {
        int s = segmentAdapters.Length;
        Check.Length("segmentStarts", segmentStarts.Length, (long)s + 1, "segments + 1: each segment's first row, then the end of the last");
        Check.Require(segmentStarts[0] >= 0, "segmentStarts", $"segmentStarts[0] = {segmentStarts[0]} is negative.");
        Check.Require(segmentStarts[s] <= n, "segmentStarts", $"segmentStarts[{s}] = {segmentStarts[s]} (the end of the last segment) is past n = {n}.");
        for (int i = 0; i < s; i++)
        {
            Check.Require(segmentStarts[i + 1] >= segmentStarts[i], "segmentStarts",
                $"segmentStarts[{i + 1}] = {segmentStarts[i + 1]} is less than segmentStarts[{i}] = {segmentStarts[i]}; segment starts must not decrease.");
            Index("segmentAdapters", i, segmentAdapters[i], adapterCount);
        }
    }

    /// <summary>Phase 1: a group per (row i, block of 32 rank indices), a warp per 4 of them: h[i, q] = A_k[q, :]·x[i, :].</summary>
    internal static void ShrinkKernel(FloatView x, AdapterTable table, RowAdapters rows, FloatView h, Dims d)
    {
        int i = Grid.IdxX / d.RankBlocks, q = ((Grid.IdxX % d.RankBlocks) * RanksPerGroup) + (Warp.WarpIdx * RanksPerWarp), lane = Warp.LaneIdx;
        int k = rows.Adapter(i);
        if (k < 0)
        {
            return;
        }

        // m (1 to 4) consecutive rank indices from q: the same for the whole warp, so the branches do not diverge.
        int m = Math.Min(RanksPerWarp, table.Rank(k, d.MaxRank) - q);
        if (m <= 0)
        {
            return;
        }

        int a = table.AOffsets[k] + (q * d.In), xi = i * d.In;
        float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
        for (int p = lane; p < d.In; p += GpuMath.WarpSize)
        {
            float xv = x[xi + p];
            s0 += table.Factors[a + p] * xv;
            if (m > 1)
            {
                s1 += table.Factors[a + d.In + p] * xv;
            }

            if (m > 2)
            {
                s2 += table.Factors[a + (2 * d.In) + p] * xv;
            }

            if (m > 3)
            {
                s3 += table.Factors[a + (3 * d.In) + p] * xv;
            }
        }

        // The four sums in 6 shuffles instead of 4·5: halve the set while halving the lanes (xor 16: lanes with bit 4 keep
        // s2, s3, the others s0, s1; xor 8: bit 3 picks one), then the plain butterfly; lane 8·c ends with sum c.
        bool high = (lane & 16) != 0, odd = (lane & 8) != 0;
        float t0 = (high ? s2 : s0) + Warp.ShuffleXor(high ? s0 : s2, 16);
        float t1 = (high ? s3 : s1) + Warp.ShuffleXor(high ? s1 : s3, 16);
        float u = (odd ? t1 : t0) + Warp.ShuffleXor(odd ? t0 : t1, 8);
        for (int delta = 4; delta > 0; delta >>= 1)
        {
            u += Warp.ShuffleXor(u, delta);
        }

        if ((lane & 7) == 0 && (lane >> 3) < m)
        {
            h[(i * d.MaxRank) + q + (lane >> 3)] = u;
        }
    }

    /// <summary>Phase 2: one thread per output element: y[i, j] += s_i·B_k[j, :]·h[i, :r_k].</summary>
    internal static void ExpandKernel(Index1D e, AdapterTable table, RowAdapters rows, FloatView h, FloatView y, Dims d)
    {
        int i = e / d.Out, j = e % d.Out;
        int slot = rows.Slot(i);
        int k = slot < 0 ? -1 : rows.Adapters[slot];
        if (k < 0 || k >= rows.Count)
        {
            return;
        }

        int r = table.Rank(k, d.MaxRank), b = table.BOffsets[k] + (j * r), hi = i * d.MaxRank;
        float sum = 0f;
        for (int q = 0; q < r; q++)
        {
            sum += table.Factors[b + q] * h[hi + q];
        }

        y[e] += rows.Scales[slot] * sum;
    }

    private static void Common(FloatView x, FloatView factors, IntView ranks, IntView aOffsets, IntView bOffsets, int maxRank,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures)
    {
        Check.NonNegative(n, "n");
        Check.Positive((inFeatures, "inFeatures"), (outFeatures, "outFeatures"));
        Check.Length(nameof(x), x.Length, (long)n * inFeatures, "n·inFeatures");
        Check.Length(nameof(y), y.Length, (long)n * outFeatures, "n·outFeatures");
        long k = ranks.Length;
        Check.Length(nameof(aOffsets), aOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        Check.Length(nameof(bOffsets), bOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        GpuCheck.FitsInt(k, nameof(ranks));
        GpuCheck.FitsInt(x.Length, nameof(x));
        GpuCheck.FitsInt(y.Length, nameof(y));
        GpuCheck.FitsInt(factors.Length, nameof(factors));
        if (k == 0)
        {
            return;
        }

        Check.Require(maxRank >= 1, nameof(maxRank), $"maxRank = {maxRank}; with {k} adapters it must be the largest rank (≥ 1; CheckAdapters returns it).");
        Check.Require(h.Length >= (long)n * maxRank, nameof(h),
            $"h has length {h.Length}; expected at least {(long)n * maxRank} (n·maxRank = {n}·{maxRank}: the scratch of A·x).");
        GpuCheck.FitsInt((long)n * maxRank, nameof(h));
    }

    private static void Launch(Accelerator accelerator, FloatView x, FloatView factors, IntView ranks, IntView aOffsets, IntView bOffsets,
        int maxRank, RowAdapters rows, FloatView y, FloatView h, int n, int inFeatures, int outFeatures)
    {
        if (n == 0 || ranks.Length == 0)
        {
            return; // no rows, or no adapters (every index must then be −1)
        }

        var table = new AdapterTable(factors, ranks, aOffsets, bOffsets);
        int rankBlocks = (maxRank + RanksPerGroup - 1) / RanksPerGroup;
        var d = new Dims(n, inFeatures, outFeatures, maxRank, rankBlocks);
        var kernels = Loaded.For(accelerator);
        kernels.Shrink(new KernelConfig(n * rankBlocks, WarpsPerGroup * GpuMath.WarpSize), x, table, rows, h, d);
        kernels.Expand(n * outFeatures, table, rows, h, y, d);
    }

    private static void Extent(string name, int adapter, int offset, long length, string what, long pool) =>
        Check.Require(offset >= 0 && offset + length <= pool, name,
            $"{name}[{adapter}] = {offset}: adapter {adapter}'s {what} needs floats [{offset}, {offset + length}) but the pool (factors) has {pool}.");

    private static void Index(string name, int i, int adapter, int count) =>
        Check.Require(adapter >= -1 && adapter < count, name,
            $"{name}[{i}] = {adapter} is outside [-1, {count}): adapters are 0 … {count - 1}, and -1 means no adapter.");

    internal readonly record struct Dims(int N, int In, int Out, int MaxRank, int RankBlocks);

    /// <summary>The device adapter table (SegmentedLoraAdapters' layout).</summary>
    internal readonly struct AdapterTable(FloatView factors, IntView ranks, IntView aOffsets, IntView bOffsets)
    {
        public readonly FloatView Factors = factors;
        public readonly IntView Ranks = ranks;
        public readonly IntView AOffsets = aOffsets;
        public readonly IntView BOffsets = bOffsets;

        /// <summary>r_k, capped at maxRank so that h is never read or written past a row's scratch.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public int Rank(int k, int maxRank) => Math.Min(Ranks[k], maxRank);
    }

    /// <summary>Which adapter and scale a row takes: per row (BGMV, Segments = −1) or per segment (SGMV).</summary>
    internal readonly struct RowAdapters(IntView adapters, FloatView scales, IntView starts, int segments, int count)
    {
        public readonly IntView Adapters = adapters;
        public readonly FloatView Scales = scales;
        public readonly IntView Starts = starts;
        public readonly int Segments = segments;
        public readonly int Count = count;

        /// <summary>The entry of Adapters/Scales that row i takes (i itself, or its segment), −1 when it is outside every segment.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public int Slot(int i)
        {
            if (Segments < 0)
            {
                return i;
            }

            // The last segment t with starts[t] ≤ i; an empty segment found this way is the last one, ending at or before i.
            int lo = 0, hi = Segments - 1;
            while (lo < hi)
            {
                int mid = (lo + hi + 1) >> 1;
                if (Starts[mid] <= i)
                {
                    lo = mid;
                }
                else
                {
                    hi = mid - 1;
                }
            }

            return Segments > 0 && Starts[lo] <= i && i < Starts[lo + 1] ? lo : -1;
        }

        /// <summary>Row i's adapter index, −1 for none (also for an index outside [0, K)).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public int Adapter(int i)
        {
            int slot = Slot(i);
            int k = slot < 0 ? -1 : Adapters[slot];
            return k < Count ? k : -1;
        }
    }

    private sealed class Loaded
    {
        public readonly Action<KernelConfig, FloatView, AdapterTable, RowAdapters, FloatView, Dims> Shrink;
        public readonly Action<Index1D, AdapterTable, RowAdapters, FloatView, FloatView, Dims> Expand;

        private Loaded(Accelerator accelerator)
        {
            Shrink = accelerator.LoadStreamKernel<FloatView, AdapterTable, RowAdapters, FloatView, Dims>(ShrinkKernel);
            Expand = accelerator.LoadAutoGroupedStreamKernel<Index1D, AdapterTable, RowAdapters, FloatView, FloatView, Dims>(ExpandKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
