// Register-blocked micro-kernels: an MR × NR tile of C from packed panels,
//   acc[r, c] = Σ_{p < kc} Ap[p·MR + r] · Bp[p·NR + c]
//   C[r, c]   = alpha · acc[r, c] + beta · C[r, c] + bias[c]      (beta = 0: C is not read)
// Rows of A are broadcast, NR columns of B are held in NR/width vectors, so each k step is
// MR·NR/width independent FMAs (enough to hide FMA latency on two FMA ports).
// Generated shape: Vector512 12×32 (24 zmm accumulators), Vector512 24×16 for outputs at
// most 16 wide (LoRA's rank-sized GEMMs), Vector256 6×16 (12 ymm, fits the 16 registers
// of AVX2), scalar 4×4. The k loops are not one body over IVec: each shape holds its own number of
// accumulators (MR × NR/width, sized to the register file), and accumulators must be named locals to
// live in registers. The epilogue (alpha, beta, bias, store) is one body, MicroTile.Store.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal unsafe interface IMicroKernel
{
    static abstract int MR { get; }

    static abstract int NR { get; }

    static abstract SimdPath Path { get; }

    /// <summary>The longest K block the driver hands this kernel (its packed panels' cache footprint grows with it).</summary>
    static virtual int KcMax => 512;

    static abstract void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias);
}

/// <summary>The epilogue of a micro-kernel tile, one vector of one row.</summary>
internal static unsafe class MicroTile
{
    /// <summary>dst = alpha·acc (+ beta·dst when beta ≠ 0) (+ bias when given).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store<TV, T>(float* dst, TV acc, TV alpha, TV vbeta, float beta, float* bias)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        acc = T.Mul(acc, alpha);
        if (beta != 0f)
        {
            acc = T.Fma(vbeta, T.Load(dst), acc);
        }

        if (bias != null)
        {
            acc = T.Add(acc, T.Load(bias));
        }

        T.Store(dst, acc);
    }
}

