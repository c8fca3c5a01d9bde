// The expand half of a SegmentedLora tile on the 512-bit path: y_j[o] += s_j · Σ_c B[o, c]·h_j[c] for the
// tile's m (≤ 4) rows j, B [out, r] row-major (PEFT's layout), h_j [r] = A·x_j from the shrink half.
// Why: as dots along r (SegmentedLoraDot) every output element costs a horizontal sum of a 16-lane vector
// for only r/16 FMAs (r = 8..64): at r = 32 about 6 shuffles and adds per 2 FMAs, so the expand dominated
// the decode-step LoRA time (perf, 64 rows on one adapter). Here 16 outputs are one vector: a 16 × 16 block
// of B (16 rows o..o+15, 16 ranks) is transposed in registers (64 shuffles) so that column c of the block,
// B[o..o+15, c], is a vector, then acc_j += h_j[c]·B[o..o+15, c]. The transpose is shared by the tile's
// rows, so a 4-row tile pays 64 shuffles per 64 FMAs instead of 64 horizontal sums.
// Sums: lane t of row j keeps two chains, even c and odd c (so a lone row is not bound by one FMA chain's
// latency), each adding its products in increasing c by FMA from zero; then y += s·(even + odd) (multiply,
// then add). The same operations for any m and any other rows of the tile, so SGMV = BGMV and any grouping
// of rows into tiles give the same bits. A rank of 8 loads half rows (upper lanes zero); other partial
// blocks (out % 16 rows, r % 16 ranks) are staged through a zero-filled 16 × 16 copy, so nothing outside B
// is read.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class SegmentedLoraExpand
{
    private const int W = 16;

    /// <summary>yr[j][o] += scale[j]·(B[o, :]·h[j·rank ..]) for o &lt; outFeatures, j &lt; m ≤ 4 (512-bit path only).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* b, int rank, float* h, int m, float* scale, float** yr, int outFeatures)
    {
        var staged = stackalloc float[W * W];
        for (int o = 0; o < outFeatures; o += W)
        {
            int rows = Math.Min(W, outFeatures - o);
            Vector512<float> e0 = default, e1 = default, e2 = default, e3 = default;
            Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
            for (int c0 = 0; c0 < rank; c0 += W)
            {
                int cols = Math.Min(W, rank - c0);
                float* src = b + ((long)o * rank) + c0;
                long stride = rank;
                bool half = rows == W && cols == 8;
                if (!half && (rows < W || cols < W))
                {
                    new Span<float>(staged, W * W).Clear();
                    for (int t = 0; t < rows; t++)
                    {
                        new ReadOnlySpan<float>(src + (t * stride), cols).CopyTo(new Span<float>(staged + (t * W), cols));
                    }

                    src = staged;
                    stride = W;
                }

                var v0 = half ? Vector256.Load(src + (0 * stride)).ToVector512() : Vector512.Load(src + (0 * stride));
                var v1 = half ? Vector256.Load(src + (1 * stride)).ToVector512() : Vector512.Load(src + (1 * stride));
                var v2 = half ? Vector256.Load(src + (2 * stride)).ToVector512() : Vector512.Load(src + (2 * stride));
                var v3 = half ? Vector256.Load(src + (3 * stride)).ToVector512() : Vector512.Load(src + (3 * stride));
                var v4 = half ? Vector256.Load(src + (4 * stride)).ToVector512() : Vector512.Load(src + (4 * stride));
                var v5 = half ? Vector256.Load(src + (5 * stride)).ToVector512() : Vector512.Load(src + (5 * stride));
                var v6 = half ? Vector256.Load(src + (6 * stride)).ToVector512() : Vector512.Load(src + (6 * stride));
                var v7 = half ? Vector256.Load(src + (7 * stride)).ToVector512() : Vector512.Load(src + (7 * stride));
                var v8 = half ? Vector256.Load(src + (8 * stride)).ToVector512() : Vector512.Load(src + (8 * stride));
                var v9 = half ? Vector256.Load(src + (9 * stride)).ToVector512() : Vector512.Load(src + (9 * stride));
                var v10 = half ? Vector256.Load(src + (10 * stride)).ToVector512() : Vector512.Load(src + (10 * stride));
                var v11 = half ? Vector256.Load(src + (11 * stride)).ToVector512() : Vector512.Load(src + (11 * stride));
                var v12 = half ? Vector256.Load(src + (12 * stride)).ToVector512() : Vector512.Load(src + (12 * stride));
                var v13 = half ? Vector256.Load(src + (13 * stride)).ToVector512() : Vector512.Load(src + (13 * stride));
                var v14 = half ? Vector256.Load(src + (14 * stride)).ToVector512() : Vector512.Load(src + (14 * stride));
                var v15 = half ? Vector256.Load(src + (15 * stride)).ToVector512() : Vector512.Load(src + (15 * stride));

                // Transpose: stage 1 (unpack ps), per 128-bit lane [a0 b0 a1 b1] and [a2 b2 a3 b3] of row pairs.
                var t0 = Avx512F.UnpackLow(v0, v1);
                var t1 = Avx512F.UnpackHigh(v0, v1);
                var t2 = Avx512F.UnpackLow(v2, v3);
                var t3 = Avx512F.UnpackHigh(v2, v3);
                var t4 = Avx512F.UnpackLow(v4, v5);
                var t5 = Avx512F.UnpackHigh(v4, v5);
                var t6 = Avx512F.UnpackLow(v6, v7);
                var t7 = Avx512F.UnpackHigh(v6, v7);
                var t8 = Avx512F.UnpackLow(v8, v9);
                var t9 = Avx512F.UnpackHigh(v8, v9);
                var t10 = Avx512F.UnpackLow(v10, v11);
                var t11 = Avx512F.UnpackHigh(v10, v11);
                var t12 = Avx512F.UnpackLow(v12, v13);
                var t13 = Avx512F.UnpackHigh(v12, v13);
                var t14 = Avx512F.UnpackLow(v14, v15);
                var t15 = Avx512F.UnpackHigh(v14, v15);

                // Stage 2 (unpack pd): u{4k+e} holds, in 128-bit lane L, element 4L + e of rows 4k..4k+3.
                var u0 = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle();
                var u1 = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
                var u2 = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle();
                var u3 = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
                var u4 = Avx512F.UnpackLow(t4.AsDouble(), t6.AsDouble()).AsSingle();
                var u5 = Avx512F.UnpackHigh(t4.AsDouble(), t6.AsDouble()).AsSingle();
                var u6 = Avx512F.UnpackLow(t5.AsDouble(), t7.AsDouble()).AsSingle();
                var u7 = Avx512F.UnpackHigh(t5.AsDouble(), t7.AsDouble()).AsSingle();
                var u8 = Avx512F.UnpackLow(t8.AsDouble(), t10.AsDouble()).AsSingle();
                var u9 = Avx512F.UnpackHigh(t8.AsDouble(), t10.AsDouble()).AsSingle();
                var u10 = Avx512F.UnpackLow(t9.AsDouble(), t11.AsDouble()).AsSingle();
                var u11 = Avx512F.UnpackHigh(t9.AsDouble(), t11.AsDouble()).AsSingle();
                var u12 = Avx512F.UnpackLow(t12.AsDouble(), t14.AsDouble()).AsSingle();
                var u13 = Avx512F.UnpackHigh(t12.AsDouble(), t14.AsDouble()).AsSingle();
                var u14 = Avx512F.UnpackLow(t13.AsDouble(), t15.AsDouble()).AsSingle();
                var u15 = Avx512F.UnpackHigh(t13.AsDouble(), t15.AsDouble()).AsSingle();

                // Stages 3 and 4 (128-bit shuffles): column 4L + e = lane L of u{e}, u{4 + e}, u{8 + e}, u{12 + e}.
                var x0 = Avx512F.Shuffle4x128(u0, u4, 0x88);
                var y0 = Avx512F.Shuffle4x128(u0, u4, 0xDD);
                var z0 = Avx512F.Shuffle4x128(u8, u12, 0x88);
                var w0 = Avx512F.Shuffle4x128(u8, u12, 0xDD);
                var x1 = Avx512F.Shuffle4x128(u1, u5, 0x88);
                var y1 = Avx512F.Shuffle4x128(u1, u5, 0xDD);
                var z1 = Avx512F.Shuffle4x128(u9, u13, 0x88);
                var w1 = Avx512F.Shuffle4x128(u9, u13, 0xDD);
                var x2 = Avx512F.Shuffle4x128(u2, u6, 0x88);
                var y2 = Avx512F.Shuffle4x128(u2, u6, 0xDD);
                var z2 = Avx512F.Shuffle4x128(u10, u14, 0x88);
                var w2 = Avx512F.Shuffle4x128(u10, u14, 0xDD);
                var x3 = Avx512F.Shuffle4x128(u3, u7, 0x88);
                var y3 = Avx512F.Shuffle4x128(u3, u7, 0xDD);
                var z3 = Avx512F.Shuffle4x128(u11, u15, 0x88);
                var w3 = Avx512F.Shuffle4x128(u11, u15, 0xDD);
                v0 = Avx512F.Shuffle4x128(x0, z0, 0x88);
                v8 = Avx512F.Shuffle4x128(x0, z0, 0xDD);
                v4 = Avx512F.Shuffle4x128(y0, w0, 0x88);
                v12 = Avx512F.Shuffle4x128(y0, w0, 0xDD);
                v1 = Avx512F.Shuffle4x128(x1, z1, 0x88);
                v9 = Avx512F.Shuffle4x128(x1, z1, 0xDD);
                v5 = Avx512F.Shuffle4x128(y1, w1, 0x88);
                v13 = Avx512F.Shuffle4x128(y1, w1, 0xDD);
                v2 = Avx512F.Shuffle4x128(x2, z2, 0x88);
                v10 = Avx512F.Shuffle4x128(x2, z2, 0xDD);
                v6 = Avx512F.Shuffle4x128(y2, w2, 0x88);
                v14 = Avx512F.Shuffle4x128(y2, w2, 0xDD);
                v3 = Avx512F.Shuffle4x128(x3, z3, 0x88);
                v11 = Avx512F.Shuffle4x128(x3, z3, 0xDD);
                v7 = Avx512F.Shuffle4x128(y3, w3, 0x88);
                v15 = Avx512F.Shuffle4x128(y3, w3, 0xDD);

                // Column c of the block is v_c; even c into e_j, odd c into d_j (c0 is a multiple of 16: parity of c is global).
                float* hb = h + c0;
                Accumulate(hb, rank, m, cols, v0, v1, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 0);
                if (cols > 2)
                {
                    Accumulate(hb, rank, m, cols, v2, v3, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 2);
                    Accumulate(hb, rank, m, cols, v4, v5, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 4);
                    Accumulate(hb, rank, m, cols, v6, v7, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 6);
                }

                if (cols > 8)
                {
                    Accumulate(hb, rank, m, cols, v8, v9, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 8);
                    Accumulate(hb, rank, m, cols, v10, v11, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 10);
                    Accumulate(hb, rank, m, cols, v12, v13, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 12);
                    Accumulate(hb, rank, m, cols, v14, v15, ref e0, ref e1, ref e2, ref e3, ref d0, ref d1, ref d2, ref d3, 14);
                }
            }

            Add(yr[0] + o, scale[0], e0 + d0, rows);
            if (m > 1)
            {
                Add(yr[1] + o, scale[1], e1 + d1, rows);
            }

            if (m > 2)
            {
                Add(yr[2] + o, scale[2], e2 + d2, rows);
            }

            if (m > 3)
            {
                Add(yr[3] + o, scale[3], e3 + d3, rows);
            }
        }
    }

    /// <summary>
    /// Columns c and c + 1 of the block (ve, vo) into the even and odd chains of each of the m rows; a column at or past
    /// <paramref name="cols"/> is skipped (its h would be read past the rank).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate(float* h, int rank, int m, int cols, Vector512<float> ve, Vector512<float> vo,
        ref Vector512<float> e0, ref Vector512<float> e1, ref Vector512<float> e2, ref Vector512<float> e3,
        ref Vector512<float> d0, ref Vector512<float> d1, ref Vector512<float> d2, ref Vector512<float> d3, int c)
    {
        if (c >= cols)
        {
            return;
        }

        bool odd = c + 1 < cols;
        e0 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[c]), ve, e0);
        if (odd)
        {
            d0 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[c + 1]), vo, d0);
        }

        if (m > 1)
        {
            e1 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[rank + c]), ve, e1);
            if (odd)
            {
                d1 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[rank + c + 1]), vo, d1);
            }

            if (m > 2)
            {
                e2 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[(2 * rank) + c]), ve, e2);
                if (odd)
                {
                    d2 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[(2 * rank) + c + 1]), vo, d2);
                }

                if (m > 3)
                {
                    e3 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[(3 * rank) + c]), ve, e3);
                    if (odd)
                    {
                        d3 = Avx512F.FusedMultiplyAdd(Vector512.Create(h[(3 * rank) + c + 1]), vo, d3);
                    }
                }
            }
        }
    }

    /// <summary>y[t] += s·acc[t] for t &lt; count (multiply, then add).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Add(float* y, float s, Vector512<float> acc, int count)
    {
        var scaled = Vector512.Create(s) * acc;
        if (count == W)
        {
            Vector512.Store(Vector512.Load(y) + scaled, y);
            return;
        }

        for (int t = 0; t < count; t++)
        {
            y[t] += scaled.GetElement(t);
        }
    }
}
