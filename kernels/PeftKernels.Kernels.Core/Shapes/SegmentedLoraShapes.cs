// Shape checks of the segmented multi-adapter LoRA kernels (SegmentedLora: SGMV, BGMV). x [n, in],
// y [n, out]; the adapter table (SegmentedLoraAdapters): K = ranks.Length, aOffsets and bOffsets of
// length K, r_k ≥ 1, A_k [r_k, in] and B_k [out, r_k] inside the pool. BGMV: adapterOfRow [n] and
// scales [n], each index in [−1, K) (−1 = no adapter). SGMV: S = segmentAdapters.Length segments,
// segmentStarts [S + 1] (segment s = rows [starts[s], starts[s + 1]); never decreasing, inside
// [0, n]; an empty segment is allowed), segmentScales [S], each index in [−1, K).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the segmented LoRA kernels.</summary>
internal static class SegmentedLoraShapes
{
    /// <summary>Checks the BGMV arguments; returns the largest rank among the adapters (0 when K = 0).</summary>
    public static int Bgmv(long x, ReadOnlySpan<int> adapterOfRow, long scales, in SegmentedLoraAdapters adapters, long y,
        int n, int inFeatures, int outFeatures)
    {
        int maxRank = Common(x, adapters, y, n, inFeatures, outFeatures);
        Check.Length("adapterOfRow", adapterOfRow.Length, n, "n: one adapter index per row");
        Check.Length("scales", scales, n, "n: one scale per row");
        for (int i = 0; i < n; i++)
        {
            Index("adapterOfRow", i, adapterOfRow[i], adapters.Count);
        }

        return maxRank;
    }

    /// <summary>Checks the SGMV arguments; returns the largest rank among the adapters (0 when K = 0).</summary>
    public static int Sgmv(long x, ReadOnlySpan<int> segmentStarts, ReadOnlySpan<int> segmentAdapters, long segmentScales,
        in SegmentedLoraAdapters adapters, long y, int n, int inFeatures, int outFeatures)
    {
        int maxRank = Common(x, adapters, y, n, inFeatures, outFeatures);
        int s = segmentAdapters.Length;
        Check.Length("segmentStarts", segmentStarts.Length, (long)s + 1, "segments + 1: each segment's first row, then the end of the last");
        Check.Length("segmentScales", segmentScales, s, "segments: one scale per segment");
        if (segmentStarts[0] < 0)
        {
            Check.Require(false, "segmentStarts", $"segmentStarts[0] = {segmentStarts[0]} is negative.");
        }

        if (segmentStarts[s] > n)
        {
            Check.Require(false, "segmentStarts", $"segmentStarts[{s}] = {segmentStarts[s]} (the end of the last segment) is past n = {n}.");
        }

        for (int i = 0; i < s; i++)
        {
            if (segmentStarts[i + 1] < segmentStarts[i])
            {
                Check.Require(false, "segmentStarts",
                    $"segmentStarts[{i + 1}] = {segmentStarts[i + 1]} is less than segmentStarts[{i}] = {segmentStarts[i]}; segment starts must not decrease.");
            }

            Index("segmentAdapters", i, segmentAdapters[i], adapters.Count);
        }

        return maxRank;
    }

    /// <summary>The ranks of per-adapter (A, B) pairs: A [r, in] and B [out, r] with the same r ≥ 1.</summary>
    public static int[] PackRanks(IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, int inFeatures, int outFeatures)
    {
        Check.Positive((inFeatures, "inFeatures"), (outFeatures, "outFeatures"));
        Check.Require(a.Count == b.Count, nameof(b), $"There are {a.Count} A factors but {b.Count} B factors; expected one pair per adapter.");
        var ranks = new int[a.Count];
        for (int k = 0; k < a.Count; k++)
        {
            int aLength = a[k].Length, bLength = b[k].Length;
            Check.Require(aLength > 0 && aLength % inFeatures == 0, nameof(a),
                $"A of adapter {k} has length {aLength}; expected rank·inFeatures (inFeatures = {inFeatures}, rank ≥ 1).");
            Check.Require(bLength > 0 && bLength % outFeatures == 0, nameof(b),
                $"B of adapter {k} has length {bLength}; expected outFeatures·rank (outFeatures = {outFeatures}, rank ≥ 1).");
            int rankA = aLength / inFeatures, rankB = bLength / outFeatures;
            Check.Require(rankA == rankB, nameof(b), $"Adapter {k} has rank {rankA} in A [{rankA}, {inFeatures}] but rank {rankB} in B [{outFeatures}, {rankB}].");
            ranks[k] = rankA;
        }

        return ranks;
    }

    private static int Common(long x, in SegmentedLoraAdapters adapters, long y, int n, int inFeatures, int outFeatures)
    {
        Check.NonNegative(n, "n");
        Check.Positive((inFeatures, "inFeatures"), (outFeatures, "outFeatures"));
        Check.Length("x", x, (long)n * inFeatures, "n·inFeatures");
        Check.Length("y", y, (long)n * outFeatures, "n·outFeatures");
        int k = adapters.Count;
        Check.Length("aOffsets", adapters.AOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        Check.Length("bOffsets", adapters.BOffsets.Length, k, "one offset per adapter (adapters = ranks.Length)");
        long pool = adapters.Factors.Length;
        int maxRank = 0;
        for (int i = 0; i < k; i++)
        {
            int r = adapters.Ranks[i];
            if (r <= 0)
            {
                Check.Require(false, "ranks", $"ranks[{i}] = {r}; an adapter's rank must be ≥ 1.");
            }

            Extent("aOffsets", i, adapters.AOffsets[i], (long)r * inFeatures, 'A', r, inFeatures, pool);
            Extent("bOffsets", i, adapters.BOffsets[i], (long)outFeatures * r, 'B', outFeatures, r, pool);
            maxRank = Math.Max(maxRank, r);
        }

        return maxRank;
    }

    // The checks below run per adapter and per row on every call: the message is only formatted on failure,
    // so a valid call allocates nothing.
    private static void Extent(string name, int adapter, int offset, long length, char factor, int rows, int cols, long pool)
    {
        if (offset < 0 || offset + length > pool)
        {
            Check.Require(false, name,
                $"{name}[{adapter}] = {offset}: adapter {adapter}'s {factor} [{rows}, {cols}] needs floats [{offset}, {offset + length}) but the pool (factors) has {pool}.");
        }
    }

    private static void Index(string name, int i, int adapter, int count)
    {
        if (adapter < -1 || adapter >= count)
        {
            Check.Require(false, name,
                $"{name}[{i}] = {adapter} is outside [-1, {count}): adapters are 0 … {count - 1}, and -1 means no adapter.");
        }
    }
}
