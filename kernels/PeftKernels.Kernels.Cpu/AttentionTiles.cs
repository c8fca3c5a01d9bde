// Tile operations of the attention kernels, over IVec<TV> (AttentionVectors.cs).
//   MulAdd  C[r, 0:n] = (acc ? C[r, 0:n] : 0) + Σ_{p<k} A[r·ars + p·acs] · B[p·ldb + 0:n],  r < rows
//           every product of forward and backward is one call: the output row is vectorised,
//           A is broadcast (so A may be read transposed: ars = 1, acs = ld), B streamed by rows.
//           Register block: 4 rows × 2 vectors, each B load feeds 4 rows.
//   Dot     Σ_d x[d]·y[d]                          (decode scores, D_i = dO_i·o_i)
//   Pack    dst[d·ldd + c] = src[c·lds + d]        (a key tile transposed, so scores vectorise over keys)
//   Row helpers of the softmax: max of scale·s, exp(scale·s − shift) in place with its sum,
//   y = f·x, and ds = scale·p·(dp − D).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class Attention
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MulAdd<TV, T>(float* a, int ars, int acs, float* b, int ldb, float* c, int ldc,
        int rows, int n, int k, bool accumulate)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width;
        for (int r = 0; r < rows; r += 4)
        {
            // A short last block repeats row 0 (same inputs, same result) and stores only its real rows.
            int rb = Math.Min(4, rows - r);
            float* a0 = a + ((long)r * ars);
            float* a1 = rb > 1 ? a0 + ars : a0;
            float* a2 = rb > 2 ? a0 + (2L * ars) : a0;
            float* a3 = rb > 3 ? a0 + (3L * ars) : a0;
            float* c0 = c + ((long)r * ldc);
            float* c1 = rb > 1 ? c0 + ldc : c0;
            float* c2 = rb > 2 ? c0 + (2L * ldc) : c0;
            float* c3 = rb > 3 ? c0 + (3L * ldc) : c0;
            int col = 0;
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
                if (rb > 1)
                {
                    T.Store(c1 + col, x10);
                    T.Store(c1 + col + w, x11);
                }

                if (rb > 2)
                {
                    T.Store(c2 + col, x20);
                    T.Store(c2 + col + w, x21);
                }

                if (rb > 3)
                {
                    T.Store(c3 + col, x30);
                    T.Store(c3 + col + w, x31);
                }
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
                if (rb > 1)
                {
                    T.Store(c1 + col, x1);
                }

                if (rb > 2)
                {
                    T.Store(c2 + col, x2);
                }

                if (rb > 3)
                {
                    T.Store(c3 + col, x3);
                }
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

                c0[col] = x0;
                if (rb > 1)
                {
                    c1[col] = x1;
                }

                if (rb > 2)
                {
                    c2[col] = x2;
                }

                if (rb > 3)
                {
                    c3[col] = x3;
                }
            }
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

    /// <summary>max over c &lt; n of scale·s[c].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ScaledMax<TV, T>(float* s, int n, float scale)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, c = 0;
        float max = float.NegativeInfinity;
        if (n >= w)
        {
            TV vs = T.Splat(scale), m = T.Mul(T.Load(s), vs);
            for (c = w; c <= n - w; c += w)
            {
                m = T.Max(m, T.Mul(T.Load(s + c), vs));
            }

            max = T.MaxAcross(m);
        }

        for (; c < n; c++)
        {
            max = MathF.Max(max, scale * s[c]);
        }

        return max;
    }

    /// <summary>s[c] = exp(scale·s[c] − shift) for c &lt; n; returns their sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ExpInPlace<TV, T>(float* s, int n, float scale, float shift)
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

        float sum = T.Sum(acc);
        for (; c < n; c++)
        {
            float e = MathF.Exp((scale * s[c]) - shift);
            s[c] = e;
            sum += e;
        }

        return sum;
    }

    /// <summary>y[d] = f·x[d] for d &lt; n (x and y may be the same row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScaleRow<TV, T>(float* x, float* y, int n, float f)
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
