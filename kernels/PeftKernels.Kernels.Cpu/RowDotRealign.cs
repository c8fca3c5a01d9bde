// The one-row 512-bit dot product s = Σ_p a[p]·b[p] (a: the GEMV's own 64-byte-aligned copy of x, b: one
// weight row of k floats) when b does not start on a 64-byte boundary, with no load that splits a cache line.
//   Order of the sum (identical to RowDot.Dot512Plain, so the result is equal bit for bit): four accumulators
//   c_i take the products of p ≡ 16·i + lane (mod 64) over the whole 64-float chunks, the remaining whole
//   16-float chunks go to c0, then Vector512.Sum((c0 + c1) + (c2 + c3)), then the scalar tail p ≥ 16·⌊k/16⌋.
//   Only how b[p..p+16) reaches a register changes: b = base + s floats with base 64-byte aligned and
//   s = (b mod 64) / 4 in 1..15; each vector is valignd(next, prev, s) of two aligned loads (prev = the line
//   at base + p, next = base + p + 16), and next is reused as the following vector's prev, so each weight
//   line is loaded once, aligned.
//   Reads: the first aligned load starts s floats before b[0] and the last ends at most 15 floats past
//   b[16·⌊k/16⌋ − 1]; both lie in a 64-byte line that holds an element of the row, so no extra line (and no
//   unmapped page) is touched.
// Rows (m = 2..4 rows of x against the same weight row, RowDot.DotAdd on the 512-bit path): the same loads, one
// accumulator a row over the whole 16-float chunks, then Vector512.Sum; the scalar tail stays with the caller, as
// in the generic loop it replaces (RowDot.DotAdd<T, TLoad, TV, TVec>), so the sums are equal bit for bit.
// Why: the engine's fp32 weights are managed arrays, 8-byte aligned (measured: rows of the ~125M Llama start
// at every multiple of 8 mod 64), so every 512-bit load of an unaligned row crosses two cache lines. On a
// Zen 5 (full-width 512-bit loads) the plain loop streamed a 438 MB token's weights at ~14 GB/s against
// ~18–19 GB/s for the same loop on aligned rows and for this one on unaligned rows, one thread, same minutes
// (docs/performance.md, "Session 15: fp32 decode on Zen 5").
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe partial class RowDot
{
    /// <summary>A compile-time shift in floats (1..15), so valignd gets its immediate in each specialization.</summary>
    private interface IShift
    {
        static abstract byte Floats { get; }
    }

    /// <summary>Σ_p a[p]·b[p] in <see cref="Dot512Plain"/>'s order; b loaded in aligned lines when it starts off a 64-byte boundary.</summary>
    /// <remarks>a must be 64-byte aligned or at least readable with unaligned loads (it is the GEMV's aligned copy of x).</remarks>
    internal static float Dot512(float* b, float* a, int k)
    {
        nint offset = (nint)b & 63;
        if (offset == 0 || (offset & 3) != 0 || k < 16 || !Avx512F.IsSupported)
        {
            return Dot512Plain(b, a, k);
        }

        return (offset >> 2) switch
        {
            1 => Dot512Shifted<S1>(b, a, k),
            2 => Dot512Shifted<S2>(b, a, k),
            3 => Dot512Shifted<S3>(b, a, k),
            4 => Dot512Shifted<S4>(b, a, k),
            5 => Dot512Shifted<S5>(b, a, k),
            6 => Dot512Shifted<S6>(b, a, k),
            7 => Dot512Shifted<S7>(b, a, k),
            8 => Dot512Shifted<S8>(b, a, k),
            9 => Dot512Shifted<S9>(b, a, k),
            10 => Dot512Shifted<S10>(b, a, k),
            11 => Dot512Shifted<S11>(b, a, k),
            12 => Dot512Shifted<S12>(b, a, k),
            13 => Dot512Shifted<S13>(b, a, k),
            14 => Dot512Shifted<S14>(b, a, k),
            _ => Dot512Shifted<S15>(b, a, k),
        };
    }

    /// <summary>
    /// The m (2..4) row sums of <see cref="DotAdd(float*, float*, int, int, int, SimdPath, float*)"/>'s 512-bit loop over the whole
    /// 16-float chunks with b loaded in aligned lines; returns where they end, or -1 when b starts on a line (or off a float
    /// boundary, or the row is shorter than a vector), where the generic loop runs instead.
    /// </summary>
    internal static int RowsRealigned(float* b, float* a0, float* a1, float* a2, float* a3, int m, int k,
        out float s0, out float s1, out float s2, out float s3)
    {
        s0 = s1 = s2 = s3 = 0f;
        nint offset = (nint)b & 63;
        if (offset == 0 || (offset & 3) != 0 || k < 16 || !Avx512F.IsSupported)
        {
            return -1;
        }

        return (offset >> 2) switch
        {
            1 => RowsShifted<S1>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            2 => RowsShifted<S2>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            3 => RowsShifted<S3>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            4 => RowsShifted<S4>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            5 => RowsShifted<S5>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            6 => RowsShifted<S6>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            7 => RowsShifted<S7>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            8 => RowsShifted<S8>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            9 => RowsShifted<S9>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            10 => RowsShifted<S10>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            11 => RowsShifted<S11>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            12 => RowsShifted<S12>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            13 => RowsShifted<S13>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            14 => RowsShifted<S14>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
            _ => RowsShifted<S15>(b, a0, a1, a2, a3, m, k, out s0, out s1, out s2, out s3),
        };
    }

    // TShift.Floats is a constant in each struct specialization, so the JIT emits valignd with an immediate (CA1857
    // cannot see that); a probe of the loop ran at the aligned loop's speed.
#pragma warning disable CA1857
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot512Shifted<TShift>(float* b, float* a, int k)
        where TShift : struct, IShift
    {
        float* line = b - TShift.Floats;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        var prev = Vector512.LoadAligned(line).AsUInt32();
        int p = 0;
        for (; p <= k - 64; p += 64)
        {
            var n1 = Vector512.LoadAligned(line + p + 16).AsUInt32();
            var n2 = Vector512.LoadAligned(line + p + 32).AsUInt32();
            var n3 = Vector512.LoadAligned(line + p + 48).AsUInt32();
            var n4 = Vector512.LoadAligned(line + p + 64).AsUInt32();
            c0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p), Avx512F.AlignRight32(n1, prev, TShift.Floats).AsSingle(), c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 16), Avx512F.AlignRight32(n2, n1, TShift.Floats).AsSingle(), c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 32), Avx512F.AlignRight32(n3, n2, TShift.Floats).AsSingle(), c2);
            c3 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p + 48), Avx512F.AlignRight32(n4, n3, TShift.Floats).AsSingle(), c3);
            prev = n4;
        }

        for (; p <= k - 16; p += 16)
        {
            var n1 = Vector512.LoadAligned(line + p + 16).AsUInt32();
            c0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + p), Avx512F.AlignRight32(n1, prev, TShift.Floats).AsSingle(), c0);
            prev = n1;
        }

        float sum = Vector512.Sum((c0 + c1) + (c2 + c3));
        for (; p < k; p++)
        {
            sum += a[p] * b[p];
        }

        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int RowsShifted<TShift>(float* b, float* a0, float* a1, float* a2, float* a3, int m, int k,
        out float s0, out float s1, out float s2, out float s3)
        where TShift : struct, IShift
    {
        float* line = b - TShift.Floats;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        var prev = Vector512.LoadAligned(line).AsUInt32();
        int p = 0;
        for (; p <= k - 16; p += 16)
        {
            var next = Vector512.LoadAligned(line + p + 16).AsUInt32();
            var bv = Avx512F.AlignRight32(next, prev, TShift.Floats).AsSingle();
            prev = next;
            c0 = Vector512.FusedMultiplyAdd(Vector512.Load(a0 + p), bv, c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Load(a1 + p), bv, c1);
            if (m > 2)
            {
                c2 = Vector512.FusedMultiplyAdd(Vector512.Load(a2 + p), bv, c2);
                if (m > 3)
                {
                    c3 = Vector512.FusedMultiplyAdd(Vector512.Load(a3 + p), bv, c3);
                }
            }
        }

        s0 = Vector512.Sum(c0);
        s1 = Vector512.Sum(c1);
        s2 = Vector512.Sum(c2);
        s3 = Vector512.Sum(c3);
        return p;
    }