internal readonly unsafe struct Vector512Kernel : IMicroKernel
{
    public static int MR => 12;

    public static int NR => 32;

    public static SimdPath Path => SimdPath.Vector512;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias)
    {
        // The C tile (12 rows × 128 bytes, rows ldc apart) is touched only after the k loop: its rows are
        // requested during the last 12 k steps, one row per step, so their misses overlap the FMAs. Not all at
        // the start: rows ldc = 4096 floats apart share L1 sets, and 24 lines fetched before the loop evicted
        // A and B lines of those sets for the whole loop (the same fix as the native bf16 kernel, session 15).
        int prefetchFrom = kc - 12;
        Vector512<float> c0_0 = default, c0_1 = default, c1_0 = default, c1_1 = default, c2_0 = default, c2_1 = default, c3_0 = default, c3_1 = default, c4_0 = default, c4_1 = default, c5_0 = default, c5_1 = default, c6_0 = default, c6_1 = default, c7_0 = default, c7_1 = default, c8_0 = default, c8_1 = default, c9_0 = default, c9_1 = default, c10_0 = default, c10_1 = default, c11_0 = default, c11_1 = default;
        for (int p = 0; p < kc; p++)
        {
            if (p >= prefetchFrom)
            {
                float* row = c + ((p - prefetchFrom) * ldc);
                Sse.Prefetch0(row);
                Sse.Prefetch0(row + 16);
            }

            Vector512<float> b0 = Vector512.Load(b + 0);
            Vector512<float> b1 = Vector512.Load(b + 16);
            Vector512<float> a0 = Vector512.Create(a[0]);
            c0_0 = Vector512.FusedMultiplyAdd(a0, b0, c0_0);
            c0_1 = Vector512.FusedMultiplyAdd(a0, b1, c0_1);
            Vector512<float> a1 = Vector512.Create(a[1]);
            c1_0 = Vector512.FusedMultiplyAdd(a1, b0, c1_0);
            c1_1 = Vector512.FusedMultiplyAdd(a1, b1, c1_1);
            Vector512<float> a2 = Vector512.Create(a[2]);
            c2_0 = Vector512.FusedMultiplyAdd(a2, b0, c2_0);
            c2_1 = Vector512.FusedMultiplyAdd(a2, b1, c2_1);
            Vector512<float> a3 = Vector512.Create(a[3]);
            c3_0 = Vector512.FusedMultiplyAdd(a3, b0, c3_0);
            c3_1 = Vector512.FusedMultiplyAdd(a3, b1, c3_1);
            Vector512<float> a4 = Vector512.Create(a[4]);
            c4_0 = Vector512.FusedMultiplyAdd(a4, b0, c4_0);
            c4_1 = Vector512.FusedMultiplyAdd(a4, b1, c4_1);
            Vector512<float> a5 = Vector512.Create(a[5]);
            c5_0 = Vector512.FusedMultiplyAdd(a5, b0, c5_0);
            c5_1 = Vector512.FusedMultiplyAdd(a5, b1, c5_1);
            Vector512<float> a6 = Vector512.Create(a[6]);
            c6_0 = Vector512.FusedMultiplyAdd(a6, b0, c6_0);
            c6_1 = Vector512.FusedMultiplyAdd(a6, b1, c6_1);
            Vector512<float> a7 = Vector512.Create(a[7]);
            c7_0 = Vector512.FusedMultiplyAdd(a7, b0, c7_0);
            c7_1 = Vector512.FusedMultiplyAdd(a7, b1, c7_1);
            Vector512<float> a8 = Vector512.Create(a[8]);
            c8_0 = Vector512.FusedMultiplyAdd(a8, b0, c8_0);
            c8_1 = Vector512.FusedMultiplyAdd(a8, b1, c8_1);
            Vector512<float> a9 = Vector512.Create(a[9]);
            c9_0 = Vector512.FusedMultiplyAdd(a9, b0, c9_0);
            c9_1 = Vector512.FusedMultiplyAdd(a9, b1, c9_1);
            Vector512<float> a10 = Vector512.Create(a[10]);
            c10_0 = Vector512.FusedMultiplyAdd(a10, b0, c10_0);
            c10_1 = Vector512.FusedMultiplyAdd(a10, b1, c10_1);
            Vector512<float> a11 = Vector512.Create(a[11]);
            c11_0 = Vector512.FusedMultiplyAdd(a11, b0, c11_0);
            c11_1 = Vector512.FusedMultiplyAdd(a11, b1, c11_1);
            a += 12;
            b += 32;
        }

        Vector512<float> va = Vector512.Create(alpha);
        Vector512<float> vb = Vector512.Create(beta);
        Store(c + (0 * ldc) + 0, c0_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (0 * ldc) + 16, c0_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (1 * ldc) + 0, c1_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (1 * ldc) + 16, c1_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (2 * ldc) + 0, c2_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (2 * ldc) + 16, c2_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (3 * ldc) + 0, c3_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (3 * ldc) + 16, c3_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (4 * ldc) + 0, c4_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (4 * ldc) + 16, c4_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (5 * ldc) + 0, c5_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (5 * ldc) + 16, c5_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (6 * ldc) + 0, c6_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (6 * ldc) + 16, c6_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (7 * ldc) + 0, c7_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (7 * ldc) + 16, c7_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (8 * ldc) + 0, c8_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (8 * ldc) + 16, c8_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (9 * ldc) + 0, c9_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (9 * ldc) + 16, c9_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (10 * ldc) + 0, c10_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (10 * ldc) + 16, c10_1, va, vb, beta, bias == null ? null : bias + 16);
        Store(c + (11 * ldc) + 0, c11_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (11 * ldc) + 16, c11_1, va, vb, beta, bias == null ? null : bias + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store(float* dst, Vector512<float> acc, Vector512<float> alpha, Vector512<float> vbeta, float beta, float* bias) =>
        MicroTile.Store<Vector512<float>, V512>(dst, acc, alpha, vbeta, beta, bias);
}

internal readonly unsafe struct Vector512NarrowKernel : IMicroKernel
{
    public static int MR => 24;

    public static int NR => 16;

    public static SimdPath Path => SimdPath.Vector512;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias)
    {
        Vector512<float> c0_0 = default, c1_0 = default, c2_0 = default, c3_0 = default, c4_0 = default, c5_0 = default, c6_0 = default, c7_0 = default;
        Vector512<float> c8_0 = default, c9_0 = default, c10_0 = default, c11_0 = default, c12_0 = default, c13_0 = default, c14_0 = default, c15_0 = default;
        Vector512<float> c16_0 = default, c17_0 = default, c18_0 = default, c19_0 = default, c20_0 = default, c21_0 = default, c22_0 = default, c23_0 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b + 0);
            c0_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[0]), b0, c0_0);
            c1_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[1]), b0, c1_0);
            c2_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[2]), b0, c2_0);
            c3_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[3]), b0, c3_0);
            c4_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[4]), b0, c4_0);
            c5_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[5]), b0, c5_0);
            c6_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[6]), b0, c6_0);
            c7_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[7]), b0, c7_0);
            c8_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[8]), b0, c8_0);
            c9_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[9]), b0, c9_0);
            c10_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[10]), b0, c10_0);
            c11_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[11]), b0, c11_0);
            c12_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[12]), b0, c12_0);
            c13_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[13]), b0, c13_0);
            c14_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[14]), b0, c14_0);
            c15_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[15]), b0, c15_0);
            c16_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[16]), b0, c16_0);
            c17_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[17]), b0, c17_0);
            c18_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[18]), b0, c18_0);
            c19_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[19]), b0, c19_0);
            c20_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[20]), b0, c20_0);
            c21_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[21]), b0, c21_0);
            c22_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[22]), b0, c22_0);
            c23_0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[23]), b0, c23_0);
            a += 24;
            b += 16;
        }

        Vector512<float> va = Vector512.Create(alpha);
        Vector512<float> vb = Vector512.Create(beta);
        Vector512Kernel.Store(c + (0 * ldc) + 0, c0_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (1 * ldc) + 0, c1_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (2 * ldc) + 0, c2_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (3 * ldc) + 0, c3_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (4 * ldc) + 0, c4_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (5 * ldc) + 0, c5_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (6 * ldc) + 0, c6_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (7 * ldc) + 0, c7_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (8 * ldc) + 0, c8_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (9 * ldc) + 0, c9_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (10 * ldc) + 0, c10_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (11 * ldc) + 0, c11_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (12 * ldc) + 0, c12_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (13 * ldc) + 0, c13_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (14 * ldc) + 0, c14_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (15 * ldc) + 0, c15_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (16 * ldc) + 0, c16_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (17 * ldc) + 0, c17_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (18 * ldc) + 0, c18_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (19 * ldc) + 0, c19_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (20 * ldc) + 0, c20_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (21 * ldc) + 0, c21_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (22 * ldc) + 0, c22_0, va, vb, beta, bias == null ? null : bias + 0);
        Vector512Kernel.Store(c + (23 * ldc) + 0, c23_0, va, vb, beta, bias == null ? null : bias + 0);
    }
}

