// Direct bf16-pair packers of the native bf16 micro-kernels (the "Pairs" layout of Bf16Panels.cs):
//   A strip: word[q·mr + i] = bf16(a(i, 2q)) | bf16(a(i, 2q+1)) << 16
//   B strip: word[q·nr + j] = bf16(b(2q, j)) | bf16(b(2q+1, j)) << 16     (odd kc: a zero high half)
// The generic route packs an fp32 panel and rewrites it in place (Bf16Round.ToPairs): two passes, and
// for a bf16 weight a widening to fp32 and back. In the LoRA training step (issue 18, session 13)
// those passes were ~30 % of the bf16 step: every frozen weight is packed twice per step (forward as
// Wᵀ, backward dx as W) and the one-GEMM LoRA fusion hides the weight behind ConcatA/ConcatB, which
// no direct packer recognised. Here each source is packed straight into pairs in one pass:
//   fp32 Wᵀ (K-contiguous columns)       peft_bf16_pack_pairs (native, as before)
//   fp32 W rows (N-contiguous, [k, n])    two rows rounded and interleaved (Vector512)
//   bf16 Wᵀ                                each pair is one 32-bit word of a row: a word transpose
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
        if (a is DenseA dense && NativeBf16.PackPairs != null && dense.TryKRows(i0, p0, out float* src, out int ld))
        {
            NativeBf16.PackPairs(src, ld, rows, kc, mr, (uint*)dst);
            return;
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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RowsF32(float* src, int ld, int cols, int kc, int nr, long stride, uint* dst)
    {
        int pairs = (kc + 1) / 2;
        for (int q = 0; q < pairs; q++)
        {
            uint* r0 = (uint*)(src + ((long)2 * q * ld));
            uint* r1 = 2 * q + 1 < kc ? r0 + ld : null;
            for (int c0 = 0; c0 < cols; c0 += nr)
            {
                int width = Math.Min(nr, cols - c0);
                uint* d = dst + ((c0 / nr) * stride) + ((long)q * nr) - c0;
                int j = c0;
                if (Vector512.IsHardwareAccelerated && r1 != null)
                {
                    for (; j + 16 <= c0 + width; j += 16)
                    {
                        var lo = Bf16Round.Bits(Vector512.Load(r0 + j)) >> 16;
                        var hi = Bf16Round.Bits(Vector512.Load(r1 + j));
                        (lo | hi).Store(d + j);
                    }
                }

                for (; j < c0 + width; j++)
                {
                    d[j] = (Bf16Round.Bits(r0[j]) >> 16) | (r1 == null ? 0u : Bf16Round.Bits(r1[j]));
                }

                new Span<uint>(d + c0 + width, nr - width).Clear();
            }
        }
    }

    /// <summary>As <see cref="RowsF32"/> from rows of bf16 op(B): word[q·nr + j] = row 2q [j] | row 2q+1 [j] &lt;&lt; 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void RowsBf16(ushort* src, int ld, int cols, int kc, int nr, long stride, uint* dst)
    {
        int pairs = (kc + 1) / 2;
        for (int q = 0; q < pairs; q++)
        {
            ushort* r0 = src + ((long)2 * q * ld);
            ushort* r1 = 2 * q + 1 < kc ? r0 + ld : null;
            for (int c0 = 0; c0 < cols; c0 += nr)
            {
                int width = Math.Min(nr, cols - c0);
                uint* d = dst + ((c0 / nr) * stride) + ((long)q * nr) - c0;
                int j = c0;
                if (Vector512.IsHardwareAccelerated && r1 != null)
                {
                    for (; j + 16 <= c0 + width; j += 16)
                    {
                        var lo = Vector512.WidenLower(Vector512.Create(Vector256.Load(r0 + j), Vector256<ushort>.Zero));
                        var hi = Vector512.WidenLower(Vector512.Create(Vector256.Load(r1 + j), Vector256<ushort>.Zero));
                        (lo | (hi << 16)).Store(d + j);
                    }
                }

                for (; j < c0 + width; j++)
                {
                    d[j] = r0[j] | (r1 == null ? 0u : (uint)r1[j] << 16);
                }

                new Span<uint>(d + c0 + width, nr - width).Clear();
            }
        }
    }

    /// <summary>
    /// One strip from K-contiguous bf16 columns (a bf16 weight [out, in] read as Wᵀ): the pair (2q, 2q+1)
    /// of column j is the 32-bit word at src + j·ld + 2q, so the strip is a word transpose.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ColumnsBf16(ushort* src, int ld, int width, int kc, int nr, uint* dst)
    {
        // Chunks of 16 pairs: a chunk's stores (16 pair rows of the strip) and loads (64 bytes of each
        // column) stay in L1; a whole column at a time strided its stores over the entire strip (~50 KiB).
        int full = kc / 2;
        for (int q0 = 0; q0 < full; q0 += 16)
        {
            int q1 = Math.Min(full, q0 + 16);
            for (int j = 0; j < width; j++)
            {
                ushort* col = src + ((long)j * ld);
                uint* d = dst + j;
                if (Sse.IsSupported)
                {
                    // The strip reads nr columns (rows of W) at once: more streams than the hardware prefetcher
                    // follows, so each column's line two chunks ahead is requested here.
                    Sse.Prefetch0(col + (2 * q0) + 64);
                }

                for (int q = q0; q < q1; q++)
                {
                    d[(long)q * nr] = Unsafe.ReadUnaligned<uint>(col + (2 * q));
                }
            }
        }

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
}
