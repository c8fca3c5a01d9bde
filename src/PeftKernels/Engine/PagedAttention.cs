// Decode attention over a paged KV cache: the query of a sequence's last position against every
// position of one layer, reading the keys and values block by block from the pool (no copy of the
// cache). Shapes: q, o [heads, headDim]; each block's K, V [n_b, kvHeads, headDim], n_b = blockSize
// except perhaps the last. Query head h reads kv head h / (heads / kvHeads) (GQA), as Attention.
// Per block b the existing CPU kernel (Attention.Forward, one query that sees all n_b keys) gives
//   o_b = Σ_{j∈b} p_bj v_j,   p_bj = exp(s_j − lse_b),   lse_b = log Σ_{j∈b} exp(s_j),   s_j = scale·q·k_j
// and the blocks merge exactly as flash attention merges key tiles (log-sum-exp weights):
//   lse = log Σ_b exp(lse_b)      o = Σ_b exp(lse_b − lse) · o_b
// folded left to right with a running (lse, o), so o is softmax(scale·q·Kᵀ)·V over the whole sequence.
// The query is causal by construction: it is the last position and sees every stored one. Keys are
// stored after RoPE (the caller rotates q and k at their positions before writing and attending).
using System.Buffers;

namespace PeftKernels.Engine;

/// <summary>Causal GQA decode attention of one query row over a <see cref="PagedSequence"/>'s blocks.</summary>
public static class PagedAttention
{
    /// <summary>Above this many floats the per-block scratch is rented instead of on the stack.</summary>
    private const int StackScratchFloats = 4096;

    /// <summary>
    /// o = softmax(scale · q · Kᵀ) · V for the query of position Length − 1 of <paramref name="sequence"/> over its positions
    /// 0..Length − 1 in <paramref name="layer"/>, every one of which must be written.
    /// </summary>
    /// <param name="q">Query of the last position [heads, headDim] (after RoPE).</param>
    /// <param name="sequence">The sequence whose keys and values are read.</param>
    /// <param name="layer">Decoder layer.</param>
    /// <param name="o">Output [heads, headDim] (overwritten).</param>
    /// <param name="heads">Query heads, a multiple of the pool's kvHeads.</param>
    /// <param name="scale">Score scale, typically 1/√headDim.</param>
    /// <param name="options">Threads and SIMD path of the per-block kernel.</param>
    /// <exception cref="ArgumentException">Bad shapes or layer, or the layer's positions are not all written.</exception>
    public static void Decode(ReadOnlySpan<float> q, PagedSequence sequence, int layer, Span<float> o, int heads, float scale, KernelOptions options = default)
    {
        ArgumentNullException.ThrowIfNull(sequence);
        ObjectDisposedException.ThrowIf(sequence.IsFreed, sequence);
        var pool = sequence.Pool;
        int kvHeads = pool.KvHeads, headDim = pool.HeadDim;
        if (heads <= 0 || heads % kvHeads != 0)
        {
            throw new ArgumentException($"query heads must be a positive multiple of the pool's kvHeads {kvHeads}; got {heads}.", nameof(heads));
        }

        int qDim = heads * headDim;
        if (q.Length != qDim || o.Length != qDim)
        {
            throw new ArgumentException($"q and o are [heads {heads}, headDim {headDim}] = {qDim} floats; got q {q.Length}, o {o.Length}.");
        }

        if ((uint)layer >= (uint)pool.Layers)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), $"layer must be in [0, {pool.Layers}); got {layer}.");
        }

        int length = sequence.Length;
        if (length == 0 || sequence.WrittenLength(layer) != length)
        {
            throw new ArgumentException($"decode attention needs every position of layer {layer} written: the sequence has {length} positions, the layer {sequence.WrittenLength(layer)} written.", nameof(sequence));
        }

        int scratchFloats = qDim + (2 * heads);
        float[]? rented = scratchFloats > StackScratchFloats ? ArrayPool<float>.Shared.Rent(scratchFloats) : null;
        Span<float> scratch = rented != null ? rented.AsSpan(0, scratchFloats) : stackalloc float[scratchFloats];
        try
        {
            var blockO = scratch[..qDim];
            var blockLse = scratch.Slice(qDim, heads);
            var runningLse = scratch.Slice(qDim + heads, heads);
            int blocks = sequence.BlockTable.Count;
            for (int b = 0; b < blocks; b++)
            {
                int n = sequence.TokensInBlock(b);
                var target = b == 0 ? o : blockO;
                var targetLse = b == 0 ? runningLse : blockLse;
                Kernels.Cpu.Attention.Forward(q, sequence.KeyBlock(layer, b), sequence.ValueBlock(layer, b), target, targetLse,
                    1, 1, n, heads, kvHeads, headDim, scale, options);
                if (b > 0)
                {
                    Merge(o, runningLse, blockO, blockLse, heads, headDim);
                }
            }
        }
        finally
        {
            if (rented != null)
            {
                ArrayPool<float>.Shared.Return(rented);
            }
        }
    }

    /// <summary>Folds one block's (o_b, lse_b) into the running (o, lse) per head with log-sum-exp weights.</summary>
    private static void Merge(Span<float> o, Span<float> lse, ReadOnlySpan<float> blockO, ReadOnlySpan<float> blockLse, int heads, int headDim)
    {
        for (int h = 0; h < heads; h++)
        {
            float a = lse[h], b = blockLse[h];
            float m = MathF.Max(a, b);
            float merged = m + MathF.Log(MathF.Exp(a - m) + MathF.Exp(b - m));
            float wa = MathF.Exp(a - merged), wb = MathF.Exp(b - merged);
            var row = o.Slice(h * headDim, headDim);
            var blockRow = blockO.Slice(h * headDim, headDim);
            for (int e = 0; e < headDim; e++)
            {
                row[e] = (wa * row[e]) + (wb * blockRow[e]);
            }

            lse[h] = merged;
        }
    }
}
