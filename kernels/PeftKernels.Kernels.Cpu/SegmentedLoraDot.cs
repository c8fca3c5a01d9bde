// The dot products of SegmentedLora's tiles: up to 4 weight rows (rows of A_k, or of B_k) against up to
// 4 activation rows (x, or h) at once, each pair its own accumulator, so the FMA chains are independent
// while every sum is the same chain of operations whatever else is in the block (bit-identical results
// for any grouping of rows into tiles).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class SegmentedLoraDot
{
    /// <summary>Rows of a tile, and the row stride of the result block d.</summary>
    public const int TileRows = 4;

    /// <summary>
    /// d[i·4 + j] = w_i · r_j (length k) for the nw weight rows w_i = w + i·ldw and the first m rows r_j (nw·m ≤ 8,
    /// or nw = 4 with m = 1). Each sum is one accumulator's chain of FMAs over whole vectors, its lanes summed,
    /// then a scalar tail: the same operations whatever nw, m and the other rows are.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Dot(float* w, long ldw, int nw, float** r, int m, int k, SimdPath path, float* d)
    {
        int p = 0;
        if (path == SimdPath.Vector512)
        {
            p = m == 1 ? Dot4x1<Vector512<float>, V512>(w, ldw, nw, r[0], k, d) : Dot2x4<Vector512<float>, V512>(w, ldw, nw, r, m, k, d);
        }
        else if (path == SimdPath.Vector256)
        {
            p = m == 1 ? Dot4x1<Vector256<float>, V256>(w, ldw, nw, r[0], k, d) : Dot2x4<Vector256<float>, V256>(w, ldw, nw, r, m, k, d);
        }
        else
        {
            new Span<float>(d, TileRows * TileRows).Clear();
        }

        for (int i = 0; i < nw; i++)
        {
            float* wi = w + (i * ldw);
            for (int j = 0; j < m; j++)
            {
                float* rj = r[j];
                float s = d[(i * TileRows) + j];
                for (int t = p; t < k; t++)
                {
                    s += rj[t] * wi[t];
                }

                d[(i * TileRows) + j] = s;
            }
        }
    }

    /// <summary>Up to 4 weight rows against one row: d[i·4] over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot4x1<TV, TVec>(float* w, long ldw, int nw, float* r0, int k, float* d)
        where TV : unmanaged
        where TVec : struct, IVec<TV>
    {
        int width = TVec.Width, p = 0;
        float* w0 = w, w1 = nw > 1 ? w + ldw : w, w2 = nw > 2 ? w + (2 * ldw) : w, w3 = nw > 3 ? w + (3 * ldw) : w;
        TV c0 = default, c1 = default, c2 = default, c3 = default;
        for (; p <= k - width; p += width)
        {
            TV x = TVec.Load(r0 + p);
            c0 = TVec.Fma(x, TVec.Load(w0 + p), c0);
            c1 = TVec.Fma(x, TVec.Load(w1 + p), c1);
            c2 = TVec.Fma(x, TVec.Load(w2 + p), c2);
            c3 = TVec.Fma(x, TVec.Load(w3 + p), c3);
        }

        d[0] = TVec.Sum(c0);
        d[TileRows] = TVec.Sum(c1);
        d[2 * TileRows] = TVec.Sum(c2);
        d[3 * TileRows] = TVec.Sum(c3);
        return p;
    }

    /// <summary>Up to 2 weight rows against up to 4 rows: d[i·4 + j] over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int Dot2x4<TV, TVec>(float* w, long ldw, int nw, float** r, int m, int k, float* d)
        where TV : unmanaged
        where TVec : struct, IVec<TV>
    {
        int width = TVec.Width, p = 0;
        float* w0 = w, w1 = nw > 1 ? w + ldw : w;
        float* r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
        TV c00 = default, c01 = default, c02 = default, c03 = default, c10 = default, c11 = default, c12 = default, c13 = default;
        for (; p <= k - width; p += width)
        {
            TV a0 = TVec.Load(w0 + p), a1 = TVec.Load(w1 + p), x = TVec.Load(r0 + p);
            c00 = TVec.Fma(x, a0, c00);
            c10 = TVec.Fma(x, a1, c10);
            x = TVec.Load(r1 + p);
            c01 = TVec.Fma(x, a0, c01);
            c11 = TVec.Fma(x, a1, c11);
            if (m > 2)
            {
                x = TVec.Load(r2 + p);
                c02 = TVec.Fma(x, a0, c02);
                c12 = TVec.Fma(x, a1, c12);
                if (m > 3)
                {
                    x = TVec.Load(r3 + p);
                    c03 = TVec.Fma(x, a0, c03);
                    c13 = TVec.Fma(x, a1, c13);
                }
            }
        }

        d[0] = TVec.Sum(c00);
        d[1] = TVec.Sum(c01);
        d[2] = TVec.Sum(c02);
        d[3] = TVec.Sum(c03);
        d[TileRows] = TVec.Sum(c10);
        d[TileRows + 1] = TVec.Sum(c11);
        d[TileRows + 2] = TVec.Sum(c12);
        d[TileRows + 3] = TVec.Sum(c13);
        return p;
    }
}
