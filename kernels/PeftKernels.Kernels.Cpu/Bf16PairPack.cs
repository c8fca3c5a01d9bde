// Direct bf16-pair packers of the native bf16 micro-kernels (the "Pairs" layout of Bf16Panels.cs):
//   A strip: word[q·mr + i] = bf16(a(i, 2q)) | bf16(a(i, 2q+1)) << 16
//   B strip: word[q·nr + j] = bf16(b(2q, j)) | bf16(b(2q+1, j)) << 16     (odd kc: a zero high half)
// The generic route packs an fp32 panel and rewrites it in place (Bf16Round.ToPairs): two passes, and
// for a bf16 weight a widening to fp32 and back. In the LoRA training step (issue 18, session 13)
// those passes were ~30 % of the bf16 step: every frozen weight is packed twice per step (forward as
// Wᵀ, backward dx as W) and the one-GEMM LoRA fusion hides the weight behind ConcatA/ConcatB, which
// no direct packer recognised. Here each source is packed straight into pairs in one pass:
//   fp32 Wᵀ (K-contiguous columns)       peft_bf16_pack_pairs (native, as before)
//   fp32 W rows (N-contiguous, [k, n])    two rows rounded and interleaved (Vector512); also a
//                                          transposed fp32 A (LoRA's gᵀ, rows along M)
//   bf16 Wᵀ                                each pair is one 32-bit word of a row: a word transpose
//                                          (16×16 blocks in AVX-512 registers, rows prefetched ahead)
//   bf16 W rows                            two rows widened and interleaved (Vector512)
//   ConcatA / ConcatB                      each side packed on its own when the split falls on an
//                                          even K offset of the block (else the generic route)
// Every route writes the same words as the generic route, bit for bit (Bf16PairPackTests), so
// results do not change; only the time does.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using PeftKernels.Kernels.Native;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Packs op(A) strips and op(B) strips as bf16 pairs along K, directly where the source allows.</summary>
internal static unsafe class Bf16PairPack
{
    /// <summary>One A strip (rows ≤ mr) of op(A)[i0.., p0..p0+kc) as pairs at dst.</summary>
    public static void PackA<TA>(in TA a, float* dst, int i0, int rows, int p0, int kc, int mr)
        where TA : struct, IPanelA
    {
        if (a is DenseA dense)
        {
            if (NativeBf16.PackPairs != null && dense.TryKRows(i0, p0, out float* src, out int ld))
            {
                NativeBf16.PackPairs(src, ld, rows, kc, mr, (uint*)dst);
                return;
            }

            if (dense.TryMRows(i0, p0, out src, out ld))
            {
                // op(A) = Aᵀ (LoRA's db = s·gᵀ·h): the stored rows run along M, so a strip is two rows interleaved.
                RowsF32(src, ld, rows, kc, mr, 0, (uint*)dst);
                return;
            }
        }

        if (a is ConcatA<DenseA, DenseA> concat && EvenSplit(concat.K1, p0, kc, out int head))
        {
            if (head > 0)
            {
                PackA(concat.First, dst, i0, rows, p0, head, mr);
            }

            if (head < kc)
            {
                PackA(concat.Second, dst + ((long)(head / 2) * mr), i0, rows, p0 + head - concat.K1, kc - head, mr);
            }

            return;
        }

        a.Pack(dst, i0, rows, p0, kc, mr);
        Bf16Round.ToPairs(dst, kc, mr);
    }

