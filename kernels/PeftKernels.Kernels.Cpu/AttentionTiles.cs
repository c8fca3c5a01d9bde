// Tile operations of the attention kernels, over IVec<TV> (IVec.cs, SimdVectors.cs).
//   MulAdd  C[r, 0:n] = (acc ? C[r, 0:n] : 0) + Σ_{p<k} A[r·ars + p·acs] · B[p·ldb + 0:n],  r < rows
//           every product of forward and backward is one call: the output row is vectorised,
//           A is broadcast (so A may be read transposed: ars = 1, acs = ld), B streamed by rows.
//           Register blocks: 4 rows × 4 (Vector512) or 2 vectors, then single rows × 4 vectors.
//   Dot     Σ_d x[d]·y[d]                          (decode scores, D_i = dO_i·o_i); Dots: one x, many y
//   Pack    dst[d·ldd + c] = src[c·lds + d]        (a key tile transposed, so scores vectorise over keys)
//   Row helpers of the softmax: max of scale·s, exp(scale·s − shift) in place with its sum,
//   y = f·x, and ds = scale·p·(dp − D).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class Attention
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MulAdd<TV, T>(float* a, int ars, int acs, float* b, int ldb, float* c, int ldc,
        int rows, int n, int k, bool accumulate)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int r = 0;
        for (; r <= rows - 4; r += 4)
        {
            MulAdd4<TV, T>(a + ((long)r * ars), ars, acs, b, ldb, c + ((long)r * ldc), ldc, n, k, accumulate);
        }

        for (; r < rows; r++)
        {
            MulAdd1<TV, T>(a + ((long)r * ars), acs, b, ldb, c + ((long)r * ldc), n, k, accumulate);
        }
    }

    /// <summary>
    /// Four rows: 4 × 4 vector accumulators where the ISA has 32 vector registers (AVX-512), else
    /// 4 × 2 (AVX2 has 16: 8 accumulators, 2 B vectors and a broadcast fit without spills); each
    /// B load feeds four FMAs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MulAdd4<TV, T>(float* a0, int ars, int acs, float* b, int ldb, float* c0, int ldc,
        int n, int k, bool accumulate)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, col = 0;
        float* a1 = a0 + ars, a2 = a1 + ars, a3 = a2 + ars;
        float* c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        for (; T.Has32Registers && col <= n - (4 * w); col += 4 * w)
        {
            TV x00 = default, x01 = default, x02 = default, x03 = default, x10 = default, x11 = default, x12 = default, x13 = default;
            TV x20 = default, x21 = default, x22 = default, x23 = default, x30 = default, x31 = default, x32 = default, x33 = default;
            if (accumulate)
            {
                (x00, x01, x02, x03) = (T.Load(c0 + col), T.Load(c0 + col + w), T.Load(c0 + col + (2 * w)), T.Load(c0 + col + (3 * w)));
                (x10, x11, x12, x13) = (T.Load(c1 + col), T.Load(c1 + col + w), T.Load(c1 + col + (2 * w)), T.Load(c1 + col + (3 * w)));
                (x20, x21, x22, x23) = (T.Load(c2 + col), T.Load(c2 + col + w), T.Load(c2 + col + (2 * w)), T.Load(c2 + col + (3 * w)));
                (x30, x31, x32, x33) = (T.Load(c3 + col), T.Load(c3 + col + w), T.Load(c3 + col + (2 * w)), T.Load(c3 + col + (3 * w)));
            }

            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                TV b0 = T.Load(bp), b1 = T.Load(bp + w), b2 = T.Load(bp + (2 * w)), b3 = T.Load(bp + (3 * w));
                TV s = T.Splat(a0[ap]);
                x00 = T.Fma(s, b0, x00);
                x01 = T.Fma(s, b1, x01);
                x02 = T.Fma(s, b2, x02);
                x03 = T.Fma(s, b3, x03);
                s = T.Splat(a1[ap]);
                x10 = T.Fma(s, b0, x10);
                x11 = T.Fma(s, b1, x11);
                x12 = T.Fma(s, b2, x12);
                x13 = T.Fma(s, b3, x13);
                s = T.Splat(a2[ap]);
                x20 = T.Fma(s, b0, x20);
                x21 = T.Fma(s, b1, x21);
                x22 = T.Fma(s, b2, x22);
                x23 = T.Fma(s, b3, x23);
                s = T.Splat(a3[ap]);
                x30 = T.Fma(s, b0, x30);
                x31 = T.Fma(s, b1, x31);
                x32 = T.Fma(s, b2, x32);
                x33 = T.Fma(s, b3, x33);
            }

            T.Store(c0 + col, x00);
            T.Store(c0 + col + w, x01);
            T.Store(c0 + col + (2 * w), x02);
            T.Store(c0 + col + (3 * w), x03);
            T.Store(c1 + col, x10);
            T.Store(c1 + col + w, x11);
            T.Store(c1 + col + (2 * w), x12);
            T.Store(c1 + col + (3 * w), x13);
            T.Store(c2 + col, x20);
            T.Store(c2 + col + w, x21);
            T.Store(c2 + col + (2 * w), x22);
            T.Store(c2 + col + (3 * w), x23);
            T.Store(c3 + col, x30);
            T.Store(c3 + col + w, x31);
            T.Store(c3 + col + (2 * w), x32);
            T.Store(c3 + col + (3 * w), x33);
        }

        for (; col <= n - (2 * w); col += 2 * w)
        {
            TV x00 = default, x01 = default, x10 = default, x11 = default, x20 = default, x21 = default, x30 = default, x31 = default;
            if (accumulate)
            {
                (x00, x01) = (T.Load(c0 + col), T.Load(c0 + col + w));
                (x10, x11) = (T.Load(c1 + col), T.Load(c1 + col + w));
                (x20, x21) = (T.Load(c2 + col), T.Load(c2 + col + w));
                (x30, x31) = (T.Load(c3 + col), T.Load(c3 + col + w));
            }

            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                TV b0 = T.Load(bp), b1 = T.Load(bp + w);
                TV s = T.Splat(a0[ap]);
                x00 = T.Fma(s, b0, x00);
                x01 = T.Fma(s, b1, x01);
                s = T.Splat(a1[ap]);
                x10 = T.Fma(s, b0, x10);
                x11 = T.Fma(s, b1, x11);
                s = T.Splat(a2[ap]);
                x20 = T.Fma(s, b0, x20);
                x21 = T.Fma(s, b1, x21);
                s = T.Splat(a3[ap]);
                x30 = T.Fma(s, b0, x30);
                x31 = T.Fma(s, b1, x31);
            }

            T.Store(c0 + col, x00);
            T.Store(c0 + col + w, x01);
            T.Store(c1 + col, x10);
            T.Store(c1 + col + w, x11);
            T.Store(c2 + col, x20);
            T.Store(c2 + col + w, x21);
            T.Store(c3 + col, x30);
            T.Store(c3 + col + w, x31);
        }

        for (; col <= n - w; col += w)
        {
            TV x0 = default, x1 = default, x2 = default, x3 = default;
            if (accumulate)
            {
                (x0, x1, x2, x3) = (T.Load(c0 + col), T.Load(c1 + col), T.Load(c2 + col), T.Load(c3 + col));
            }

            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                TV b0 = T.Load(bp);
                x0 = T.Fma(T.Splat(a0[ap]), b0, x0);
                x1 = T.Fma(T.Splat(a1[ap]), b0, x1);
                x2 = T.Fma(T.Splat(a2[ap]), b0, x2);
                x3 = T.Fma(T.Splat(a3[ap]), b0, x3);
            }

            T.Store(c0 + col, x0);
            T.Store(c1 + col, x1);
            T.Store(c2 + col, x2);
            T.Store(c3 + col, x3);
        }

        for (; col < n; col++)
        {
            float x0 = accumulate ? c0[col] : 0f, x1 = accumulate ? c1[col] : 0f;
            float x2 = accumulate ? c2[col] : 0f, x3 = accumulate ? c3[col] : 0f;
            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                x0 += a0[ap] * *bp;
                x1 += a1[ap] * *bp;
                x2 += a2[ap] * *bp;
                x3 += a3[ap] * *bp;
            }

            (c0[col], c1[col], c2[col], c3[col]) = (x0, x1, x2, x3);
        }
    }

    /// <summary>One row (decode, and the rows after the last block of four): 4 vector accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MulAdd1<TV, T>(float* a, int acs, float* b, int ldb, float* c, int n, int k, bool accumulate)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, col = 0;
        for (; col <= n - (4 * w); col += 4 * w)
        {
            TV x0 = default, x1 = default, x2 = default, x3 = default;
            if (accumulate)
            {
                (x0, x1, x2, x3) = (T.Load(c + col), T.Load(c + col + w), T.Load(c + col + (2 * w)), T.Load(c + col + (3 * w)));
            }

            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                TV s = T.Splat(a[ap]);
                x0 = T.Fma(s, T.Load(bp), x0);
                x1 = T.Fma(s, T.Load(bp + w), x1);
                x2 = T.Fma(s, T.Load(bp + (2 * w)), x2);
                x3 = T.Fma(s, T.Load(bp + (3 * w)), x3);
            }

            T.Store(c + col, x0);
            T.Store(c + col + w, x1);
            T.Store(c + col + (2 * w), x2);
            T.Store(c + col + (3 * w), x3);
        }

        for (; col <= n - w; col += w)
        {
            TV x = accumulate ? T.Load(c + col) : default;
            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                x = T.Fma(T.Splat(a[ap]), T.Load(bp), x);
            }

            T.Store(c + col, x);
        }

        for (; col < n; col++)
        {
            float x = accumulate ? c[col] : 0f;
            float* bp = b + col;
            for (int p = 0, ap = 0; p < k; p++, ap += acs, bp += ldb)
            {
                x += a[ap] * *bp;
            }

            c[col] = x;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot<TV, T>(float* x, float* y, int n)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, d = 0;
        TV s0 = default, s1 = default;
        for (; d <= n - (2 * w); d += 2 * w)
        {
            s0 = T.Fma(T.Load(x + d), T.Load(y + d), s0);
            s1 = T.Fma(T.Load(x + d + w), T.Load(y + d + w), s1);
        }

        for (; d <= n - w; d += w)
        {
            s0 = T.Fma(T.Load(x + d), T.Load(y + d), s0);
        }

        float sum = T.Sum(T.Add(s0, s1));
        for (; d < n; d++)
        {
            sum += x[d] * y[d];
        }

        return sum;
    }

    /// <summary>c[j] = x·y_j for j &lt; count, y_j = y + j·ldy, all of length n.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Dots<TV, T>(float* x, float* y, int ldy, int count, int n, float* c)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        for (int j = 0; j < count; j++)
        {
            c[j] = Dot<TV, T>(x, y + ((long)j * ldy), n);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pack(float* src, int lds, int count, int length, float* dst, int ldd)
    {
        for (int c = 0; c < count; c++)
        {
            float* row = src + ((long)c * lds);
            for (int d = 0; d < length; d++)
            {
                dst[((long)d * ldd) + c] = row[d];
            }
        }
    }

    // The two row helpers below work on rows of KeyTile-wide score buffers (a multiple of every
    // vector width), so a last partial vector is read whole and masked instead of finished in
    // scalar code: the diagonal tiles would otherwise spend more time in scalar exp than in the FMAs.

    /// <summary>
    /// max over c &lt; n of scale·s[c]; NaN if any of them is NaN (the IEEE maximum keeps a NaN lane, and the lane sum
    /// reports it), so the caller's running max, and through it the row's output and lse, become NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float ScaledMax<TV, T>(float* s, int n, float scale)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, c = 0;
        TV vs = T.Splat(scale), m = T.Splat(float.NegativeInfinity);
        for (; c <= n - w; c += w)
        {
            m = T.MaxIeee(m, T.Mul(T.Load(s + c), vs));
        }

        if (c < n)
        {
            m = T.MaxIeee(m, T.KeepFirst(T.Mul(T.Load(s + c), vs), n - c, float.NegativeInfinity));
        }

        float max = T.MaxAcross(m);
        return float.IsNaN(T.Sum(m)) ? float.NaN : max;
    }

    /// <summary>s[c] = exp(scale·s[c] − shift) for c &lt; n, 0 up to the end of the last vector; returns their sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float ExpInPlace<TV, T>(float* s, int n, float scale, float shift)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, c = 0;
        TV vs = T.Splat(scale), vShift = T.Splat(shift), acc = default;
        for (; c <= n - w; c += w)
        {
            TV e = T.Exp(T.Sub(T.Mul(T.Load(s + c), vs), vShift));
            T.Store(s + c, e);
            acc = T.Add(acc, e);
        }

        if (c < n)
        {
            TV e = T.KeepFirst(T.Exp(T.Sub(T.Mul(T.Load(s + c), vs), vShift)), n - c, 0f);
            T.Store(s + c, e);
            acc = T.Add(acc, e);
        }

        return T.Sum(acc);
    }

    /// <summary>y[d] = f·x[d] for d &lt; n (x and y may be the same row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ScaleRow<TV, T>(float* x, float* y, int n, float f)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, d = 0;
        TV vf = T.Splat(f);
        for (; d <= n - w; d += w)
        {
            T.Store(y + d, T.Mul(T.Load(x + d), vf));
        }

        for (; d < n; d++)
        {
            y[d] = f * x[d];
        }
    }

    /// <summary>p[c] = scale·p[c]·(dp[c] − dRow) for c &lt; n: the softmax backward, scale of the scores folded in.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SoftmaxGrad<TV, T>(float* p, float* dp, int n, float dRow, float scale)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, c = 0;
        TV vd = T.Splat(dRow), vs = T.Splat(scale);
        for (; c <= n - w; c += w)
        {
            T.Store(p + c, T.Mul(T.Mul(T.Load(p + c), vs), T.Sub(T.Load(dp + c), vd)));
        }

        for (; c < n; c++)
        {
            p[c] = scale * p[c] * (dp[c] - dRow);
        }
    }
}
