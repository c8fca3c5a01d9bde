// Causal grouped-query attention, flash-attention style (fp32). Shapes, row-major:
//   q, o, dO, dq [B, Tq, H, d]     k, v, dk, dv [B, Tk, Hkv, d]     lse [B, H, Tq]
// Queries are the last Tq of the Tk positions: offset = Tk − Tq ≥ 0, and query i (0-based in
// the block) sees key j iff j ≤ i + offset. Query head h reads kv head h / (H / Hkv).
// Forward, per (b, h, i), over the visible keys j:
//   s_ij = scale · q_i·k_j      lse_i = log Σ_j exp(s_ij)      p_ij = exp(s_ij − lse_i)
//   o_i  = Σ_j p_ij v_j
// computed over key tiles with the online softmax (running max m and sum l, the partial o
// rescaled by exp(m_old − m_new) when the max grows), so no score row is ever whole.
// Backward (FlashAttention-2), g = dO; only lse is kept, p is recomputed per tile:
//   D_i  = dO_i·o_i  (= Σ_j p_ij dp_ij)
//   dv_j = Σ_i p_ij dO_i          dp_ij = dO_i·v_j          ds_ij = p_ij (dp_ij − D_i)
//   dq_i = scale Σ_j ds_ij k_j    dk_j  = scale Σ_i ds_ij q_i
// with dk, dv summed over the H / Hkv query heads of a group (chain rule through the shared k, v).
// NaN: a NaN score makes the row's running max m NaN (ScaledMax keeps it; MathF.Max, exp and the
// rescale by exp(m_old − m) carry it), so that row's o and lse are NaN, as softmax gives in PyTorch;
// an infinite q or k gives an infinite score, so the row is NaN as well (∞ − ∞, as PyTorch's
// softmax); an infinite v makes the outputs of the rows that see it ±Inf or NaN. Masked keys never
// contribute, whatever they hold: a NaN or ±Inf at a future position reaches no earlier query, in the
// outputs nor in any gradient, independent of the tiling (AttentionMasking.cs), as with PyTorch's
// fused SDPA kernels and as a KV-cache decode sees it. (PyTorch's eager softmax(S)·V instead spreads a
// NaN value to every row as 0·NaN; masking is the point of a causal model, so we keep it exact.)
// Parallel units: forward (b, kv head, query tile); backward (b, kv head), each owning its dk/dv
// slice and the dq rows of its query heads, so every sum runs in one fixed order: results are
// bit-identical for any thread count.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Causal grouped-query attention (flash-attention style) forward and backward on the CPU.</summary>
public static unsafe partial class Attention
{
    /// <summary>Keys per tile: a 64-key K or V tile of 128-wide heads is 32 KiB.</summary>
    private const int KeyTile = 64;

    /// <summary>Queries per tile: each K/V tile is reused by this many rows.</summary>
    private const int QueryTile = 32;

    /// <summary>Up to this many queries (decode) the products with K (and V in backward) are dot products against their rows, with no transposed copy.</summary>
    private const int DirectMaxQueries = 4;

    /// <summary>Below this many multiply-adds a call runs on the calling thread alone.</summary>
    private const long ParallelMinWork = 1 << 18;

