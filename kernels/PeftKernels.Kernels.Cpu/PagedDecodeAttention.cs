// Decode attention of ONE query row over a paged KV cache, on the calling thread, with no allocation.
// Shapes: q, o [heads, headDim]; one layer's key and value pools, block b's position s at float offset
// (b·blockSize + s)·kvDim, kvDim = kvHeads·headDim (the engine's KvBlockPool layout); blockTable[i] =
// the pool block holding positions [i·blockSize, (i + 1)·blockSize) of the sequence. Query head h reads
// kv head h / (heads / kvHeads) (GQA). Every position 0..length − 1 is visible (a causal decode step
// passes its own length). For each head h in [h0, h1):
//   s_j = scale · q_h·k_j          o_h = Σ_j p_j v_j,   p_j = exp(s_j − max) / Σ_l exp(s_l − max)
// by exact online softmax in fp32 over runs of up to 64 positions inside one block (the scores of a
// run on the stack): m' = max(m, max_j s_j), l = l·e^(m − m') + Σ_j e^(s_j − m'), o_h = o_h·e^(m − m')
// + Σ_j e^(s_j − m')·v_j, then o_h /= l. Why: PagedAttention.Decode runs the general attention kernel
// once per block and merges the blocks by log-sum-exp; a decode step wants one pass over the cache with
// no per-block set-up, and the engine splits the heads over its own threads ([h0, h1)).
// Memory order: a decode step reads the whole cache (2·4·length·kvDim bytes a layer: 6.5 MB a token for
// a ~125M Llama at 88 positions), cold, since the weights streamed since the last step evicted it. So the
// loops run position by position over all the heads of a group (up to 32 heads' scores of one run on the
// stack): each key row, then each value row, is read once from start to end, as one stream, and the next
// rows are prefetched into L2 (the value rows of the run while its keys are scored, the next run's key
// rows while its values are summed). Looping head by head instead walked the cache once per head with a
// stride of a whole row, at 4–7 GB/s cold against 12–13 GB/s this way (AMD EPYC Zen 4, one thread, 12
// heads of 64, docs/performance.md). Every output element still gets its FMAs in position order, so the
// result is the same bit for bit. The dot, max, exp, scale and P·V steps are the existing attention
// kernel's (Attention's tile helpers, per SIMD width), so non-finite values propagate as there: a NaN key
// or value at a visible position gives NaN.
// A bf16 cache (the overload over ushort pools: bf16 bit patterns, the engine's KvCacheType.BFloat16) runs
// the same loops with each key and value vector widened exactly in registers (IWidenLoad: a 16-bit shift),
// so its result is bit for bit the fp32 kernel's on the widened cache, for half the bytes streamed.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Single-threaded, allocation-free GQA decode attention of one query row over a paged KV cache.</summary>
public static unsafe class PagedDecodeAttention
{
    /// <summary>Positions scored at a time (a multiple of every vector width; the scores live on the stack).</summary>
    private const int Run = 64;