    /// <summary>Columns [j0, j0 + cols) of op(B)[p0..p0+kc) as ⌈cols/nr⌉ pair strips, strip t at dst + t·stripStride (floats).</summary>
    public static void PackB<TB>(in TB b, float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
        where TB : struct, IPanelB
    {
        int strips = (cols + nr - 1) / nr;
        if (b is DenseB dense)
        {
            if (NativeBf16.PackPairs != null && dense.TryKRows(j0, p0, out float* src, out int ld))
            {
                // A weight [out, in] read as op(B) = Wᵀ: each column of op(B) is a contiguous row of W.
                for (int t = 0; t < strips; t++)
                {
                    NativeBf16.PackPairs(src + ((long)t * nr * ld), ld, Math.Min(nr, cols - (t * nr)), kc, nr, (uint*)(dst + (t * stripStride)));
                }

                return;
            }

            if (dense.TryNRows(j0, p0, out src, out ld))
            {
                RowsF32(src, ld, cols, kc, nr, stripStride, (uint*)dst);
                return;
            }
        }
        else if (b is Bf16B bf)
        {
            ushort* src = bf.At(j0, p0, out int ld, out bool kContiguous);
            if (!kContiguous)
            {
                RowsBf16(src, ld, cols, kc, nr, stripStride, (uint*)dst);
                return;
            }

            for (int t = 0; t < strips; t++)
            {
                ColumnsBf16(src + ((long)t * nr * ld), ld, Math.Min(nr, cols - (t * nr)), kc, nr, (uint*)(dst + (t * stripStride)));
            }

            return;
        }
        else if (b is ConcatB<DenseB, DenseB> f32 && EvenSplit(f32.K1, p0, kc, out int head))
        {
            PackConcatB(f32, head, dst, j0, cols, p0, kc, nr, stripStride);
            return;
        }
        else if (b is ConcatB<Bf16B, DenseB> half && EvenSplit(half.K1, p0, kc, out head))
        {
            PackConcatB(half, head, dst, j0, cols, p0, kc, nr, stripStride);
            return;
        }

        b.Pack(dst, j0, cols, p0, kc, nr, stripStride);
        for (int t = 0; t < strips; t++)
        {
            Bf16Round.ToPairs(dst + (t * stripStride), kc, nr);
        }
    }

    /// <summary>The part of the block [p0, p0 + kc) before the concatenation point k1; true when it is even (pairs do not straddle it).</summary>
    private static bool EvenSplit(int k1, int p0, int kc, out int head)
    {
        head = Math.Clamp(k1 - p0, 0, kc);
        return (head & 1) == 0;
    }

    private static void PackConcatB<T1, T2>(in ConcatB<T1, T2> concat, int head, float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
        where T1 : struct, IPanelB
        where T2 : struct, IPanelB
    {
        if (head > 0)
        {
            PackB(concat.First, dst, j0, cols, p0, head, nr, stripStride);
        }

        if (head < kc)
        {
            // The second source's pairs follow the first's head / 2 pair rows in every strip.
            PackB(concat.Second, dst + ((long)(head / 2) * nr), j0, cols, p0 + head - concat.K1, kc - head, nr, stripStride);
        }
    }

    /// <summary>
    /// Strips from rows of fp32 op(B) (stored [k, n]), columns [0, cols), strip t at dst + t·stride words:
    /// word[q·nr + j] = bf16(row 2q)[j] | bf16(row 2q+1)[j] &lt;&lt; 16. Each pair of rows is read once, across
    /// every strip (long contiguous runs), rather than strip by strip down the rows.
    /// </summary>
    internal static void RowsF32(float* src, int ld, int cols, int kc, int nr, long stride, uint* dst) =>
        Rows<F32Rows, uint>((uint*)src, ld, cols, kc, nr, stride, dst);

    /// <summary>As <see cref="RowsF32"/> from rows of bf16 op(B): word[q·nr + j] = row 2q [j] | row 2q+1 [j] &lt;&lt; 16.</summary>
    internal static void RowsBf16(ushort* src, int ld, int cols, int kc, int nr, long stride, uint* dst) =>
        Rows<Bf16Rows, ushort>(src, ld, cols, kc, nr, stride, dst);

    /// <summary>The strip loop of <see cref="RowsF32"/> and <see cref="RowsBf16"/>; <typeparamref name="TRows"/> forms the words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows<TRows, TE>(TE* src, int ld, int cols, int kc, int nr, long stride, uint* dst)
        where TRows : struct, IRowPairs<TE>
        where TE : unmanaged
    {
        int pairs = (kc + 1) / 2;
        for (int q = 0; q < pairs; q++)
        {
            TE* r0 = src + ((long)2 * q * ld);
            TE* r1 = 2 * q + 1 < kc ? r0 + ld : null;
            for (int c0 = 0; c0 < cols; c0 += nr)
            {
                int width = Math.Min(nr, cols - c0);
                uint* d = dst + ((c0 / nr) * stride) + ((long)q * nr) - c0;
                int j = c0;
                if (Vector512.IsHardwareAccelerated && r1 != null)
                {
                    for (; j + 16 <= c0 + width; j += 16)
                    {
                        TRows.Words16(r0 + j, r1 + j).Store(d + j);
                    }
                }

                for (; j < c0 + width; j++)
                {
                    d[j] = TRows.Word(r0 + j, r1 == null ? null : r1 + j);
                }

                new Span<uint>(d + c0 + width, nr - width).Clear();
            }
        }
    }

    /// <summary>How one source element type becomes pair words (low half = row 2q, high half = row 2q+1 or 0).</summary>
    private interface IRowPairs<TE>
        where TE : unmanaged
    {
        static abstract Vector512<uint> Words16(TE* r0, TE* r1);

        static abstract uint Word(TE* r0, TE* r1OrNull);
    }

    /// <summary>fp32 rows (read as their bits), rounded to bf16.</summary>
    private readonly struct F32Rows : IRowPairs<uint>
    {
        public static Vector512<uint> Words16(uint* r0, uint* r1) =>
            (Bf16Round.Bits(Vector512.Load(r0)) >> 16) | Bf16Round.Bits(Vector512.Load(r1));

        public static uint Word(uint* r0, uint* r1OrNull) =>
            (Bf16Round.Bits(*r0) >> 16) | (r1OrNull == null ? 0u : Bf16Round.Bits(*r1OrNull));
    }

    /// <summary>bf16 rows, copied.</summary>
    private readonly struct Bf16Rows : IRowPairs<ushort>
    {
        public static Vector512<uint> Words16(ushort* r0, ushort* r1) =>
            Vector512.WidenLower(Vector512.Create(Vector256.Load(r0), Vector256<ushort>.Zero))
            | (Vector512.WidenLower(Vector512.Create(Vector256.Load(r1), Vector256<ushort>.Zero)) << 16);

        public static uint Word(ushort* r0, ushort* r1OrNull) => *r0 | (r1OrNull == null ? 0u : (uint)*r1OrNull << 16);
    }

    /// <summary>
    /// One strip from K-contiguous bf16 columns (a bf16 weight [out, in] read as Wᵀ): the pair (2q, 2q+1)
    /// of column j is the 32-bit word at src + j·ld + 2q, so the strip is a word transpose, done in 16×16
    /// blocks in registers where AVX-512 is available (each column's line two blocks ahead prefetched: the
    /// strip reads nr streams at once, more than the hardware prefetcher follows), scalar elsewhere.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ColumnsBf16(ushort* src, int ld, int width, int kc, int nr, uint* dst)
    {
        int full = kc / 2;
        int q16 = 0, j16 = 0;
        if (Avx512F.IsSupported)
        {
            q16 = full & ~15;
            j16 = width & ~15;
            for (int q0 = 0; q0 < q16; q0 += 16)
            {
                for (int j0 = 0; j0 < j16; j0 += 16)
                {
                    Transpose16(src + ((long)j0 * ld) + (2 * q0), ld, dst + ((long)q0 * nr) + j0, nr);
                }
            }
        }

        // What the blocks left: pairs [q16, full) of every column, and columns [j16, width) of pairs [0, q16).
        ColumnsScalar(src, ld, 0, width, q16, full, nr, dst);
        ColumnsScalar(src, ld, j16, width, 0, q16, nr, dst);
        if ((kc & 1) != 0)
        {
            for (int j = 0; j < width; j++)
            {
                dst[((long)full * nr) + j] = src[((long)j * ld) + kc - 1];
            }
        }

        if (width < nr)
        {
            int pairs = (kc + 1) / 2;
            for (int q = 0; q < pairs; q++)
            {
                new Span<uint>(dst + ((long)q * nr) + width, nr - width).Clear();
            }
        }
    }

    private static void ColumnsScalar(ushort* src, int ld, int j0, int j1, int qa, int qb, int nr, uint* dst)
    {
        for (int q0 = qa; q0 < qb; q0 += 16)
        {
            int q1 = Math.Min(qb, q0 + 16);
            for (int j = j0; j < j1; j++)
            {
                ushort* col = src + ((long)j * ld);
                uint* d = dst + j;
                if (Sse.IsSupported)
                {
                    Sse.Prefetch0(col + (2 * q0) + 64);
                }

                for (int q = q0; q < q1; q++)
                {
                    d[(long)q * nr] = Unsafe.ReadUnaligned<uint>(col + (2 * q));
                }
            }
        }
    }

    /// <summary>
    /// d[q·nr + j] = word q of row j (row j at s + j·ld, 16 words), q, j &lt; 16: unpack 32-bit, unpack 64-bit
    /// (lane L of group g, part p holds rows 4g..4g+3 at q = 4L + p), then a 4×4 transpose of 128-bit lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose16(ushort* s, int ld, uint* d, int nr)
    {
        var t = stackalloc Vector512<uint>[16];
        for (int j = 0; j < 16; j += 2)
        {
            ushort* row = s + ((long)j * ld);
            Sse.Prefetch0(row + 64);
            Sse.Prefetch0(row + ld + 64);
            var a = Vector512.Load((uint*)row);
            var b = Vector512.Load((uint*)(row + ld));
            t[j] = Avx512F.UnpackLow(a, b);
            t[j + 1] = Avx512F.UnpackHigh(a, b);
        }

        var u = stackalloc Vector512<uint>[16];   // u[4p + g]
        for (int g = 0; g < 4; g++)
        {
            var lo0 = t[4 * g].AsUInt64();
            var lo1 = t[(4 * g) + 2].AsUInt64();
            var hi0 = t[(4 * g) + 1].AsUInt64();
            var hi1 = t[(4 * g) + 3].AsUInt64();
            u[g] = Avx512F.UnpackLow(lo0, lo1).AsUInt32();
            u[4 + g] = Avx512F.UnpackHigh(lo0, lo1).AsUInt32();
            u[8 + g] = Avx512F.UnpackLow(hi0, hi1).AsUInt32();
            u[12 + g] = Avx512F.UnpackHigh(hi0, hi1).AsUInt32();
        }

        for (int p = 0; p < 4; p++)
        {
            var even01 = Avx512F.Shuffle4x128(u[4 * p], u[(4 * p) + 1], 0x88);
            var odd01 = Avx512F.Shuffle4x128(u[4 * p], u[(4 * p) + 1], 0xDD);
            var even23 = Avx512F.Shuffle4x128(u[(4 * p) + 2], u[(4 * p) + 3], 0x88);
            var odd23 = Avx512F.Shuffle4x128(u[(4 * p) + 2], u[(4 * p) + 3], 0xDD);
            Avx512F.Shuffle4x128(even01, even23, 0x88).Store(d + ((long)p * nr));
            Avx512F.Shuffle4x128(odd01, odd23, 0x88).Store(d + ((long)(4 + p) * nr));
            Avx512F.Shuffle4x128(even01, even23, 0xDD).Store(d + ((long)(8 + p) * nr));
            Avx512F.Shuffle4x128(odd01, odd23, 0xDD).Store(d + ((long)(12 + p) * nr));
        }
    }
}
