// Causal grouped-query attention on the GPU, flash-attention style (Attention.cs). Shapes, row-major:
//   q, o, dO, dq [B, Tq, H, d]     k, v, dk, dv [B, Tk, Hkv, d]     lse [B, H, Tq]
// Queries are the last Tq of the Tk positions: offset = Tk − Tq ≥ 0, query i sees key j iff
// j ≤ i + offset; query head h reads kv head h / (H / Hkv). d ≤ 128 (the shared tiles are sized for it).
// Forward, per (b, h, i), over the visible keys j:
//   s_ij = scale · q_i·k_j      lse_i = log Σ_j exp(s_ij)      o_i = Σ_j exp(s_ij − lse_i) v_j
// One group = 4 warps = 4 consecutive query rows of one (b, h); K and V go through shared memory in
// tiles of 32 keys (K rows padded to 129 floats), lane l scores key l of the tile, then the online
// softmax: m' = max(m, max_l s_l), p_l = exp(s_l − m'), ℓ' = ℓ·exp(m − m') + Σ_l p_l,
// o' = o·exp(m − m') + Σ_l p_l v_l (lane owns dims lane, lane + 32, …). Every sum runs in a fixed
// order (butterfly over lanes, keys ascending), so results are the same on every run. Masked keys
// never contribute, whatever they hold: each row's sums stop at its causal horizon, so a NaN or ±Inf
// at a future position reaches no earlier query (as the CPU kernel, Attention.cs).
// Backward (AttentionBackwardKernels.cs): FlashAttention-2's formulas, p recomputed from lse, no atomics.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Causal grouped-query attention forward and backward on an ILGPU accelerator (head size ≤ 128).</summary>
public static partial class AttentionKernels
{
    /// <summary>The largest head size the GPU kernels take (their shared-memory tiles are sized for it).</summary>
    public const int MaxHeadDim = 128;

    private const int KeyTile = 32;
    private const int RowsPerGroup = 4;
    private const int KStride = MaxHeadDim + 1;