#pragma warning restore CA1857

#pragma warning disable SA1201, SA1402 // the shift constants belong with the kernel that uses them
    private readonly struct S1 : IShift
    {
        public static byte Floats => 1;
    }

    private readonly struct S2 : IShift
    {
        public static byte Floats => 2;
    }

    private readonly struct S3 : IShift
    {
        public static byte Floats => 3;
    }

    private readonly struct S4 : IShift
    {
        public static byte Floats => 4;
    }

    private readonly struct S5 : IShift
    {
        public static byte Floats => 5;
    }

    private readonly struct S6 : IShift
    {
        public static byte Floats => 6;
    }

    private readonly struct S7 : IShift
    {
        public static byte Floats => 7;
    }

    private readonly struct S8 : IShift
    {
        public static byte Floats => 8;
    }

    private readonly struct S9 : IShift
    {
        public static byte Floats => 9;
    }

    private readonly struct S10 : IShift
    {
        public static byte Floats => 10;
    }

    private readonly struct S11 : IShift
    {
        public static byte Floats => 11;
    }

    private readonly struct S12 : IShift
    {
        public static byte Floats => 12;
    }

    private readonly struct S13 : IShift
    {
        public static byte Floats => 13;
    }

    private readonly struct S14 : IShift
    {
        public static byte Floats => 14;
    }

    private readonly struct S15 : IShift
    {
        public static byte Floats => 15;
    }
#pragma warning restore SA1201, SA1402
}
