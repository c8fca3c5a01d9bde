// Attention backward on the GPU (FlashAttention-2's formulas, formulas of the forward in
// AttentionKernels.cs); only lse is kept, p is recomputed, and D_i = dO_i·o_i is recomputed where needed:
//   p_ij = exp(scale·q_i·k_j − lse_i) (0 where j > i + offset)     dp_ij = dO_i·v_j
//   ds_ij = p_ij (dp_ij − D_i)
//   dq_i = scale Σ_j ds_ij k_j        dk_j = scale Σ_i ds_ij q_i        dv_j = Σ_i p_ij dO_i
// with dk, dv summed over the H / Hkv query heads of a kv head (chain rule through the shared k, v).
// Every sum runs over the visible (query, key) pairs only, so a NaN at a masked position never
// reaches another position's gradient as 0·NaN.
// Two kernels, no atomics, each output owned by one thread and summed in a fixed order:
//   dq:     as the forward: 4 warps = 4 query rows, K/V tiles of 32 keys in shared memory, lane = key.
//   dk, dv: one group per (b, kv head, tile of 16 keys), 128 threads; query rows (every head of the
//           group, i ≥ j0 − offset) in chunks of 8: thread (row, key) computes p and ds for its pair, then
//           thread (key, dims e ≡ t mod 8) adds the chunk's 8 rows to its dk, dv accumulators (in shared memory).
namespace PeftKernels.Kernels.Gpu;

public static partial class AttentionKernels
{
    private const int BackKeys = 16;
    private const int BackRows = 8;
    private const int BackThreads = BackKeys * BackRows;