    /// <summary>o = softmax(scale·q·kᵀ + causal mask)·v per head, and lse (kept for <see cref="Backward"/>).</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="q">Queries [batch, queryLength, heads, headDim].</param>
    /// <param name="k">Keys [batch, keyLength, kvHeads, headDim].</param>
    /// <param name="v">Values [batch, keyLength, kvHeads, headDim].</param>
    /// <param name="o">Output [batch, queryLength, heads, headDim].</param>
    /// <param name="lse">Log-sum-exp of the scaled scores [batch, heads, queryLength].</param>
    /// <param name="batch">Sequences.</param>
    /// <param name="queryLength">Query positions per sequence (the last ones).</param>
    /// <param name="keyLength">Key positions per sequence, ≥ queryLength.</param>
    /// <param name="heads">Query heads, a multiple of kvHeads.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Elements per head, at most <see cref="MaxHeadDim"/>.</param>
    /// <param name="scale">Score scale, typically 1/√headDim.</param>
    public static void Forward(Accelerator accelerator, FloatView q, FloatView k, FloatView v, FloatView o, FloatView lse,
        int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        GpuCheck.NotNull(accelerator);
        AttentionShapes.Forward(q.Length, k.Length, v.Length, o.Length, lse.Length, batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var d = DeviceDims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        if (d.QueryElements == 0)
        {
            return;
        }

        var config = new KernelConfig(new Index2D(GemmTiles.Ceil(queryLength, RowsPerGroup), batch * heads), new Index2D(RowsPerGroup * GpuMath.WarpSize, 1));
        Loaded.For(accelerator).Forward(config, q, k, v, o, lse, d);
    }

    internal static void ForwardKernel(FloatView q, FloatView k, FloatView v, FloatView o, FloatView lse, Dims d)
    {
        var sk = SharedMemory.Allocate<float>(KeyTile * KStride);
        var sv = SharedMemory.Allocate<float>(KeyTile * MaxHeadDim);
        var sq = SharedMemory.Allocate<float>(RowsPerGroup * MaxHeadDim);
        var sp = SharedMemory.Allocate<float>(RowsPerGroup * KeyTile);
        int warp = Warp.WarpIdx, lane = Warp.LaneIdx;
        int b = Grid.IdxY / d.Heads, h = Grid.IdxY - (b * d.Heads), g = h / (d.Heads / d.KvHeads);
        int i = (Grid.IdxX * RowsPerGroup) + warp;
        bool rowValid = i < d.QueryLength;
        int offset = d.KeyLength - d.QueryLength;
        int qAt = rowValid ? d.QueryIndex(b, i, h) : 0;
        for (int e = lane; e < d.HeadDim; e += GpuMath.WarpSize)
        {
            sq[(warp * MaxHeadDim) + e] = rowValid ? q[qAt + e] : 0f;
        }

        int lastRow = Math.Min(d.QueryLength - 1, (Grid.IdxX * RowsPerGroup) + RowsPerGroup - 1);
        int lastKey = lastRow + offset;
        float m = float.NegativeInfinity, l = 0f;
        var acc = default(Dims4);
        for (int j0 = 0; j0 <= lastKey; j0 += KeyTile)
        {
            Group.Barrier();
            LoadTile(k, sk, KStride, d, b, g, j0);
            LoadTile(v, sv, MaxHeadDim, d, b, g, j0);
            Group.Barrier();

            int key = j0 + lane;
            bool visible = rowValid && key <= i + offset;
            float s = float.NegativeInfinity;
            if (visible)
            {
                float dot = 0f;
                for (int e = 0; e < d.HeadDim; e++)
                {
                    dot += sq[(warp * MaxHeadDim) + e] * sk[(lane * KStride) + e];
                }

                s = d.Scale * dot;
            }

            float mNew = MathF.Max(m, GpuMath.WarpMax(s));
            float p = visible ? MathF.Exp(s - mNew) : 0f;
            float alpha = mNew == float.NegativeInfinity ? 1f : MathF.Exp(m - mNew);
            l = (l * alpha) + GpuMath.WarpSum(p);
            sp[(warp * KeyTile) + lane] = p;
            Warp.Barrier();
            acc.Scale(alpha);

            // Only the keys this row sees (warp-uniform bound): a masked key adds nothing, not even 0·NaN.
            int seen = rowValid ? Math.Min(KeyTile, i + offset + 1 - j0) : 0;
            for (int r = 0; r < seen; r++)
            {
                acc.AddRow(sp[(warp * KeyTile) + r], sv, r * MaxHeadDim, lane, d.HeadDim);
            }

            m = mNew;
        }

        if (rowValid)
        {
            acc.Store(o, qAt, lane, d.HeadDim, 1f / l);
            if (lane == 0)
            {
                lse[d.LseIndex(b, h, i)] = m + MathF.Log(l);
            }
        }
    }

    /// <summary>Rows j0..j0+31 of kv head g of sequence b into a shared tile (row stride <paramref name="stride"/>), zeros past the end.</summary>
    private static void LoadTile(FloatView src, ArrayView<float> tile, int stride, Dims d, int b, int g, int j0)
    {
        for (int idx = Group.IdxX; idx < KeyTile * d.HeadDim; idx += Group.DimX)
        {
            int r = idx / d.HeadDim, e = idx - (r * d.HeadDim), key = j0 + r;
            tile[(r * stride) + e] = key < d.KeyLength ? src[d.KeyIndex(b, key, g) + e] : 0f;
        }
    }

    /// <summary>The GPU's own limits, after the shared shape checks: headDim fits the kernels' tiles, element counts fit int.</summary>
    private static Dims DeviceDims(int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        Check.Require(headDim <= MaxHeadDim, nameof(headDim), $"headDim must be <= {MaxHeadDim} on the GPU, got {headDim}.");
        var d = new Dims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        GpuCheck.FitsInt(d.QueryElements, "q");
        GpuCheck.FitsInt(d.KeyElements, "k");
        return d;
    }

    internal readonly record struct Dims(int Batch, int QueryLength, int KeyLength, int Heads, int KvHeads, int HeadDim, float Scale)
    {
        public long QueryElements => (long)Batch * QueryLength * Heads * HeadDim;

        public long KeyElements => (long)Batch * KeyLength * KvHeads * HeadDim;

        public int QueryIndex(int b, int i, int h) => ((((b * QueryLength) + i) * Heads) + h) * HeadDim;

        public int KeyIndex(int b, int j, int g) => ((((b * KeyLength) + j) * KvHeads) + g) * HeadDim;

        public int LseIndex(int b, int h, int i) => (((b * Heads) + h) * QueryLength) + i;
    }

    /// <summary>A lane's share of one head row: dims lane, lane + 32, lane + 64, lane + 96.</summary>
    private struct Dims4
    {
        public float X0;
        public float X1;
        public float X2;
        public float X3;

        public void Scale(float f)
        {
            X0 *= f;
            X1 *= f;
            X2 *= f;
            X3 *= f;
        }

        /// <summary>this += w·row[e] for this lane's dims of the row at <paramref name="at"/>.</summary>
        public void AddRow(float w, ArrayView<float> rows, int at, int lane, int headDim)
        {
            if (lane < headDim)
            {
                X0 += w * rows[at + lane];
            }

            if (lane + 32 < headDim)
            {
                X1 += w * rows[at + lane + 32];
            }

            if (lane + 64 < headDim)
            {
                X2 += w * rows[at + lane + 64];
            }

            if (lane + 96 < headDim)
            {
                X3 += w * rows[at + lane + 96];
            }
        }

        public readonly void Store(FloatView dst, int at, int lane, int headDim, float f)
        {
            if (lane < headDim)
            {
                dst[at + lane] = X0 * f;
            }

            if (lane + 32 < headDim)
            {
                dst[at + lane + 32] = X1 * f;
            }

            if (lane + 64 < headDim)
            {
                dst[at + lane + 64] = X2 * f;
            }

            if (lane + 96 < headDim)
            {
                dst[at + lane + 96] = X3 * f;
            }
        }
    }

    private sealed partial class Loaded
    {
        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
