// Attention over a paged KV cache on the GPU (the device twin of the engine's PagedDecodeAttention /
// PagedAttention + the tiled CPU kernel it uses for prompt chunks). The cache of one layer is one
// buffer per K and V, [numBlocks, blockSize, kvHeads, headDim] (KvBlockPool's layout); a sequence's
// position p lives in block table[p / blockSize] at slot p mod blockSize. Per step the host uploads,
// for the n rows of the batch: positions [n], rowTables [n] (where the row's sequence's block table
// starts in `tables`) and `tables` (every sequence's block ids, concatenated).
//   Write:    for row i at position p_i, K/V row i goes to block tables[rowTables[i] + p_i / bs],
//             slot p_i mod bs (one thread per element of [n, kvDim]).
//   Forward:  for row i, query head h (kv head g = h / (heads / kvHeads), GQA), over the positions
//             j = 0..p_i of its sequence (causal: a row of a prompt chunk sees the chunk's earlier rows,
//             written by Write before, and never a later one):
//             s_j = scale · q_ih·k_jg     o_ih = Σ_j softmax(s)_j · v_jg
//             Shapes: q, o [n, heads, headDim]; headDim ≤ 128.
// How: one warp per (row, head), keys in ascending order with the online softmax (m' = max(m, s_j),
// ℓ' = ℓ·e^(m−m') + e^(s_j−m'), o' = o·e^(m−m') + e^(s_j−m')·v_j); lane l owns dims l, l+32, l+64,
// l+96 of q and o, and each score is a warp sum (xor butterfly) of the lanes' partial dots, so every
// lane holds the same m, ℓ and the order of every sum is fixed: the same bits on every run. Why this
// shape: decode (one row per sequence, the engine's common step) is bound by reading K and V once
// per query head; the per-key warp sum keeps the kernel short and exact for any block size, partly
// filled last block and odd head size. Values on the device (positions, tables) are the host's to
// check before upload (GpuLaunch's rule): the engine builds them from its own block tables.
namespace PeftKernels.Kernels.Gpu;

/// <summary>KV-cache write and causal GQA attention over a paged KV cache (block tables) on an ILGPU accelerator.</summary>
public static class PagedAttentionKernels
{
    /// <summary>The largest head size (a lane holds at most four dims of a head row).</summary>
    public const int MaxHeadDim = 128;

    private const int WarpsPerGroup = 4;