internal readonly unsafe struct Vector256Kernel : IMicroKernel
{
    public static int MR => 6;

    public static int NR => 16;

    public static SimdPath Path => SimdPath.Vector256;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias)
    {
        Vector256<float> c0_0 = default, c0_1 = default, c1_0 = default, c1_1 = default, c2_0 = default, c2_1 = default, c3_0 = default, c3_1 = default, c4_0 = default, c4_1 = default, c5_0 = default, c5_1 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b + 0);
            Vector256<float> b1 = Vector256.Load(b + 8);
            Vector256<float> a0 = Vector256.Create(a[0]);
            c0_0 = Vector256.FusedMultiplyAdd(a0, b0, c0_0);
            c0_1 = Vector256.FusedMultiplyAdd(a0, b1, c0_1);
            Vector256<float> a1 = Vector256.Create(a[1]);
            c1_0 = Vector256.FusedMultiplyAdd(a1, b0, c1_0);
            c1_1 = Vector256.FusedMultiplyAdd(a1, b1, c1_1);
            Vector256<float> a2 = Vector256.Create(a[2]);
            c2_0 = Vector256.FusedMultiplyAdd(a2, b0, c2_0);
            c2_1 = Vector256.FusedMultiplyAdd(a2, b1, c2_1);
            Vector256<float> a3 = Vector256.Create(a[3]);
            c3_0 = Vector256.FusedMultiplyAdd(a3, b0, c3_0);
            c3_1 = Vector256.FusedMultiplyAdd(a3, b1, c3_1);
            Vector256<float> a4 = Vector256.Create(a[4]);
            c4_0 = Vector256.FusedMultiplyAdd(a4, b0, c4_0);
            c4_1 = Vector256.FusedMultiplyAdd(a4, b1, c4_1);
            Vector256<float> a5 = Vector256.Create(a[5]);
            c5_0 = Vector256.FusedMultiplyAdd(a5, b0, c5_0);
            c5_1 = Vector256.FusedMultiplyAdd(a5, b1, c5_1);
            a += 6;
            b += 16;
        }

        Vector256<float> va = Vector256.Create(alpha);
        Vector256<float> vb = Vector256.Create(beta);
        Store(c + (0 * ldc) + 0, c0_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (0 * ldc) + 8, c0_1, va, vb, beta, bias == null ? null : bias + 8);
        Store(c + (1 * ldc) + 0, c1_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (1 * ldc) + 8, c1_1, va, vb, beta, bias == null ? null : bias + 8);
        Store(c + (2 * ldc) + 0, c2_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (2 * ldc) + 8, c2_1, va, vb, beta, bias == null ? null : bias + 8);
        Store(c + (3 * ldc) + 0, c3_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (3 * ldc) + 8, c3_1, va, vb, beta, bias == null ? null : bias + 8);
        Store(c + (4 * ldc) + 0, c4_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (4 * ldc) + 8, c4_1, va, vb, beta, bias == null ? null : bias + 8);
        Store(c + (5 * ldc) + 0, c5_0, va, vb, beta, bias == null ? null : bias + 0);
        Store(c + (5 * ldc) + 8, c5_1, va, vb, beta, bias == null ? null : bias + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* dst, Vector256<float> acc, Vector256<float> alpha, Vector256<float> vbeta, float beta, float* bias) =>
        MicroTile.Store<Vector256<float>, V256>(dst, acc, alpha, vbeta, beta, bias);
}