    /// <summary>o[h] = softmax(scale·q[h]·Kᵀ)·V over positions 0..length − 1 for query heads h in [h0, h1); the other heads of o are not written.</summary>
    /// <param name="q">Query [heads, headDim] (after RoPE).</param>
    /// <param name="keyPool">One layer's key pool: block b's position s at float offset (b·blockSize + s)·kvHeads·headDim.</param>
    /// <param name="valuePool">One layer's value pool, the same layout.</param>
    /// <param name="blockTable">The sequence's blocks in order: at least ceil(length / blockSize) entries, each a block of the pools.</param>
    /// <param name="blockSize">Positions per block.</param>
    /// <param name="length">Positions attended (all visible), at least 1.</param>
    /// <param name="heads">Query heads, a multiple of <paramref name="kvHeads"/>.</param>
    /// <param name="kvHeads">Key/value heads.</param>
    /// <param name="headDim">Head dimension.</param>
    /// <param name="h0">First query head computed.</param>
    /// <param name="h1">End of the query heads computed (exclusive), h0 ≤ h1 ≤ heads.</param>
    /// <param name="scale">Score scale, typically 1/√headDim.</param>
    /// <param name="o">Output [heads, headDim]; heads [h0, h1) written.</param>
    /// <param name="path">SIMD path (<see cref="SimdPath.Auto"/>: the widest supported).</param>
    /// <exception cref="ArgumentException">A length, dim, head range or block id is out of range.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static void Row(ReadOnlySpan<float> q, ReadOnlySpan<float> keyPool, ReadOnlySpan<float> valuePool, ReadOnlySpan<int> blockTable,
        int blockSize, int length, int heads, int kvHeads, int headDim, int h0, int h1, float scale, Span<float> o, SimdPath path) =>
        Row<float, Fp32Load>(q, keyPool, valuePool, blockTable, blockSize, length, heads, kvHeads, headDim, h0, h1, scale, o, path);

    /// <summary>
    /// As the fp32 overload over pools of bf16 bit patterns (each element the upper 16 bits of an fp32): the same result, bit for bit,
    /// as the fp32 overload on the widened pools.
    /// </summary>
    /// <exception cref="ArgumentException">A length, dim, head range or block id is out of range.</exception>
    /// <exception cref="NotSupportedException"><paramref name="path"/> is not supported on this processor.</exception>
    public static void Row(ReadOnlySpan<float> q, ReadOnlySpan<ushort> keyPool, ReadOnlySpan<ushort> valuePool, ReadOnlySpan<int> blockTable,
        int blockSize, int length, int heads, int kvHeads, int headDim, int h0, int h1, float scale, Span<float> o, SimdPath path) =>
        Row<ushort, Bf16Load>(q, keyPool, valuePool, blockTable, blockSize, length, heads, kvHeads, headDim, h0, h1, scale, o, path);

    private static void Row<TE, TL>(ReadOnlySpan<float> q, ReadOnlySpan<TE> keyPool, ReadOnlySpan<TE> valuePool, ReadOnlySpan<int> blockTable,
        int blockSize, int length, int heads, int kvHeads, int headDim, int h0, int h1, float scale, Span<float> o, SimdPath path)
        where TE : unmanaged
        where TL : IWidenLoad<TE>
    {
        Check.Positive(blockSize, "blockSize");
        Check.Positive(length, "length");
        Check.Positive(kvHeads, "kvHeads");
        Check.Positive(headDim, "headDim");
        if (heads <= 0 || heads % kvHeads != 0)
        {
            throw new ArgumentException($"heads must be a positive multiple of kvHeads {kvHeads}; got {heads}.", nameof(heads));
        }

        Check.Length("q", q.Length, (long)heads * headDim, "heads·headDim");
        Check.Length("o", o.Length, (long)heads * headDim, "heads·headDim");
        Check.Length("valuePool", valuePool.Length, keyPool.Length, "keyPool's length");
        if (h0 < 0 || h1 < h0 || h1 > heads)
        {
            throw new ArgumentOutOfRangeException(nameof(h1), $"the head range [{h0}, {h1}) must lie in [0, heads {heads}].");
        }

        long blockFloats = (long)blockSize * kvHeads * headDim;
        long poolBlocks = keyPool.Length / blockFloats;
        int blocks = (int)(((long)length + blockSize - 1) / blockSize);
        if (blockTable.Length < blocks)
        {
            throw new ArgumentException($"blockTable has {blockTable.Length} blocks; {length} positions of {blockSize} a block need {blocks}.", nameof(blockTable));
        }

        for (int i = 0; i < blocks; i++)
        {
            if ((uint)blockTable[i] >= (ulong)poolBlocks)
            {
                throw new ArgumentException($"blockTable[{i}] = {blockTable[i]} is outside the pool's {poolBlocks} blocks of {blockFloats} floats.", nameof(blockTable));
            }
        }

        var resolved = new KernelOptions(1, path).ResolvePath();
        if (h0 == h1)
        {
            return;
        }

        fixed (float* pq = q, po = o)
        fixed (TE* pk = keyPool, pv = valuePool)
        fixed (int* pt = blockTable)
        {
            var d = new Dims(blockSize, length, heads / kvHeads, kvHeads * headDim, headDim, scale);
            switch (resolved)
            {
                case SimdPath.Vector512:
                    Heads<Vector512<float>, V512, TE, TL>(pq, pk, pv, pt, d, h0, h1, po);
                    break;
                case SimdPath.Vector256:
                    Heads<Vector256<float>, V256, TE, TL>(pq, pk, pv, pt, d, h0, h1, po);
                    break;
                default:
                    Heads<float, V1, TE, TL>(pq, pk, pv, pt, d, h0, h1, po);
                    break;
            }
        }
    }

    /// <summary>Query heads per group of <see cref="Heads"/>: their scores of one run live on the stack.</summary>
    private const int HeadGroup = 32;

    private static void Heads<TV, T, TE, TL>(float* q, TE* k, TE* v, int* table, Dims d, int h0, int h1, float* o)
        where TV : unmanaged
        where T : struct, IVec<TV>
        where TE : unmanaged
        where TL : IWidenLoad<TE>
    {
        int hd = d.HeadDim;
        float* s = stackalloc float[HeadGroup * Run];
        float* m = stackalloc float[HeadGroup];
        float* l = stackalloc float[HeadGroup];
        for (int g0 = h0; g0 < h1; g0 += HeadGroup)
        {
            int g1 = Math.Min(h1, g0 + HeadGroup), n = g1 - g0;
            long span0 = (long)(g0 / d.Group) * hd;
            int spanBytes = (int)(((((long)(g1 - 1) / d.Group) + 1) * hd) - span0) * sizeof(TE);
            new Span<float>(o + ((long)g0 * hd), n * hd).Clear();
            for (int i = 0; i < n; i++)
            {
                m[i] = float.NegativeInfinity;
                l[i] = 0f;
            }

            for (int pos = 0; pos < d.Length;)
            {
                int inBlock = pos % d.BlockSize;
                int count = Math.Min(Run, Math.Min(d.BlockSize - inBlock, d.Length - pos));
                long at = (((long)table[pos / d.BlockSize] * d.BlockSize) + inBlock) * d.KvDim;
                for (int j = 0; j < count; j++)
                {
                    TE* row = k + at + ((long)j * d.KvDim);
                    Prefetch(v + at + ((long)j * d.KvDim) + span0, spanBytes);
                    for (int i = 0; i < n; i++)
                    {
                        int h = g0 + i;
                        s[(i * Run) + j] = Dot<TV, T, TE, TL>(q + ((long)h * hd), row + ((long)(h / d.Group) * hd), hd);
                    }
                }

                for (int i = 0; i < n; i++)
                {
                    float* si = s + (i * Run), oh = o + ((long)(g0 + i) * hd);
                    float mNew = MathF.Max(m[i], Attention.ScaledMax<TV, T>(si, count, d.Scale));
                    float alpha = mNew == m[i] ? 1f : MathF.Exp(m[i] - mNew);
                    l[i] = (l[i] * alpha) + Attention.ExpInPlace<TV, T>(si, count, d.Scale, mNew);
                    m[i] = mNew;
                    if (alpha != 1f)
                    {
                        Attention.ScaleRow<TV, T>(oh, oh, hd, alpha);
                    }
                }

                for (int j = 0; j < count; j++)
                {
                    TE* row = v + at + ((long)j * d.KvDim);
                    int ahead = pos + count + j;
                    if (ahead < d.Length)
                    {
                        Prefetch(k + (((((long)table[ahead / d.BlockSize] * d.BlockSize) + (ahead % d.BlockSize)) * d.KvDim) + span0), spanBytes);
                    }

                    for (int i = 0; i < n; i++)
                    {
                        int h = g0 + i;
                        Axpy<TV, T, TE, TL>(s[(i * Run) + j], row + ((long)(h / d.Group) * hd), o + ((long)h * hd), hd);
                    }
                }

                pos += count;
            }

            for (int i = 0; i < n; i++)
            {
                float* oh = o + ((long)(g0 + i) * hd);
                Attention.ScaleRow<TV, T>(oh, oh, hd, 1f / l[i]);
            }
        }
    }

    /// <summary>
    /// x·y over n elements with y widened by TL: the operations of the attention kernel's Dot (AttentionTiles.cs: two FMA
    /// chains of full vectors, one more vector into the first, the lanes summed, a scalar tail by multiply then add), so the
    /// fp32 result is the same bit for bit.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot<TV, T, TE, TL>(float* x, TE* y, int n)
        where TV : unmanaged
        where T : struct, IVec<TV>
        where TE : unmanaged
        where TL : IWidenLoad<TE>
    {
        int w = T.Width, d = 0;
        TV s0 = default, s1 = default;
        for (; d <= n - (2 * w); d += 2 * w)
        {
            s0 = T.Fma(T.Load(x + d), T.LoadWidened<TE, TL>(y + d), s0);
            s1 = T.Fma(T.Load(x + d + w), T.LoadWidened<TE, TL>(y + d + w), s1);
        }

        for (; d <= n - w; d += w)
        {
            s0 = T.Fma(T.Load(x + d), T.LoadWidened<TE, TL>(y + d), s0);
        }

        float sum = T.Sum(T.Add(s0, s1));
        for (; d < n; d++)
        {
            sum += x[d] * TL.Load(y + d);
        }

        return sum;
    }

    /// <summary>
    /// o[c] += p·v[c] for c &lt; n (v widened by TL): the FMAs of Attention.MulAdd1 for one position (vectors by fused multiply-add,
    /// a scalar tail by multiply then add), so the sum per element is the same bit for bit; inlined, since it runs once per position and head.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Axpy<TV, T, TE, TL>(float p, TE* v, float* o, int n)
        where TV : unmanaged
        where T : struct, IVec<TV>
        where TE : unmanaged
        where TL : IWidenLoad<TE>
    {
        int w = T.Width, c = 0;
        TV vp = T.Splat(p);
        for (; c <= n - w; c += w)
        {
            T.Store(o + c, T.Fma(vp, T.LoadWidened<TE, TL>(v + c), T.Load(o + c)));
        }

        for (; c < n; c++)
        {
            o[c] += p * TL.Load(v + c);
        }
    }

    /// <summary>Prefetches <paramref name="bytes"/> from <paramref name="start"/> into L2, a line at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(void* start, int bytes)
    {
        byte* p = (byte*)start;
        for (int b = 0; b < bytes; b += 64)
        {
            Sse.Prefetch1(p + b);
        }
    }

    private readonly record struct Dims(int BlockSize, int Length, int Group, int KvDim, int HeadDim, float Scale);
}
