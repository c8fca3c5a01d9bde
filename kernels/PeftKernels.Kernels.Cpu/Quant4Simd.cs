// Vector helpers of 4-bit dequantization. Eight packed bytes hold 16 codes, first element
// in the high nibble: bytes are duplicated pairwise (b0 b0 b1 b1 …), zero-extended to 32-bit
// lanes, shifted right by 4 in even lanes and 0 in odd lanes and masked to 4 bits. The
// 16-entry code table lives in one 512-bit register and a lane permute is the lookup
// (Vector256: two 8-entry permutes and a blend on bit 3).
using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class Quant4Simd
{
    /// <summary>The 4-bit code of element <paramref name="e"/> (first element of a byte in its high nibble).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Code(byte* packed, long e) => (e & 1) == 0 ? packed[e >> 1] >> 4 : packed[e >> 1] & 0xF;

    // Constants are built inline (the JIT folds them) rather than read from static readonly
    // fields, which code compiled with AggressiveOptimization may re-read behind a class-init check.
    /// <summary>The 16 codes of the 8 bytes at <paramref name="p"/>, looked up in <paramref name="table"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Decode16(byte* p, Vector512<float> table)
    {
        var bytes = Ssse3.Shuffle(Vector128.CreateScalar(*(ulong*)p).AsByte(), Vector128.Create((byte)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
        var lanes = Avx512F.ConvertToVector512UInt32(bytes);
        var index = Avx512F.ShiftRightLogicalVariable(lanes, Vector512.Create(4u, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
        return Avx512F.PermuteVar16x32(table, index.AsInt32()); // only the low 4 index bits are read
    }

    /// <summary>The 8 codes of the 4 bytes at <paramref name="p"/>, looked up in the table halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Decode8(byte* p, Vector256<float> tableLo, Vector256<float> tableHi)
    {
        var bytes = Ssse3.Shuffle(Vector128.CreateScalar(*(uint*)p).AsByte(), Vector128.Create((byte)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
        var lanes = Avx2.ConvertToVector256Int32(bytes).AsUInt32();
        var index = Avx2.ShiftRightLogicalVariable(lanes, Vector256.Create(4u, 0, 4, 0, 4, 0, 4, 0)) & Vector256.Create(15u);
        var lo = Avx2.PermuteVar8x32(tableLo, index.AsInt32());
        var hi = Avx2.PermuteVar8x32(tableHi, index.AsInt32());
        return Avx.BlendVariable(lo, hi, Vector256.GreaterThan(index, Vector256.Create(7u)).AsSingle());
    }

    /// <summary>
    /// dst[q] = table[code(e0 + q)] · absmax[(e0 + q) / blocksize] for q &lt; count: a contiguous run of
    /// the flattened weight, vectorised over whole byte pairs inside each block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeRun(byte* packed, float* absmax, float[] table, int blocksize, long e0, int count, float* dst, SimdPath path)
    {
        long e = e0, end = e0 + count;
        int log2 = BitOperations.Log2((uint)blocksize);
        Vector512<float> t512 = default;
        Vector256<float> tLo = default, tHi = default;
        if (path == SimdPath.Vector512)
        {
            t512 = Vector512.Create(table);
        }
        else if (path == SimdPath.Vector256)
        {
            tLo = Vector256.Create(table, 0);
            tHi = Vector256.Create(table, 8);
        }

        while (e < end)
        {
            long block = e >> log2;
            long segmentEnd = Math.Min(end, (block + 1) << log2);
            float scale = absmax[block];
            for (; e < segmentEnd && ((e & 1) != 0 || path == SimdPath.Scalar || segmentEnd - e < 16); e++)
            {
                int code = Code(packed, e);
                dst[e - e0] = table[code] * scale;
            }

            if (path == SimdPath.Vector512)
            {
                var s = Vector512.Create(scale);
                for (; e + 16 <= segmentEnd; e += 16)
                {
                    (Decode16(packed + (e >> 1), t512) * s).Store(dst + (e - e0));
                }
            }
            else if (path == SimdPath.Vector256)
            {
                var s = Vector256.Create(scale);
                for (; e + 8 <= segmentEnd; e += 8)
                {
                    (Decode8(packed + (e >> 1), tLo, tHi) * s).Store(dst + (e - e0));
                }
            }

            for (; e < segmentEnd; e++)
            {
                int code = Code(packed, e);
                dst[e - e0] = table[code] * scale;
            }
        }
    }

    /// <summary>
    /// Σ_q dequant(e0 + q) · x[q] for q &lt; count, fused: per block the codes are dotted with x
    /// unscaled and the block's absmax is applied once (one FMA per block), so one weight row
    /// is streamed with no intermediate buffer. Used by the n = 1 GEMV.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotRun(byte* packed, float* absmax, float[] table, int blocksize, long e0, int count, float* x, SimdPath path)
    {
        long e = e0, end = e0 + count;
        int log2 = BitOperations.Log2((uint)blocksize);
        float scalar = 0f;
        var total512 = Vector512<float>.Zero;
        var total256 = Vector256<float>.Zero;
        Vector512<float> t512 = path == SimdPath.Vector512 ? Vector512.Create(table) : default;
        Vector256<float> tLo = default, tHi = default;
        if (path == SimdPath.Vector256)
        {
            tLo = Vector256.Create(table, 0);
            tHi = Vector256.Create(table, 8);
        }

        while (e < end)
        {
            long block = e >> log2;
            long segmentEnd = Math.Min(end, (block + 1) << log2);
            float scale = absmax[block];
            float partial = 0f;
            for (; e < segmentEnd && ((e & 1) != 0 || path == SimdPath.Scalar || segmentEnd - e < 16); e++)
            {
                int code = Code(packed, e);
                partial += table[code] * x[e - e0];
            }

            if (path == SimdPath.Vector512)
            {
                var acc0 = Vector512<float>.Zero;
                var acc1 = Vector512<float>.Zero;
                for (; e + 32 <= segmentEnd; e += 32)
                {
                    acc0 = Vector512.FusedMultiplyAdd(Decode16(packed + (e >> 1), t512), Vector512.Load(x + (e - e0)), acc0);
                    acc1 = Vector512.FusedMultiplyAdd(Decode16(packed + (e >> 1) + 8, t512), Vector512.Load(x + (e - e0) + 16), acc1);
                }

                for (; e + 16 <= segmentEnd; e += 16)
                {
                    acc0 = Vector512.FusedMultiplyAdd(Decode16(packed + (e >> 1), t512), Vector512.Load(x + (e - e0)), acc0);
                }

                total512 = Vector512.FusedMultiplyAdd(acc0 + acc1, Vector512.Create(scale), total512);
            }
            else if (path == SimdPath.Vector256)
            {
                var acc = Vector256<float>.Zero;
                for (; e + 8 <= segmentEnd; e += 8)
                {
                    acc = Vector256.FusedMultiplyAdd(Decode8(packed + (e >> 1), tLo, tHi), Vector256.Load(x + (e - e0)), acc);
                }

                total256 = Vector256.FusedMultiplyAdd(acc, Vector256.Create(scale), total256);
            }

            for (; e < segmentEnd; e++)
            {
                int code = Code(packed, e);
                partial += table[code] * x[e - e0];
            }

            scalar += partial * scale;
        }

        return scalar + Vector512.Sum(total512) + Vector256.Sum(total256);
    }

    /// <summary>
    /// Lane order of <see cref="Decode16Permuted"/>: lane 2j holds nibble j and lane 2j+1 nibble
    /// j + 8 of the little-endian 64-bit word; nibble t is element 2(t/2) + 1 when t is even
    /// (low nibble) and 2(t/2) when odd (high nibble).
    /// </summary>
    public static int PermutedElement(int lane)
    {
        int t = (lane & 1) == 0 ? lane >> 1 : (lane >> 1) + 8;
        return (t & 1) == 0 ? (2 * (t >> 1)) + 1 : 2 * (t >> 1);
    }

    /// <summary>xp[16g + L] = x[16g + PermutedElement(L)] for whole groups of 16; the tail is copied as is.</summary>
    public static void PermuteForDot(float* x, int count, float* xp)
    {
        int q = 0;
        for (; q + 16 <= count; q += 16)
        {
            for (int lane = 0; lane < 16; lane++)
            {
                xp[q + lane] = x[q + PermutedElement(lane)];
            }
        }

        for (; q < count; q++)
        {
            xp[q] = x[q];
        }
    }

    /// <summary>
    /// The 16 codes of 8 bytes in the lane order of <see cref="PermutedElement"/>: a broadcast
    /// load and one variable 64-bit shift (vpermps ignores the upper index bits), so only the
    /// table permute uses the shuffle port (the byte shuffle and widening of
    /// <see cref="Decode16"/> are avoided).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Decode16Permuted(byte* p, Vector512<float> table)
    {
        // vpermps reads only the low 4 bits of each index, so the shifted word needs no mask.
        var word = Vector512.Create(*(ulong*)p);
        var shifted = Avx512F.ShiftRightLogicalVariable(word, Vector512.Create(0ul, 4, 8, 12, 16, 20, 24, 28));
        return Avx512F.PermuteVar16x32(table, shifted.AsInt32());
    }

    /// <summary>
    /// <see cref="DotRun"/> for Vector512 with x pre-permuted by <see cref="PermuteForDot"/>, over
    /// whole blocks: e0 and count must be multiples of the block size (a row of a weight whose
    /// in % blocksize == 0), so the 16-groups of x and of the codes line up.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotRunPermuted(byte* packed, float* absmax, float[] table, int blocksize, long e0, int count, float* xp)
    {
        Debug.Assert((e0 & (blocksize - 1)) == 0 && (count & (blocksize - 1)) == 0, "whole blocks only");
        long end = e0 + count;
        int log2 = BitOperations.Log2((uint)blocksize);
        var total = Vector512<float>.Zero;
        var t512 = Vector512.Create(table);
        if (blocksize == 64)
        {
            // The default block size, fully unrolled: four independent decode-FMAs per block and
            // no inner loop.
            for (long block = e0 >> 6, last = end >> 6; block < last; block++)
            {
                byte* pb = packed + (block << 5);
                float* px = xp + ((block << 6) - e0);
                Sse.Prefetch0(pb + 1024); // 32 blocks ahead: the stream of codes comes from DRAM
                var a0 = Decode16Permuted(pb, t512) * Vector512.Load(px);
                var a1 = Decode16Permuted(pb + 8, t512) * Vector512.Load(px + 16);
                a0 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + 16, t512), Vector512.Load(px + 32), a0);
                a1 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + 24, t512), Vector512.Load(px + 48), a1);
                total = Vector512.FusedMultiplyAdd(a0 + a1, Vector512.Create(absmax[block]), total);
            }

            return Vector512.Sum(total);
        }

        for (long block = e0 >> log2, last = end >> log2; block < last; block++)
        {
            byte* pb = packed + ((block << log2) >> 1);
            float* px = xp + ((block << log2) - e0);
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            int g = 0;
            if (blocksize >= 64)
            {
                var acc2 = Vector512<float>.Zero;
                var acc3 = Vector512<float>.Zero;
                for (; g < blocksize; g += 64)
                {
                    acc0 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1), t512), Vector512.Load(px + g), acc0);
                    acc1 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1) + 8, t512), Vector512.Load(px + g + 16), acc1);
                    acc2 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1) + 16, t512), Vector512.Load(px + g + 32), acc2);
                    acc3 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1) + 24, t512), Vector512.Load(px + g + 48), acc3);
                }

                acc0 += acc2;
                acc1 += acc3;
            }

            for (; g < blocksize; g += 32)
            {
                acc0 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1), t512), Vector512.Load(px + g), acc0);
                acc1 = Vector512.FusedMultiplyAdd(Decode16Permuted(pb + (g >> 1) + 8, t512), Vector512.Load(px + g + 16), acc1);
            }

            total = Vector512.FusedMultiplyAdd(acc0 + acc1, Vector512.Create(absmax[block]), total);
        }

        return Vector512.Sum(total);
    }

    /// <summary>
    /// Lane order of <see cref="DotRunWide"/> within a 128-code chunk (64 packed bytes read as
    /// 16 dwords): group t (0..7) holds the nibble at bits 4t..4t+3 of every dword, so lane d
    /// of group t is element 8d + 2(t/2) + 1 when t is even (low nibble) and 8d + 2(t/2) when odd.
    /// </summary>
    public static int WideElement(int position)
    {
        int t = position >> 4, d = position & 15;
        return (8 * d) + (2 * (t >> 1)) + ((t & 1) == 0 ? 1 : 0);
    }

    /// <summary>
    /// xq[128c + P] = x[128c + WideElement(P)] for whole 128-chunks; the tail is copied as is.
    /// With AVX2 each group of 16 is two 8-wide gathers (x[8d + offset], d = 0..15), so the
    /// once-per-call permutation costs little next to a small GEMV.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PermuteForWideDot(float* x, int count, float* xq)
    {
        int q = 0;
        if (Avx2.IsSupported)
        {
            var stride8 = Vector256.Create(0, 8, 16, 24, 32, 40, 48, 56);
            for (; q + 128 <= count; q += 128)
            {
                for (int t = 0; t < 8; t++)
                {
                    int offset = (2 * (t >> 1)) + ((t & 1) == 0 ? 1 : 0);
                    Avx2.GatherVector256(x + q + offset, stride8, 4).Store(xq + q + (16 * t));
                    Avx2.GatherVector256(x + q + 64 + offset, stride8, 4).Store(xq + q + (16 * t) + 8);
                }
            }
        }

        for (; q + 128 <= count; q += 128)
        {
            for (int position = 0; position < 128; position++)
            {
                xq[q + position] = x[q + WideElement(position)];
            }
        }

        for (; q < count; q++)
        {
            xq[q] = x[q];
        }
    }

    /// <summary>
    /// How far ahead (bytes) the wide decodes prefetch their stream of codes, into L2
    /// (prefetcht1). The hardware streamer stops at every 4 KiB page, so the software prefetch
    /// carries the stream. It walks the matrix linearly — one line per 64 bytes consumed, from
    /// the run's (or the row pair's) first byte + PrefetchAhead — so every line is prefetched
    /// exactly once whatever the row length. The earlier per-row pointers (p + 8 KiB, q + 8 KiB)
    /// left each row's last chunk un-prefetched and doubled up on the rest: with rows of 768
    /// codes (a ~125M Llama's projections) cold weights streamed at 7.8 GB/s; the linear walk
    /// gives 13–14 GB/s on [768, 768], [768, 2048] and [32000, 768] and 14 (was 12.5) on
    /// [8192, 8192] (AMD EPYC Zen 4, one thread, docs/performance.md).
    /// </summary>
    internal const int PrefetchAhead = 8192;

    /// <summary><see cref="PermuteForWideDot"/> with x and the result in one buffer, chunk by chunk through a stack copy.</summary>
    public static void PermuteForWideDotInPlace(float* x, int count)
    {
        float* chunk = stackalloc float[128];
        for (int q = 0; q + 128 <= count; q += 128)
        {
            new Span<float>(x + q, 128).CopyTo(new Span<float>(chunk, 128));
            PermuteForWideDot(chunk, 128, x + q);
        }
    }

    /// <summary><see cref="PermuteForDot"/> with x and the result in one buffer, group by group through a stack copy.</summary>
    public static void PermuteForDotInPlace(float* x, int count)
    {
        float* group = stackalloc float[16];
        for (int q = 0; q + 16 <= count; q += 16)
        {
            new Span<float>(x + q, 16).CopyTo(new Span<float>(group, 16));
            PermuteForDot(group, 16, x + q);
        }
    }

    /// <summary>Whether <see cref="DotRunWide"/> serves rows of <paramref name="rowLength"/> codes.</summary>
    public static bool WideDotApplies(int blocksize, int rowLength) => blocksize >= 64 && rowLength % 128 == 0 && rowLength % blocksize == 0;

    /// <summary>
    /// <see cref="DotRun"/> for Vector512 with x permuted by <see cref="PermuteForWideDot"/>.
    /// vpermps reads only the low 4 index bits, so a 64-byte chunk of codes read as 16 dwords
    /// feeds eight table lookups, group t taking the nibble at bits 4t of every dword. The
    /// nibbles at bits 8o come from a load at byte offset o (o = 1..3) instead of a shift, and
    /// those at 8o + 4 from one immediate shift of that load: per 16 codes half a shift, one
    /// permute and one FMA, with no byte shuffles or broadcast loads, on a pointer-bumped loop
    /// of two chunks. The last chunk of the run uses seven shifts of one load instead, so no
    /// load reaches past the run's last byte. e0 and count must be whole blocks and multiples
    /// of 128 (<see cref="WideDotApplies"/>). With block size 64 a chunk holds two blocks,
    /// lanes 0..7 and 8..15, each scaled into its own total. xq is best 64-byte aligned.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotRunWide(byte* packed, float* absmax, float[] table, int blocksize, long e0, int count, float* xq)
    {
        Debug.Assert(WideDotApplies(blocksize, count) && (e0 & (blocksize - 1)) == 0, "whole 128-chunks of whole blocks only");
        var t512 = Vector512.Create(table);
        byte* p = packed + (e0 >> 1);
        byte* last = p + (count >> 1) - 64; // the run's last chunk
        int log2 = BitOperations.Log2((uint)blocksize);
        float* s = absmax + (e0 >> log2);
        if (blocksize == 64)
        {
            var totalA = Vector512<float>.Zero;
            var totalB = Vector512<float>.Zero;
            for (; p + 128 <= last; p += 128, xq += 256, s += 4)
            {
                Sse.Prefetch1(p + PrefetchAhead); // see PrefetchAhead: one line per 64 bytes consumed
                Sse.Prefetch1(p + PrefetchAhead + 64);
                var sum0 = ChunkOffsetLoads(p, xq, t512);
                var sum1 = ChunkOffsetLoads(p + 64, xq + 128, t512);
                totalA = Vector512.FusedMultiplyAdd(sum0, Vector512.Create(s[0]), totalA);
                totalB = Vector512.FusedMultiplyAdd(sum0, Vector512.Create(s[1]), totalB);
                totalA = Vector512.FusedMultiplyAdd(sum1, Vector512.Create(s[2]), totalA);
                totalB = Vector512.FusedMultiplyAdd(sum1, Vector512.Create(s[3]), totalB);
            }

            if (p < last)
            {
                Sse.Prefetch1(p + PrefetchAhead);
                var sum = ChunkOffsetLoads(p, xq, t512);
                totalA = Vector512.FusedMultiplyAdd(sum, Vector512.Create(s[0]), totalA);
                totalB = Vector512.FusedMultiplyAdd(sum, Vector512.Create(s[1]), totalB);
                p += 64;
                xq += 128;
                s += 2;
            }

            Sse.Prefetch1(p + PrefetchAhead);
            var tail = ChunkShifts(p, xq, t512);
            totalA = Vector512.FusedMultiplyAdd(tail, Vector512.Create(s[0]), totalA);
            totalB = Vector512.FusedMultiplyAdd(tail, Vector512.Create(s[1]), totalB);
            return Vector256.Sum(totalA.GetLower()) + Vector256.Sum(totalB.GetUpper());
        }

        var total = Vector512<float>.Zero;
        int perBlock = blocksize >> 7;
        for (; p <= last; s++)
        {
            var sum = Vector512<float>.Zero;
            for (int i = 0; i < perBlock; i++, p += 64, xq += 128)
            {
                Sse.Prefetch1(p + PrefetchAhead);
                sum += p < last ? ChunkOffsetLoads(p, xq, t512) : ChunkShifts(p, xq, t512);
            }

            total = Vector512.FusedMultiplyAdd(sum, Vector512.Create(s[0]), total);
        }

        return Vector512.Sum(total);
    }

    /// <summary>
    /// <see cref="DotRunWide"/> for block size 64 over two consecutive rows at once (elements
    /// e0.. and e0 + count..): each 16 floats of x are loaded once for both rows, and the two
    /// streams of codes are read side by side. Each row's operations and their order are those
    /// of DotRunWide, so result[0] and result[1] gain exactly what two DotRunWide calls return.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotRunWidePair(byte* packed, float* absmax, float[] table, long e0, int count, float* xq, float* result)
    {
        Debug.Assert(WideDotApplies(64, count) && (e0 & 63) == 0, "whole 128-chunks of whole blocks only");
        var t512 = Vector512.Create(table);
        byte* p = packed + (e0 >> 1);
        byte* q = p + (count >> 1);
        byte* last = q - 64; // the first row's last chunk
        float* s = absmax + (e0 >> 6);
        float* u = s + (count >> 6);
        byte* ahead = p + PrefetchAhead; // see PrefetchAhead: walks the pair's 2·count/2 bytes, a line per 64
        var pA = Vector512<float>.Zero;
        var pB = Vector512<float>.Zero;
        var qA = Vector512<float>.Zero;
        var qB = Vector512<float>.Zero;
        for (; p < last; p += 64, q += 64, xq += 128, s += 2, u += 2, ahead += 128)
        {
            Sse.Prefetch1(ahead);
            Sse.Prefetch1(ahead + 64);
            var (sumP, sumQ) = ChunkPairOffsetLoads(p, q, xq, t512);
            pA = Vector512.FusedMultiplyAdd(sumP, Vector512.Create(s[0]), pA);
            pB = Vector512.FusedMultiplyAdd(sumP, Vector512.Create(s[1]), pB);
            qA = Vector512.FusedMultiplyAdd(sumQ, Vector512.Create(u[0]), qA);
            qB = Vector512.FusedMultiplyAdd(sumQ, Vector512.Create(u[1]), qB);
        }

        Sse.Prefetch1(ahead);
        Sse.Prefetch1(ahead + 64);
        var tailP = ChunkShifts(p, xq, t512);
        var tailQ = ChunkShifts(q, xq, t512);
        pA = Vector512.FusedMultiplyAdd(tailP, Vector512.Create(s[0]), pA);
        pB = Vector512.FusedMultiplyAdd(tailP, Vector512.Create(s[1]), pB);
        qA = Vector512.FusedMultiplyAdd(tailQ, Vector512.Create(u[0]), qA);
        qB = Vector512.FusedMultiplyAdd(tailQ, Vector512.Create(u[1]), qB);
        result[0] += Vector256.Sum(pA.GetLower()) + Vector256.Sum(pB.GetUpper());
        result[1] += Vector256.Sum(qA.GetLower()) + Vector256.Sum(qB.GetUpper());
    }

    /// <summary><see cref="ChunkOffsetLoads"/> for two chunks (rows) against the same 128 floats of x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<float> P, Vector512<float> Q) ChunkPairOffsetLoads(byte* p, byte* q, float* px, Vector512<float> t512)
    {
        var w0 = Vector512.Load((uint*)p);
        var w1 = Vector512.Load((uint*)(p + 1));
        var w2 = Vector512.Load((uint*)(p + 2));
        var w3 = Vector512.Load((uint*)(p + 3));
        var v0 = Vector512.Load((uint*)q);
        var v1 = Vector512.Load((uint*)(q + 1));
        var v2 = Vector512.Load((uint*)(q + 2));
        var v3 = Vector512.Load((uint*)(q + 3));
        var x = Vector512.Load(px);
        var a0 = Avx512F.PermuteVar16x32(t512, w0.AsInt32()) * x;
        var b0 = Avx512F.PermuteVar16x32(t512, v0.AsInt32()) * x;
        x = Vector512.Load(px + 16);
        var a1 = Avx512F.PermuteVar16x32(t512, (w0 >> 4).AsInt32()) * x;
        var b1 = Avx512F.PermuteVar16x32(t512, (v0 >> 4).AsInt32()) * x;
        x = Vector512.Load(px + 32);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w1.AsInt32()), x, a0);
        b0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, v1.AsInt32()), x, b0);
        x = Vector512.Load(px + 48);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w1 >> 4).AsInt32()), x, a1);
        b1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (v1 >> 4).AsInt32()), x, b1);
        x = Vector512.Load(px + 64);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w2.AsInt32()), x, a0);
        b0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, v2.AsInt32()), x, b0);
        x = Vector512.Load(px + 80);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w2 >> 4).AsInt32()), x, a1);
        b1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (v2 >> 4).AsInt32()), x, b1);
        x = Vector512.Load(px + 96);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w3.AsInt32()), x, a0);
        b0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, v3.AsInt32()), x, b0);
        x = Vector512.Load(px + 112);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w3 >> 4).AsInt32()), x, a1);
        b1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (v3 >> 4).AsInt32()), x, b1);
        return (a0 + a1, b0 + b1);
    }

    /// <summary>
    /// The unscaled lane sums of one 128-code chunk (64 bytes at <paramref name="p"/>) against
    /// permuted x, the nibbles at bits 8o taken from loads at byte offsets o = 0..3: reads up
    /// to 3 bytes past the chunk, so never for a run's last chunk.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ChunkOffsetLoads(byte* p, float* px, Vector512<float> t512) =>
        ChunkSum(Vector512.Load((uint*)p), Vector512.Load((uint*)(p + 1)), Vector512.Load((uint*)(p + 2)), Vector512.Load((uint*)(p + 3)), px, t512);

    /// <summary>As <see cref="ChunkOffsetLoads"/> from one 64-byte load and its shifts by 8, 16 and 24: reads the chunk only.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ChunkShifts(byte* p, float* px, Vector512<float> t512)
    {
        var w = Vector512.Load((uint*)p);
        return ChunkSum(w, w >> 8, w >> 16, w >> 24, px, t512);
    }

    /// <summary>
    /// The lane sums of one chunk from its dwords aligned to bytes o = 0..3 (<paramref name="w0"/>..<paramref name="w3"/>:
    /// the low nibble of byte o at bits 0..3): group 2o is wo itself, group 2o + 1 is wo >> 4; two accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> ChunkSum(Vector512<uint> w0, Vector512<uint> w1, Vector512<uint> w2, Vector512<uint> w3, float* px, Vector512<float> t512)
    {
        var a0 = Avx512F.PermuteVar16x32(t512, w0.AsInt32()) * Vector512.Load(px);
        var a1 = Avx512F.PermuteVar16x32(t512, (w0 >> 4).AsInt32()) * Vector512.Load(px + 16);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w1.AsInt32()), Vector512.Load(px + 32), a0);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w1 >> 4).AsInt32()), Vector512.Load(px + 48), a1);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w2.AsInt32()), Vector512.Load(px + 64), a0);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w2 >> 4).AsInt32()), Vector512.Load(px + 80), a1);
        a0 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, w3.AsInt32()), Vector512.Load(px + 96), a0);
        a1 = Vector512.FusedMultiplyAdd(Avx512F.PermuteVar16x32(t512, (w3 >> 4).AsInt32()), Vector512.Load(px + 112), a1);
        return a0 + a1;
    }
}