    /// <summary>Writes each row's key and value into its sequence's block at its position. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="k">Keys of the rows [n, kvDim].</param>
    /// <param name="v">Values of the rows [n, kvDim].</param>
    /// <param name="positions">Position of each row [n] (≥ 0).</param>
    /// <param name="rowTables">Start of each row's block table in <paramref name="tables"/> [n].</param>
    /// <param name="tables">The block tables, concatenated.</param>
    /// <param name="keyCache">One layer's keys [numBlocks, blockSize, kvDim].</param>
    /// <param name="valueCache">One layer's values [numBlocks, blockSize, kvDim].</param>
    /// <param name="n">Rows.</param>
    /// <param name="kvDim">kvHeads·headDim.</param>
    /// <param name="blockSize">Positions per block.</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply.</exception>
    public static void Write(Accelerator accelerator, FloatView k, FloatView v, IntView positions, IntView rowTables, IntView tables,
        FloatView keyCache, FloatView valueCache, int n, int kvDim, int blockSize)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, nameof(n));
        Check.Positive((kvDim, nameof(kvDim)), (blockSize, nameof(blockSize)));
        Check.Length(nameof(k), k.Length, (long)n * kvDim, "n·kvDim");
        Check.Length(nameof(v), v.Length, (long)n * kvDim, "n·kvDim");
        Check.Length(nameof(positions), positions.Length, n, "n: one position per row");
        Check.Length(nameof(rowTables), rowTables.Length, n, "n: one table start per row");
        CheckCache(keyCache, valueCache, kvDim, blockSize);
        GpuCheck.FitsInt((long)n * kvDim, nameof(k));
        if (n != 0)
        {
            Loaded.For(accelerator).Write(n * kvDim, k, v, positions, rowTables, tables, keyCache, valueCache, new WriteDims(kvDim, blockSize));
        }
    }

    /// <summary>o = causal softmax(scale·q·Kᵀ)·V per row and head over the row's sequence's positions 0..p_i in the paged cache. Enqueues only.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="q">Queries [n, heads, headDim] (after RoPE).</param>
    /// <param name="keyCache">One layer's keys [numBlocks, blockSize, kvHeads, headDim].</param>
    /// <param name="valueCache">One layer's values, as the keys.</param>
    /// <param name="positions">Position of each row [n]: the row sees positions 0..positions[i] (all written).</param>
    /// <param name="rowTables">Start of each row's block table in <paramref name="tables"/> [n].</param>
    /// <param name="tables">The block tables, concatenated.</param>
    /// <param name="o">Output [n, heads, headDim] (write-only).</param>
    /// <param name="n">Rows.</param>
    /// <param name="heads">Query heads, a multiple of kvHeads.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Elements per head, at most <see cref="MaxHeadDim"/>.</param>
    /// <param name="blockSize">Positions per block.</param>
    /// <param name="scale">Score scale, typically 1/√headDim.</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply, or a dim is out of range.</exception>
    public static void Forward(Accelerator accelerator, FloatView q, FloatView keyCache, FloatView valueCache, IntView positions, IntView rowTables, IntView tables,
        FloatView o, int n, int heads, int kvHeads, int headDim, int blockSize, float scale)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, nameof(n));
        Check.Positive((heads, nameof(heads)), (kvHeads, nameof(kvHeads)), (headDim, nameof(headDim)), (blockSize, nameof(blockSize)));
        Check.Require(heads % kvHeads == 0, nameof(heads), $"heads ({heads}) must be a multiple of kvHeads ({kvHeads}).");
        Check.Require(headDim <= MaxHeadDim, nameof(headDim), $"headDim must be <= {MaxHeadDim} on the GPU, got {headDim}.");
        long qElements = (long)n * heads * headDim;
        Check.Length(nameof(q), q.Length, qElements, "n·heads·headDim");
        Check.Length(nameof(o), o.Length, qElements, "n·heads·headDim");
        Check.Length(nameof(positions), positions.Length, n, "n: one position per row");
        Check.Length(nameof(rowTables), rowTables.Length, n, "n: one table start per row");
        CheckCache(keyCache, valueCache, kvHeads * headDim, blockSize);
        GpuCheck.FitsInt(qElements, nameof(q));
        if (n == 0)
        {
            return;
        }

        int warps = n * heads;
        var config = new KernelConfig(new Index1D((warps + WarpsPerGroup - 1) / WarpsPerGroup), new Index1D(WarpsPerGroup * GpuMath.WarpSize));
        Loaded.For(accelerator).Forward(config, q, keyCache, valueCache, positions, rowTables, tables, o, new Dims(n, heads, kvHeads, headDim, blockSize, scale));
    }

    internal static void WriteKernel(Index1D index, FloatView k, FloatView v, IntView positions, IntView rowTables, IntView tables,
        FloatView keyCache, FloatView valueCache, WriteDims d)
    {
        int i = index / d.KvDim, e = index - (i * d.KvDim), p = positions[i];
        int block = tables[rowTables[i] + (p / d.BlockSize)];
        long at = ((((long)block * d.BlockSize) + (p % d.BlockSize)) * d.KvDim) + e;
        keyCache[at] = k[index];
        valueCache[at] = v[index];
    }

    internal static void ForwardKernel(FloatView q, FloatView keyCache, FloatView valueCache, IntView positions, IntView rowTables, IntView tables,
        FloatView o, Dims d)
    {
        int unit = (Grid.IdxX * WarpsPerGroup) + Warp.WarpIdx, lane = Warp.LaneIdx;
        if (unit >= d.Rows * d.Heads)
        {
            return; // the whole warp: no group barrier follows
        }

        int i = unit / d.Heads, h = unit - (i * d.Heads), g = h / (d.Heads / d.KvHeads), kvDim = d.KvHeads * d.HeadDim;
        int qAt = ((i * d.Heads) + h) * d.HeadDim, length = positions[i] + 1, table = rowTables[i];
        float q0 = Lane(q, qAt, lane, d.HeadDim), q1 = Lane(q, qAt, lane + 32, d.HeadDim);
        float q2 = Lane(q, qAt, lane + 64, d.HeadDim), q3 = Lane(q, qAt, lane + 96, d.HeadDim);
        float m = float.NegativeInfinity, l = 0f, o0 = 0f, o1 = 0f, o2 = 0f, o3 = 0f;
        for (int j = 0; j < length; j++)
        {
            int block = tables[table + (j / d.BlockSize)];
            long at = ((((long)block * d.BlockSize) + (j % d.BlockSize)) * kvDim) + ((long)g * d.HeadDim);
            float partial = (q0 * LaneL(keyCache, at, lane, d.HeadDim)) + (q1 * LaneL(keyCache, at, lane + 32, d.HeadDim))
                + (q2 * LaneL(keyCache, at, lane + 64, d.HeadDim)) + (q3 * LaneL(keyCache, at, lane + 96, d.HeadDim));
            float s = d.Scale * GpuMath.WarpSum(partial);
            float mNew = MathF.Max(m, s);
            float alpha = MathF.Exp(m - mNew), p = MathF.Exp(s - mNew);
            l = (l * alpha) + p;
            o0 = (o0 * alpha) + (p * LaneL(valueCache, at, lane, d.HeadDim));
            o1 = (o1 * alpha) + (p * LaneL(valueCache, at, lane + 32, d.HeadDim));
            o2 = (o2 * alpha) + (p * LaneL(valueCache, at, lane + 64, d.HeadDim));
            o3 = (o3 * alpha) + (p * LaneL(valueCache, at, lane + 96, d.HeadDim));
            m = mNew;
        }

        float inv = 1f / l;
        Store(o, qAt, lane, d.HeadDim, o0 * inv);
        Store(o, qAt, lane + 32, d.HeadDim, o1 * inv);
        Store(o, qAt, lane + 64, d.HeadDim, o2 * inv);
        Store(o, qAt, lane + 96, d.HeadDim, o3 * inv);
    }

    private static float Lane(FloatView x, int at, int e, int headDim) => e < headDim ? x[at + e] : 0f;

    private static float LaneL(FloatView x, long at, int e, int headDim) => e < headDim ? x[at + e] : 0f;

    private static void Store(FloatView x, int at, int e, int headDim, float value)
    {
        if (e < headDim)
        {
            x[at + e] = value;
        }
    }

    private static void CheckCache(FloatView keyCache, FloatView valueCache, int kvDim, int blockSize)
    {
        long block = (long)kvDim * blockSize;
        Check.Require(keyCache.Length > 0 && keyCache.Length % block == 0, nameof(keyCache),
            $"keyCache has {keyCache.Length} floats; it must be a positive multiple of blockSize·kvDim = {block} ([numBlocks, blockSize, kvDim]).");
        Check.Length(nameof(valueCache), valueCache.Length, keyCache.Length, "keyCache.Length");
    }

    internal readonly record struct WriteDims(int KvDim, int BlockSize);

    internal readonly record struct Dims(int Rows, int Heads, int KvHeads, int HeadDim, int BlockSize, float Scale);

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, IntView, IntView, IntView, FloatView, FloatView, WriteDims> Write;
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, IntView, IntView, IntView, FloatView, Dims> Forward;

        private Loaded(Accelerator accelerator)
        {
            Write = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, IntView, IntView, IntView, FloatView, FloatView, WriteDims>(WriteKernel);
            Forward = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, IntView, IntView, IntView, FloatView, Dims>(ForwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