    /// <summary>
    /// o = softmax(scale·q·kᵀ + causal mask)·v per head, and lse, the log-sum-exp of the scaled scores
    /// of each query row (kept for <see cref="Backward"/>). Queries are the last
    /// <paramref name="queryLength"/> of the <paramref name="keyLength"/> positions.
    /// </summary>
    /// <param name="q">Queries [batch, queryLength, heads, headDim].</param>
    /// <param name="k">Keys [batch, keyLength, kvHeads, headDim].</param>
    /// <param name="v">Values [batch, keyLength, kvHeads, headDim].</param>
    /// <param name="o">Output [batch, queryLength, heads, headDim] (overwritten).</param>
    /// <param name="lse">Log-sum-exp of the scaled scores [batch, heads, queryLength] (overwritten).</param>
    /// <param name="batch">Sequences.</param>
    /// <param name="queryLength">Query positions per sequence (the last ones).</param>
    /// <param name="keyLength">Key positions per sequence, ≥ <paramref name="queryLength"/>.</param>
    /// <param name="heads">Query heads, a multiple of <paramref name="kvHeads"/>.</param>
    /// <param name="kvHeads">Key/value heads; query head h uses kv head h / (heads / kvHeads).</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="scale">Score scale, typically 1/√headDim.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o, Span<float> lse,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale, KernelOptions options = default)
    {
        AttentionShapes.Forward(q.Length, k.Length, v.Length, o.Length, lse.Length, batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var dims = new Dims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        if (dims.QueryElements == 0)
        {
            return;
        }

        fixed (float* pq = q, pk = k, pv = v, po = o, plse = lse)
        {
            var io = new Io { Q = pq, K = pk, V = pv, O = po, Lse = plse };
            switch (path)
            {
                case SimdPath.Vector512:
                    new ForwardJob<Vector512<float>, V512>(dims, io, threads).Run();
                    break;
                case SimdPath.Vector256:
                    new ForwardJob<Vector256<float>, V256>(dims, io, threads).Run();
                    break;
                default:
                    new ForwardJob<float, V1>(dims, io, threads).Run();
                    break;
            }
        }
    }

    /// <summary>
    /// dq, dk, dv of <see cref="Forward"/> from dO, recomputing the probabilities tile by tile from lse
    /// (FlashAttention-2). All three gradients are overwritten.
    /// </summary>
    /// <param name="dO">Gradient of the output [batch, queryLength, heads, headDim].</param>
    /// <param name="q">Queries, as given to <see cref="Forward"/>.</param>
    /// <param name="k">Keys, as given to <see cref="Forward"/>.</param>
    /// <param name="v">Values, as given to <see cref="Forward"/>.</param>
    /// <param name="o">Output of <see cref="Forward"/>.</param>
    /// <param name="lse">Log-sum-exp of <see cref="Forward"/> [batch, heads, queryLength].</param>
    /// <param name="dq">Gradient of q [batch, queryLength, heads, headDim] (overwritten).</param>
    /// <param name="dk">Gradient of k [batch, keyLength, kvHeads, headDim] (overwritten).</param>
    /// <param name="dv">Gradient of v [batch, keyLength, kvHeads, headDim] (overwritten).</param>
    /// <param name="batch">Sequences.</param>
    /// <param name="queryLength">Query positions per sequence (the last ones).</param>
    /// <param name="keyLength">Key positions per sequence, ≥ <paramref name="queryLength"/>.</param>
    /// <param name="heads">Query heads, a multiple of <paramref name="kvHeads"/>.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Elements per head.</param>
    /// <param name="scale">Score scale used in the forward.</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Backward(ReadOnlySpan<float> dO, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<float> o, ReadOnlySpan<float> lse, Span<float> dq, Span<float> dk, Span<float> dv,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale, KernelOptions options = default)
    {
        AttentionShapes.Backward(dO.Length, q.Length, k.Length, v.Length, o.Length, lse.Length, dq.Length, dk.Length, dv.Length,
            batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var dims = new Dims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        if (dims.QueryElements == 0)
        {
            // No query sees any key: every gradient is an empty sum.
            dk.Clear();
            dv.Clear();
            return;
        }

        fixed (float* pdo = dO, pq = q, pk = k, pv = v, po = o, plse = lse, pdq = dq, pdk = dk, pdv = dv)
        {
            var io = new Io { DO = pdo, Q = pq, K = pk, V = pv, O = po, Lse = plse, Dq = pdq, Dk = pdk, Dv = pdv };
            switch (path)
            {
                case SimdPath.Vector512:
                    new BackwardJob<Vector512<float>, V512>(dims, io, threads).Run();
                    break;
                case SimdPath.Vector256:
                    new BackwardJob<Vector256<float>, V256>(dims, io, threads).Run();
                    break;
                default:
                    new BackwardJob<float, V1>(dims, io, threads).Run();
                    break;
            }
        }
    }

    /// <summary>Workers for <paramref name="units"/> units of <paramref name="work"/> multiply-adds in all.</summary>
    private static int Workers(int threads, int units, long work) =>
        work < ParallelMinWork ? 1 : Math.Max(1, Math.Min(threads, units));

    /// <summary>A worker's scratch floats, rounded up to whole 64-byte lines: no two workers write one line.</summary>
    private static int WorkerFloats(int floats) => (floats + 15) & ~15;

    /// <summary>Dimensions and the strides derived from them (elements).</summary>
    private readonly record struct Dims(int Batch, int QueryLength, int KeyLength, int Heads, int KvHeads, int HeadDim, float Scale)
    {
        public int Group => Heads / KvHeads;

        public int Offset => KeyLength - QueryLength;

        /// <summary>Distance between consecutive positions of one head in q, o, dO, dq.</summary>
        public int QStride => Heads * HeadDim;

        /// <summary>Distance between consecutive positions of one kv head in k, v, dk, dv.</summary>
        public int KStride => KvHeads * HeadDim;

        public int KeyTiles => (KeyLength + KeyTile - 1) / KeyTile;

        public long QueryElements => (long)Batch * QueryLength * Heads * HeadDim;

        public long KeyElements => (long)Batch * KeyLength * KvHeads * HeadDim;

        /// <summary>Multiply-adds of the forward: (query, visible key) pairs × 2 products × headDim.</summary>
        public long Work => (long)Batch * Heads * (((long)QueryLength * Offset) + ((long)QueryLength * (QueryLength + 1) / 2)) * 2 * HeadDim;

        /// <summary>Row of position <paramref name="i"/>, head <paramref name="h"/> of batch <paramref name="b"/> in q, o, dO, dq.</summary>
        public long QRow(int b, int i, int h) => ((((long)b * QueryLength) + i) * Heads + h) * HeadDim;

        /// <summary>Row of position <paramref name="j"/>, kv head <paramref name="g"/> of batch <paramref name="b"/> in k, v, dk, dv.</summary>
        public long KRow(int b, int j, int g) => ((((long)b * KeyLength) + j) * KvHeads + g) * HeadDim;
    }

    /// <summary>The operands of one call (pinned for its duration).</summary>
    private struct Io
    {
        public float* Q, K, V, O, Lse, DO, Dq, Dk, Dv;
    }

    private sealed class ForwardJob<TV, T>(Dims d, Io io, int threads)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        private readonly int _queryTiles = (d.QueryLength + QueryTile - 1) / QueryTile;
        private readonly bool _packed = d.QueryLength > DirectMaxQueries;
        private readonly int _scratch = WorkerFloats((QueryTile * KeyTile) + (d.Group * QueryTile * (d.HeadDim + 2)));
        private int _workers;
        private float* _kt, _work;

        public void Run()
        {
            int units = d.Batch * d.KvHeads * _queryTiles;
            _workers = Workers(threads, units, d.Work);
            long ktFloats = _packed ? (long)d.Batch * d.KvHeads * d.KeyTiles * KeyTile * d.HeadDim : 0;
            _kt = (float*)NativeMemory.AlignedAlloc((nuint)(ktFloats * sizeof(float)), 64);
            _work = (float*)NativeMemory.AlignedAlloc((nuint)((long)_scratch * _workers * sizeof(float)), 64);
            try
            {
                if (_packed)
                {
                    CpuParallel.For(_workers, _workers, PackKeys);
                }

                CpuParallel.For(_workers, _workers, Compute);
            }
            finally
            {
                NativeMemory.AlignedFree(_work);
                NativeMemory.AlignedFree(_kt);
            }
        }

        /// <summary>Kᵀ of one (b, g) as key tiles [d, KeyTile], so the score rows vectorise over keys.</summary>
        private void PackKeys(int worker)
        {
            for (int u = worker; u < d.Batch * d.KvHeads; u += _workers)
            {
                int b = u / d.KvHeads, g = u % d.KvHeads;
                for (int t = 0; t < d.KeyTiles; t++)
                {
                    int j0 = t * KeyTile;
                    Pack(io.K + d.KRow(b, j0, g), d.KStride, Math.Min(KeyTile, d.KeyLength - j0), d.HeadDim, KeyTileAt(u, t), KeyTile);
                }
            }
        }

        private float* KeyTileAt(int unit, int tile) => _kt + ((((long)unit * d.KeyTiles) + tile) * d.HeadDim * KeyTile);

        // A unit is (b, kv head g, query tile) and runs the query heads of g together, so each K/V
        // tile is read from memory once for all of them (the decode case is bound by that read).
        // Units are dealt round robin: a query tile's work grows with its position (causal), and
        // neighbouring tiles go to different workers.
        private void Compute(int worker)
        {
            float* scratch = _work + ((long)worker * _scratch);
            for (int u = worker; u < d.Batch * d.KvHeads * _queryTiles; u += _workers)
            {
                int bg = u / _queryTiles;
                QueryTileForward(bg / d.KvHeads, bg % d.KvHeads, (u % _queryTiles) * QueryTile, scratch);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void QueryTileForward(int b, int g, int i0, float* scratch)
        {
            int hd = d.HeadDim, rows = Math.Min(QueryTile, d.QueryLength - i0), groupRows = d.Group * QueryTile;
            float* s = scratch, acc = s + (QueryTile * KeyTile), m = acc + ((long)groupRows * hd), l = m + groupRows;
            float* kb = io.K + d.KRow(b, 0, g), vb = io.V + d.KRow(b, 0, g);
            new Span<float>(acc, groupRows * hd).Clear();
            new Span<float>(m, groupRows).Fill(float.NegativeInfinity);
            new Span<float>(l, groupRows).Clear();

            // Keys after the last row's horizon are masked for every row of the tile: never visited.
            // Keys from the first row's horizon on are masked for some rows: if V holds a non-finite value
            // there, P·V runs over each row's visible keys only (AttentionMasking.cs).
            int keyEnd = i0 + rows + d.Offset, horizon = i0 + d.Offset + 1;
            bool exact = keyEnd > horizon && !AllFinite(vb + ((long)horizon * d.KStride), keyEnd - horizon, d.KStride, hd);
            for (int j0 = 0; j0 < keyEnd; j0 += KeyTile)
            {
                int width = Math.Min(KeyTile, keyEnd - j0);
                for (int hh = 0; hh < d.Group; hh++)
                {
                    // Rows of query head g·Group + hh: acc, m, l at hh·QueryTile.
                    float* qb = io.Q + d.QRow(b, i0, (g * d.Group) + hh), accH = acc + ((long)hh * QueryTile * hd);
                    float* mH = m + (hh * QueryTile), lH = l + (hh * QueryTile);
                    if (_packed)
                    {
                        MulAdd<TV, T>(qb, d.QStride, 1, KeyTileAt((b * d.KvHeads) + g, j0 / KeyTile), KeyTile, s, KeyTile, rows, width, hd, false);
                    }

                    for (int r = 0; r < rows; r++)
                    {
                        float* sr = s + (r * KeyTile);
                        int visible = Math.Min(width, i0 + r + d.Offset + 1 - j0);
                        if (visible <= 0)
                        {
                            new Span<float>(sr, width).Clear();
                            continue;
                        }

                        if (!_packed)
                        {
                            Dots<TV, T>(qb + ((long)r * d.QStride), kb + ((long)j0 * d.KStride), d.KStride, visible, hd, sr);
                        }

                        float mNew = MathF.Max(mH[r], ScaledMax<TV, T>(sr, visible, d.Scale));
                        float alpha = mNew == mH[r] ? 1f : MathF.Exp(mH[r] - mNew);
                        lH[r] = (lH[r] * alpha) + ExpInPlace<TV, T>(sr, visible, d.Scale, mNew);
                        mH[r] = mNew;
                        new Span<float>(sr + visible, width - visible).Clear();
                        if (alpha != 1f)
                        {
                            ScaleRow<TV, T>(accH + (r * hd), accH + (r * hd), hd, alpha);
                        }
                    }

                    if (exact && j0 + width > horizon)
                    {
                        RowsOverVisibleKeys<TV, T>(s, vb + ((long)j0 * d.KStride), d.KStride, accH, hd, rows, horizon - j0, width, hd);
                    }
                    else
                    {
                        MulAdd<TV, T>(s, KeyTile, 1, vb + ((long)j0 * d.KStride), d.KStride, accH, hd, rows, hd, width, true);
                    }
                }
            }

            for (int hh = 0; hh < d.Group; hh++)
            {
                int h = (g * d.Group) + hh;
                for (int r = 0; r < rows; r++)
                {
                    int row = (hh * QueryTile) + r;
                    ScaleRow<TV, T>(acc + ((long)row * hd), io.O + d.QRow(b, i0 + r, h), hd, 1f / l[row]);
                    io.Lse[(((long)b * d.Heads) + h) * d.QueryLength + i0 + r] = m[row] + MathF.Log(l[row]);
                }
            }
        }
    }
}