    /// <summary>dq, dk, dv of <see cref="Forward"/> from dO, recomputing the probabilities from lse (all three overwritten).</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dO">Gradient of the output [batch, queryLength, heads, headDim].</param>
    /// <param name="q">Queries, as given to the forward.</param>
    /// <param name="k">Keys, as given to the forward.</param>
    /// <param name="v">Values, as given to the forward.</param>
    /// <param name="o">Output of the forward.</param>
    /// <param name="lse">Log-sum-exp of the forward [batch, heads, queryLength].</param>
    /// <param name="dq">Gradient of q (overwritten).</param>
    /// <param name="dk">Gradient of k (overwritten).</param>
    /// <param name="dv">Gradient of v (overwritten).</param>
    /// <param name="batch">Sequences.</param>
    /// <param name="queryLength">Query positions per sequence (the last ones).</param>
    /// <param name="keyLength">Key positions per sequence.</param>
    /// <param name="heads">Query heads.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Elements per head, at most <see cref="MaxHeadDim"/>.</param>
    /// <param name="scale">Score scale used in the forward.</param>
    public static void Backward(Accelerator accelerator, FloatView dO, FloatView q, FloatView k, FloatView v, FloatView o, FloatView lse,
        FloatView dq, FloatView dk, FloatView dv, int batch, int queryLength, int keyLength, int heads, int kvHeads, int headDim, float scale)
    {
        GpuCheck.NotNull(accelerator);
        AttentionShapes.Backward(dO.Length, q.Length, k.Length, v.Length, o.Length, lse.Length, dq.Length, dk.Length, dv.Length,
            batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        var d = DeviceDims(batch, queryLength, keyLength, heads, kvHeads, headDim, scale);
        if (d.KeyElements == 0)
        {
            return;
        }

        var kernels = Loaded.For(accelerator);
        if (d.QueryElements != 0)
        {
            var dqConfig = new KernelConfig(new Index2D(GemmTiles.Ceil(queryLength, RowsPerGroup), batch * heads), new Index2D(RowsPerGroup * GpuMath.WarpSize, 1));
            kernels.Dq(dqConfig, dO, q, k, v, o, lse, dq, d);
        }

        // With no queries the kernel still runs: every dk, dv is an empty sum (zeros).
        var dkvConfig = new KernelConfig(new Index2D(GemmTiles.Ceil(keyLength, BackKeys), batch * kvHeads), new Index2D(BackThreads, 1));
        kernels.DkDv(dkvConfig, dO, q, k, v, o, lse, dk, dv, d);
    }

    internal static void DqKernel(FloatView dO, FloatView q, FloatView k, FloatView v, FloatView o, FloatView lse, FloatView dq, Dims d)
    {
        var sk = SharedMemory.Allocate<float>(KeyTile * KStride);
        var sv = SharedMemory.Allocate<float>(KeyTile * KStride);
        var sq = SharedMemory.Allocate<float>(RowsPerGroup * MaxHeadDim);
        var sdo = SharedMemory.Allocate<float>(RowsPerGroup * MaxHeadDim);
        var sds = SharedMemory.Allocate<float>(RowsPerGroup * KeyTile);
        int warp = Warp.WarpIdx, lane = Warp.LaneIdx;
        int b = Grid.IdxY / d.Heads, h = Grid.IdxY - (b * d.Heads), g = h / (d.Heads / d.KvHeads);
        int i = (Grid.IdxX * RowsPerGroup) + warp;
        bool rowValid = i < d.QueryLength;
        int offset = d.KeyLength - d.QueryLength;
        int qAt = rowValid ? d.QueryIndex(b, i, h) : 0;
        float dotO = 0f;
        for (int e = lane; e < d.HeadDim; e += GpuMath.WarpSize)
        {
            float dOe = rowValid ? dO[qAt + e] : 0f;
            sq[(warp * MaxHeadDim) + e] = rowValid ? q[qAt + e] : 0f;
            sdo[(warp * MaxHeadDim) + e] = dOe;
            dotO += rowValid ? dOe * o[qAt + e] : 0f;
        }

        float dRow = GpuMath.WarpSum(dotO);
        float rowLse = rowValid ? lse[d.LseIndex(b, h, i)] : 0f;
        int lastRow = Math.Min(d.QueryLength - 1, (Grid.IdxX * RowsPerGroup) + RowsPerGroup - 1);
        int lastKey = lastRow + offset;
        var acc = default(Dims4);
        for (int j0 = 0; j0 <= lastKey; j0 += KeyTile)
        {
            Group.Barrier();
            LoadTile(k, sk, KStride, d, b, g, j0);
            LoadTile(v, sv, KStride, d, b, g, j0);
            Group.Barrier();

            int key = j0 + lane;
            float ds = 0f;
            if (rowValid && key <= i + offset)
            {
                float s = 0f, dp = 0f;
                for (int e = 0; e < d.HeadDim; e++)
                {
                    s += sq[(warp * MaxHeadDim) + e] * sk[(lane * KStride) + e];
                    dp += sdo[(warp * MaxHeadDim) + e] * sv[(lane * KStride) + e];
                }

                float p = MathF.Exp((d.Scale * s) - rowLse);
                ds = p * (dp - dRow);
            }

            sds[(warp * KeyTile) + lane] = ds;
            Warp.Barrier();
            int seen = rowValid ? Math.Min(KeyTile, i + offset + 1 - j0) : 0;
            for (int r = 0; r < seen; r++)
            {
                acc.AddRow(sds[(warp * KeyTile) + r], sk, r * KStride, lane, d.HeadDim);
            }

            Warp.Barrier();
        }

        if (rowValid)
        {
            acc.Store(dq, qAt, lane, d.HeadDim, d.Scale);
        }
    }

    internal static void DkDvKernel(FloatView dO, FloatView q, FloatView k, FloatView v, FloatView o, FloatView lse, FloatView dk, FloatView dv, Dims d)
    {
        var sk = SharedMemory.Allocate<float>(BackKeys * KStride);
        var sv = SharedMemory.Allocate<float>(BackKeys * KStride);
        var sq = SharedMemory.Allocate<float>(BackRows * MaxHeadDim);
        var sdo = SharedMemory.Allocate<float>(BackRows * MaxHeadDim);
        var sp = SharedMemory.Allocate<float>(BackRows * BackKeys);
        var sds = SharedMemory.Allocate<float>(BackRows * BackKeys);
        var rowStat = SharedMemory.Allocate<float>(2 * BackRows);
        var dkAcc = SharedMemory.Allocate<float>(BackKeys * MaxHeadDim);
        var dvAcc = SharedMemory.Allocate<float>(BackKeys * MaxHeadDim);
        int tid = Group.IdxX;
        int b = Grid.IdxY / d.KvHeads, g = Grid.IdxY - (b * d.KvHeads), j0 = Grid.IdxX * BackKeys;
        int offset = d.KeyLength - d.QueryLength, group = d.Heads / d.KvHeads;
        for (int idx = tid; idx < BackKeys * d.HeadDim; idx += BackThreads)
        {
            int r = idx / d.HeadDim, e = idx - (r * d.HeadDim), key = j0 + r;
            sk[(r * KStride) + e] = key < d.KeyLength ? k[d.KeyIndex(b, key, g) + e] : 0f;
            sv[(r * KStride) + e] = key < d.KeyLength ? v[d.KeyIndex(b, key, g) + e] : 0f;
            dkAcc[(r * MaxHeadDim) + e] = 0f;
            dvAcc[(r * MaxHeadDim) + e] = 0f;
        }

        int pairRow = tid / BackKeys, pairKey = tid - (pairRow * BackKeys);
        int ownKey = tid / BackRows, ownLane = tid - (ownKey * BackRows);
        int firstRow = Math.Max(0, j0 - offset);
        for (int hh = 0; hh < group; hh++)
        {
            int h = (g * group) + hh;
            for (int c0 = firstRow; c0 < d.QueryLength; c0 += BackRows)
            {
                Group.Barrier();
                for (int idx = tid; idx < BackRows * d.HeadDim; idx += BackThreads)
                {
                    int r = idx / d.HeadDim, e = idx - (r * d.HeadDim), i = c0 + r;
                    bool valid = i < d.QueryLength;
                    sq[(r * MaxHeadDim) + e] = valid ? q[d.QueryIndex(b, i, h) + e] : 0f;
                    sdo[(r * MaxHeadDim) + e] = valid ? dO[d.QueryIndex(b, i, h) + e] : 0f;
                }

                if (tid < BackRows && c0 + tid < d.QueryLength)
                {
                    int at = d.QueryIndex(b, c0 + tid, h);
                    float dot = 0f;
                    for (int e = 0; e < d.HeadDim; e++)
                    {
                        dot += dO[at + e] * o[at + e];
                    }

                    rowStat[tid] = lse[d.LseIndex(b, h, c0 + tid)];
                    rowStat[BackRows + tid] = dot;
                }

                Group.Barrier();
                int pi = c0 + pairRow, pj = j0 + pairKey;
                float p = 0f, ds = 0f;
                if (pi < d.QueryLength && pj < d.KeyLength && pj <= pi + offset)
                {
                    float s = 0f, dp = 0f;
                    for (int e = 0; e < d.HeadDim; e++)
                    {
                        s += sq[(pairRow * MaxHeadDim) + e] * sk[(pairKey * KStride) + e];
                        dp += sdo[(pairRow * MaxHeadDim) + e] * sv[(pairKey * KStride) + e];
                    }

                    p = MathF.Exp((d.Scale * s) - rowStat[pairRow]);
                    ds = p * (dp - rowStat[BackRows + pairRow]);
                }

                sp[(pairRow * BackKeys) + pairKey] = p;
                sds[(pairRow * BackKeys) + pairKey] = ds;
                Group.Barrier();
                // Only the rows that see this thread's key (r ≥ key − offset − c0): a masked pair adds nothing, not even 0·NaN.
                int firstSeeing = Math.Max(0, j0 + ownKey - offset - c0);
                for (int e = ownLane; e < d.HeadDim; e += BackRows)
                {
                    float dkv = dkAcc[(ownKey * MaxHeadDim) + e], dvv = dvAcc[(ownKey * MaxHeadDim) + e];
                    for (int r = firstSeeing; r < BackRows; r++)
                    {
                        dvv += sp[(r * BackKeys) + ownKey] * sdo[(r * MaxHeadDim) + e];
                        dkv += sds[(r * BackKeys) + ownKey] * sq[(r * MaxHeadDim) + e];
                    }

                    dkAcc[(ownKey * MaxHeadDim) + e] = dkv;
                    dvAcc[(ownKey * MaxHeadDim) + e] = dvv;
                }
            }
        }

        Group.Barrier();
        for (int idx = tid; idx < BackKeys * d.HeadDim; idx += BackThreads)
        {
            int r = idx / d.HeadDim, e = idx - (r * d.HeadDim), key = j0 + r;
            if (key < d.KeyLength)
            {
                dk[d.KeyIndex(b, key, g) + e] = d.Scale * dkAcc[(r * MaxHeadDim) + e];
                dv[d.KeyIndex(b, key, g) + e] = dvAcc[(r * MaxHeadDim) + e];
            }
        }
    }

    private sealed partial class Loaded
    {
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, FloatView, FloatView, Dims> Forward;
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, Dims> Dq;
        public readonly Action<KernelConfig, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, Dims> DkDv;

        private Loaded(Accelerator accelerator)
        {
            Forward = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, FloatView, FloatView, Dims>(ForwardKernel);
            Dq = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, Dims>(DqKernel);
            DkDv = accelerator.LoadStreamKernel<FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, FloatView, Dims>(DkDvKernel);
        }
    }
}
