// Transposing pack of a matrix stored with k contiguous (a weight [out, in] as op(B), or x
// [n, in] as op(A)) into the k-major micro-panel layout dst[p·nr + c]. Done 8 × 8 at a time in registers (unpack, shuffle,
// 128-bit permute), so every load and store is a full 32-byte vector instead of a strided
// scalar; the remainder (cols or kc not a multiple of 8) falls back to scalar copies.
// The copy is exact, so it is bit-identical to the scalar pack.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class PackTranspose
{
    public static bool Usable => Avx.IsSupported;

    public static void Pack(float* src, long ld, float* dst, int cols, int kc, int nr) =>
        Pack<float, Fp32Load>(src, ld, dst, cols, kc, nr);

    public static void Pack(ushort* src, long ld, float* dst, int cols, int kc, int nr) =>
        Pack<ushort, Bf16Load>(src, ld, dst, cols, kc, nr);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pack<T, TLoad>(T* src, long ld, float* dst, int cols, int kc, int nr)
        where T : unmanaged
        where TLoad : IWidenLoad<T>
    {
        int c = 0;
        for (; c + 8 <= cols; c += 8)
        {
            T* s = src + (c * ld);
            int p = 0;
            for (; p + 8 <= kc; p += 8)
            {
                Transpose(
                    TLoad.Load256(s + p), TLoad.Load256(s + ld + p), TLoad.Load256(s + (2 * ld) + p), TLoad.Load256(s + (3 * ld) + p),
                    TLoad.Load256(s + (4 * ld) + p), TLoad.Load256(s + (5 * ld) + p), TLoad.Load256(s + (6 * ld) + p), TLoad.Load256(s + (7 * ld) + p),
                    dst + (p * nr) + c, nr);
            }

            for (; p < kc; p++)
            {
                for (int q = 0; q < 8; q++)
                {
                    dst[(p * nr) + c + q] = TLoad.Load(s + (q * ld) + p);
                }
            }
        }

        for (; c < cols; c++)
        {
            T* s = src + (c * ld);
            for (int p = 0; p < kc; p++)
            {
                dst[(p * nr) + c] = TLoad.Load(s + p);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> r4, Vector256<float> r5, Vector256<float> r6, Vector256<float> r7, float* dst, int nr)
    {
        var t0 = Avx.UnpackLow(r0, r1);
        var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3);
        var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5);
        var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7);
        var t7 = Avx.UnpackHigh(r6, r7);
        var s0 = Avx.Shuffle(t0, t2, 0x44);
        var s1 = Avx.Shuffle(t0, t2, 0xEE);
        var s2 = Avx.Shuffle(t1, t3, 0x44);
        var s3 = Avx.Shuffle(t1, t3, 0xEE);
        var s4 = Avx.Shuffle(t4, t6, 0x44);
        var s5 = Avx.Shuffle(t4, t6, 0xEE);
        var s6 = Avx.Shuffle(t5, t7, 0x44);
        var s7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Permute2x128(s0, s4, 0x20).Store(dst);
        Avx.Permute2x128(s1, s5, 0x20).Store(dst + nr);
        Avx.Permute2x128(s2, s6, 0x20).Store(dst + (2 * nr));
        Avx.Permute2x128(s3, s7, 0x20).Store(dst + (3 * nr));
        Avx.Permute2x128(s0, s4, 0x31).Store(dst + (4 * nr));
        Avx.Permute2x128(s1, s5, 0x31).Store(dst + (5 * nr));
        Avx.Permute2x128(s2, s6, 0x31).Store(dst + (6 * nr));
        Avx.Permute2x128(s3, s7, 0x31).Store(dst + (7 * nr));
    }
}
