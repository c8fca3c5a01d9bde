// One row dot product of the integer 4-bit GEMV (Quant4Int8Gemv), per SIMD path. A chunk is 32
// weights (16 packed bytes) against 32 int8 activations stored in lane order (even elements,
// then odd: the high then the low nibbles). Per chunk: nibbles → byte shuffle through the int8
// table → |w| (u8) and q·sign(w) (s8) → u8·s8 pair sums (s16, cannot saturate) → s16 pair sums
// (s32, 8 lanes), or one AvxVnni u8·s8 dot → the same 8 lanes. The lanes times the chunk's
// scale are added with FMA into acc[8·(c mod 2) + lane]: Vector512 takes two chunks per step
// (chunk c in lanes 0..7, c + 1 in 8..15), Vector256 keeps two accumulators, scalar indexes them.
// On the Vector512 path Quant4Int8Gemv runs the native AVX512-VNNI rows instead where it can
// (Quant4Int8Native.cs, native/q4_int8_kernels.c): the same lanes and fp32 order as Row512, bit-identical.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class Quant4Int8Dot
{
    private const int Chunk = Quant4Int8Gemv.Chunk;
    private const float TableScale = 1f / 127f;

    /// <summary>The 16 accumulators reduced in place: halves added, then 8 → 4 → 2 → 1 (upper half onto lower).</summary>
    public static float Reduce16(float* acc)
    {
        for (int width = 8; width >= 1; width /= 2)
        {
            for (int l = 0; l < width; l++)
            {
                acc[l] += acc[l + width];
            }
        }

        return acc[0];
    }

    /// <summary>The last three steps of <see cref="Reduce16(float*)"/> on a vector: 8 → 4 → 2 → 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Reduce8(Vector256<float> v)
    {
        var v4 = v.GetLower() + v.GetUpper();
        var v2 = v4 + Vector128.Shuffle(v4, Vector128.Create(2, 3, 0, 1));
        return v2.ToScalar() + v2.GetElement(1);
    }

    /// <summary>The scale of chunk <paramref name="c"/>: sx · (absmax · 1/127).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(float* sx, float* absmax, long e0, int shift, int c) =>
        sx[c] * (absmax[(e0 + ((long)c * Chunk)) >> shift] * TableScale);

    /// <summary>Chunks [c0, c1) of a row added into acc, one element at a time.</summary>
    public static void ScalarChunks(byte* row, sbyte* q, float* sx, float* absmax, long e0, int shift, int c0, int c1,
        Vector128<sbyte> table, float* acc)
    {
        sbyte* t8 = stackalloc sbyte[16];
        table.Store(t8);
        for (int c = c0; c < c1; c++)
        {
            float s = Scale(sx, absmax, e0, shift, c);
            byte* b = row + (c * (Chunk / 2));
            sbyte* qc = q + (c * Chunk);
            for (int l = 0; l < 8; l++)
            {
                int lane = 0;
                for (int p = 4 * l; p < (4 * l) + 4; p++)
                {
                    int code = p < 16 ? b[p] >> 4 : b[p - 16] & 0xF;
                    lane += t8[code] * qc[p];
                }

                int a = (8 * (c & 1)) + l;
                acc[a] = MathF.FusedMultiplyAdd(lane, s, acc[a]);
            }
        }
    }

    /// <summary>
    /// A whole row's dot product, two chunks per 512-bit step. The 32 packed bytes of chunks c, c + 1
    /// are broadcast to both halves and shifted by 4 (lower half) or 0 (upper half) bits, so the
    /// activations are stored pair-interleaved (see Quant4Int8Gemv.QuantizeRows) and the int32
    /// lanes hold: 0..3 chunk c lanes 0..3, 4..7 chunk c + 1 lanes 0..3, 8..11 chunk c lanes 4..7,
    /// 12..15 chunk c + 1 lanes 4..7 (accumulators 0..3, 8..11, 4..7, 12..15 of the specification).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Row512(byte* row, sbyte* q, float* sx, float* sxPairs, float* absmax, long e0, int shift, int chunks,
        Vector128<sbyte> table, bool onePairScale)
    {
        // The sign comes from the code's bit 3: NF4 codes 0..7 are ≤ 0 and 8..15 ≥ 0; FP4's are the
        // other way round, so its sums come out negated (exactly) and are negated back at the end.
        var t256 = Vector256.Create(table, table);
        var magnitudes = Avx512BW.Abs(Vector512.Create(t256, t256)).AsSByte();
        bool flip = table.GetElement(15) < 0;
        var eight = Vector512.Create((byte)8);
        var mask = Vector512.Create((byte)0x0F);
        var shifts = Vector512.Create(Vector256.Create((ushort)4), Vector256<ushort>.Zero);
        var ones = Vector512.Create((short)1);
        var spread = Vector512.Create(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
        var sum = Vector512<float>.Zero;
        int c = 0;
        byte* pw = row;
        sbyte* pq = q;
        float* ps = sxPairs;
        long e = e0;
        for (; c + 1 < chunks; c += 2, pw += Chunk, pq += 2 * Chunk, ps += 16, e += 2 * Chunk)
        {
            // Rows are contiguous, so prefetching past each 32 bytes read walks the matrix linearly into L2, as
            // the fp32 decode does (Quant4Simd.PrefetchAhead): the hardware streamer stops at every 4 KiB page.
            Sse.Prefetch1(pw + Quant4Simd.PrefetchAhead);
            var v = Avx512F.BroadcastVector256ToVector512((ulong*)pw);
            var index = Avx512BW.ShiftRightLogicalVariable(v.AsUInt16(), shifts).AsByte() & mask;
            var magnitude = Avx512BW.Shuffle(magnitudes, index.AsSByte()).AsByte();
            var qv = Vector512.Load(pq);
            var signed = Vector512.ConditionalSelect(Vector512.LessThan(index, eight).AsSByte(), -qv, qv);
            var lanes = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(magnitude, signed), ones);
            Vector512<float> wscale;
            float a0 = absmax[e >> shift] * TableScale;
            if (onePairScale)
            {
                wscale = Vector512.Create(a0);
            }
            else
            {
                float a1 = absmax[(e + Chunk) >> shift] * TableScale;
                wscale = Avx512F.PermuteVar16x32(Vector128.Create(a0, a1, 0f, 0f).ToVector256Unsafe().ToVector512Unsafe(), spread);
            }

            var scale = Vector512.Load(ps) * wscale;
            sum = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(lanes), scale, sum);
        }

        var q0 = sum.GetLower().GetLower();
        var q1 = sum.GetLower().GetUpper();
        var q2 = sum.GetUpper().GetLower();
        var q3 = sum.GetUpper().GetUpper();
        if (c < chunks)
        {
            // The last chunk of an odd count, stored unpaired: specification accumulators 0..7 are q0, q2.
            var lanes = Lanes256(row, q, c, t256);
            var tail = Fma.MultiplyAdd(flip ? -lanes : lanes, Vector256.Create(Scale(sx, absmax, e0, shift, c)), Vector256.Create(q0, q2));
            q0 = tail.GetLower();
            q2 = tail.GetUpper();
        }

        // Specification: v[l] = acc[l] + acc[8 + l] → [q0 + q1, q2 + q3], then 8 → 4 → 2 → 1.
        // Negated sums are exact negations of the specification's, or zero where it is +0 (never −0
        // without a bias, since every scale is ≥ 0): 0 − r restores both.
        float r = Reduce8(Vector256.Create(q0 + q1, q2 + q3));
        return flip ? 0f - r : r;
    }

    /// <summary>A whole row's dot product, one chunk per 256-bit step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Row256(byte* row, sbyte* q, float* sx, float* absmax, long e0, int shift, int chunks, Vector128<sbyte> table)
    {
        var t256 = Vector256.Create(table, table);
        var even = Vector256<float>.Zero;
        var odd = Vector256<float>.Zero;
        int c = 0;
        for (; c + 1 < chunks; c += 2)
        {
            even = Fma.MultiplyAdd(Lanes256(row, q, c, t256), Vector256.Create(Scale(sx, absmax, e0, shift, c)), even);
            odd = Fma.MultiplyAdd(Lanes256(row, q, c + 1, t256), Vector256.Create(Scale(sx, absmax, e0, shift, c + 1)), odd);
        }

        if (c < chunks)
        {
            even = Fma.MultiplyAdd(Lanes256(row, q, c, t256), Vector256.Create(Scale(sx, absmax, e0, shift, c)), even);
        }

        return Reduce8(even + odd);
    }

    /// <summary>The 8 int32 lanes of chunk <paramref name="c"/>, as fp32 (exact: |lane| ≤ 4·127² &lt; 2²⁴).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lanes256(byte* row, sbyte* q, int c, Vector256<sbyte> t256)
    {
        var v = Vector128.Load(row + (c * (Chunk / 2)));
        var mask = Vector128.Create((byte)0x0F);
        var hi = Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & mask;
        var lo = v & mask;
        var wt = Avx2.Shuffle(t256, Vector256.Create(hi, lo).AsSByte());
        var qv = Vector256.Load(q + (c * Chunk));
        var magnitude = Avx2.Abs(wt);
        var signed = Avx2.Sign(qv, wt);
        var lanes = AvxVnni.IsSupported
            ? AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, magnitude, signed)
            : Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(magnitude, signed), Vector256.Create((short)1));
        return Avx.ConvertToVector256Single(lanes);
    }
}
