// GEMV inner product for the small-m path: up to 4 rows of op(A) against one contiguous
// column of op(B) (a row of a weight stored [out, in]), so each weight byte is read once
// however many rows there are. Lanes accumulate strided partial sums, then reduce: a fixed
// order for a given path, so results are deterministic. One row on the 512-bit path: Dot512
// (RowDotRealign.cs), whose weight loads never split a cache line.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe partial class RowDot
{
    public const int MaxRows = 4;

    public static void DotAdd(float* b, float* a, int lda, int m, int k, SimdPath path, float* result)
    {
        if (m == 1 && path == SimdPath.Vector512)
        {
            result[0] += Dot512(b, a, k);
            return;
        }

        DotAdd<float, Fp32Load>(b, a, lda, m, k, path, result, realign: true);
    }

    /// <summary>As <see cref="DotAdd(float*, float*, int, int, int, SimdPath, float*)"/> with every load of b as it falls (its reference in the tests).</summary>
    internal static void DotAddPlain(float* b, float* a, int lda, int m, int k, SimdPath path, float* result)
    {
        if (m == 1 && path == SimdPath.Vector512)
        {
            result[0] += Dot512Plain(b, a, k);
            return;
        }

        DotAdd<float, Fp32Load>(b, a, lda, m, k, path, result, realign: false);
    }

    public static void DotAddBf16(ushort* b, float* a, int lda, int m, int k, SimdPath path, float* result) =>
        DotAdd<ushort, Bf16Load>(b, a, lda, m, k, path, result, realign: false);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotAdd<T, TLoad>(T* b, float* a, int lda, int m, int k, SimdPath path, float* result, bool realign)
        where T : unmanaged
        where TLoad : IWidenLoad<T>
    {
        float* a0 = a;
        float* a1 = m > 1 ? a + lda : a;
        float* a2 = m > 2 ? a + (2 * lda) : a;
        float* a3 = m > 3 ? a + (3 * lda) : a;
        int p = 0;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        if (path == SimdPath.Vector512)
        {
            // fp32 rows of b that start off a 64-byte line: the same sums with b loaded in aligned lines (RowDotRealign.cs).
            p = realign && typeof(T) == typeof(float) && m > 1 ? RowsRealigned((float*)b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3) : -1;
            if (p < 0)
            {
                p = DotAdd<T, TLoad, Vector512<float>, V512>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            p = DotAdd<T, TLoad, Vector256<float>, V256>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3);
        }

        for (; p < k; p++)
        {
            float bv = TLoad.Load(b + p);
            s0 += a0[p] * bv;
            s1 += a1[p] * bv;
            s2 += a2[p] * bv;
            s3 += a3[p] * bv;
        }

        result[0] += s0;
        if (m > 1)
        {
            result[1] += s1;
        }

        if (m > 2)
        {
            result[2] += s2;
        }

        if (m > 3)
        {
            result[3] += s3;
        }
    }

    /// <summary>The m (≤ 4) row sums over the whole vectors, one accumulator a row; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int DotAdd<T, TLoad, TV, TVec>(T* b, float* a0, float* a1, float* a2, float* a3, int m, int k,
        out float s0, out float s1, out float s2, out float s3)
        where T : unmanaged
        where TLoad : IWidenLoad<T>
        where TV : unmanaged
        where TVec : struct, IVec<TV>
    {
        int w = TVec.Width, p = 0;
        TV c0 = default, c1 = default, c2 = default, c3 = default;
        for (; p <= k - w; p += w)
        {
            TV bv = TVec.LoadWidened<T, TLoad>(b + p);
            c0 = TVec.Fma(TVec.Load(a0 + p), bv, c0);
            if (m > 1)
            {
                c1 = TVec.Fma(TVec.Load(a1 + p), bv, c1);
                if (m > 2)
                {
                    c2 = TVec.Fma(TVec.Load(a2 + p), bv, c2);
                    if (m > 3)
                    {
                        c3 = TVec.Fma(TVec.Load(a3 + p), bv, c3);
                    }
                }
            }
        }

        s0 = TVec.Sum(c0);
        s1 = TVec.Sum(c1);
        s2 = TVec.Sum(c2);
        s3 = TVec.Sum(c3);
        return p;
    }

    /// <summary>One row, four independent accumulators so the loop is bound by loads, not FMA latency; loads as they fall (the reference of <see cref="Dot512"/>, which avoids split loads of b).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Dot512Plain(float* b, float* a, int k)
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        int p = 0;
        for (; p <= k - 64; p += 64)
        {
            c0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p), Vector512.Load(b + p), c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 16), Vector512.Load(b + p + 16), c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 32), Vector512.Load(b + p + 32), c2);
            c3 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 48), Vector512.Load(b + p + 48), c3);
        }

        for (; p <= k - 16; p += 16)
        {
            c0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p), Vector512.Load(b + p), c0);
        }

        float sum = Vector512.Sum((c0 + c1) + (c2 + c3));
        for (; p < k; p++)
        {
            sum += a[p] * b[p];
        }

        return sum;
    }
}