internal readonly unsafe struct ScalarKernel : IMicroKernel
{
    public static int MR => 4;

    public static int NR => 4;

    public static SimdPath Path => SimdPath.Scalar;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(float* a, float* b, int kc, float* c, int ldc, float alpha, float beta, float* bias)
    {
        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
        float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
        for (int p = 0; p < kc; p++)
        {
            float b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3];
            float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
            c00 += a0 * b0;
            c01 += a0 * b1;
            c02 += a0 * b2;
            c03 += a0 * b3;
            c10 += a1 * b0;
            c11 += a1 * b1;
            c12 += a1 * b2;
            c13 += a1 * b3;
            c20 += a2 * b0;
            c21 += a2 * b1;
            c22 += a2 * b2;
            c23 += a2 * b3;
            c30 += a3 * b0;
            c31 += a3 * b1;
            c32 += a3 * b2;
            c33 += a3 * b3;
            a += 4;
            b += 4;
        }

        StoreRow(c, c00, c01, c02, c03, alpha, beta, bias);
        StoreRow(c + ldc, c10, c11, c12, c13, alpha, beta, bias);
        StoreRow(c + (2 * ldc), c20, c21, c22, c23, alpha, beta, bias);
        StoreRow(c + (3 * ldc), c30, c31, c32, c33, alpha, beta, bias);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(float* dst, float v0, float v1, float v2, float v3, float alpha, float beta, float* bias)
    {
        Span<float> v = [v0, v1, v2, v3];
        for (int j = 0; j < 4; j++)
        {
            float r = alpha * v[j];
            if (beta != 0f)
            {
                r += beta * dst[j];
            }

            if (bias != null)
            {
                r += bias[j];
            }

            dst[j] = r;
        }
    }
}
