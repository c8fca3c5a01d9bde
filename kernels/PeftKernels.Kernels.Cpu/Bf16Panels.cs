// Panel sources of bf16 compute (KernelOptions.Compute = Bf16): they wrap any fp32 panel source
// (IPanelA / IPanelB, GemmPanels.cs) and round its packed panel to bf16 right after it is packed,
// so the driver, its threading and every operand form (transposes, bf16/fp16/4-bit weights, LoRA's
// K-concatenations, dropout masks) are shared with fp32 compute.
//   Round:  p ← bf16(p) kept in fp32 (the low 16 bits zero): the managed fallback, whose fp32 FMA
//           of two bf16 values is exact (8 + 8 significant bits), so only the sums round, in fp32.
//   Pairs:  the panel [kc][w] (w = MR or NR) is rewritten in place as ⌈kc/2⌉ rows of w 32-bit words
//           word[q·w + i] = bf16(p[2q][i]) | bf16(p[2q+1][i]) << 16 (an odd kc pads a zero row): the
//           layout of vdpbf16ps / AMX, read by the native micro-kernels (Bf16Kernels.cs). In place is
//           safe: pair q writes bytes [4qw, 4(q+1)w), which pair q read itself (q = 0, each vector
//           loaded before it is stored) or which earlier pairs already consumed (q ≥ 1).
//   Direct: plain fp32 and bf16 sources (and LoRA's K-concatenations of them) are packed straight into
//           the pair layout in one pass (Bf16PairPack.cs; fp32 K-contiguous rows by the native
//           peft_bf16_pack_pairs), bit for bit the same words (Bf16PackTests, Bf16PairPackTests).
// Rounding is to nearest, ties to even; NaN stays NaN (quiet bit set), as Bf16.FromSingle.
// The small-m GEMV methods of IPanelB are never reached: GemmDriver sends m ≤ 4 to fp32 unwrapped.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using PeftKernels.Kernels.Native;

namespace PeftKernels.Kernels.Cpu;

/// <summary>In-place bf16 rounding of packed panels (fp32 containers or bf16 pairs).</summary>
internal static unsafe class Bf16Round
{
    /// <summary>The bits of bf16(x) widened back to fp32 (low 16 bits zero).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Bits(uint u) => (uint)Bf16.FromSingle(BitConverter.UInt32BitsToSingle(u)) << 16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Bits(Vector512<uint> u)
    {
        var rounded = u + Vector512.Create(0x7FFFu) + ((u >> 16) & Vector512<uint>.One);
        var nan = Vector512.GreaterThan(u & Vector512.Create(0x7FFFFFFFu), Vector512.Create(0x7F800000u));
        return Vector512.ConditionalSelect(nan, u | Vector512.Create(0x00400000u), rounded) & Vector512.Create(0xFFFF0000u);
    }

    /// <summary>p[i] ← bf16(p[i]) for i &lt; count, kept in fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InPlace(float* p, long count)
    {
        uint* u = (uint*)p;
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i + 16 <= count; i += 16)
            {
                Bits(Vector512.Load(u + i)).Store(u + i);
            }
        }

        for (; i < count; i++)
        {
            u[i] = Bits(u[i]);
        }
    }

    /// <summary>Rewrites the panel p [kc][width] in place as ⌈kc/2⌉ rows of width bf16-pair words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ToPairs(float* p, int kc, int width)
    {
        uint* u = (uint*)p;
        int pairs = (kc + 1) / 2;
        for (int q = 0; q < pairs; q++)
        {
            uint* row0 = u + ((long)2 * q * width);
            uint* row1 = 2 * q + 1 < kc ? row0 + width : null;
            uint* dst = u + ((long)q * width);
            int i = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                for (; i + 16 <= width; i += 16)
                {
                    var lo = Bits(Vector512.Load(row0 + i)) >> 16;
                    var hi = row1 == null ? Vector512<uint>.Zero : Bits(Vector512.Load(row1 + i));
                    (lo | hi).Store(dst + i);
                }
            }

            for (; i < width; i++)
            {
                uint lo = Bits(row0[i]) >> 16;
                uint hi = row1 == null ? 0u : Bits(row1[i]);
                dst[i] = lo | hi;
            }
        }
    }
}

/// <summary>op(A) rounded to bf16 after packing (fp32 containers): the managed bf16 path.</summary>
internal readonly unsafe struct Bf16RoundA<TA>(TA inner) : IPanelA
    where TA : struct, IPanelA
{
    public void Pack(float* dst, int i0, int rows, int p0, int kc, int mr)
    {
        inner.Pack(dst, i0, rows, p0, kc, mr);
        Bf16Round.InPlace(dst, (long)kc * mr);
    }
}

/// <summary>op(A) packed as bf16 pairs along K: the native bf16 path (plain row-major fp32 A in one native pass).</summary>
internal readonly unsafe struct Bf16PairA<TA>(TA inner) : IPanelA
    where TA : struct, IPanelA
{
    public void Pack(float* dst, int i0, int rows, int p0, int kc, int mr) => Bf16PairPack.PackA(inner, dst, i0, rows, p0, kc, mr);
}

/// <summary>op(B) rounded to bf16 (fp32 containers, <paramref name="pairs"/> false) or packed as bf16 pairs along K.</summary>
internal readonly unsafe struct Bf16B<TB>(TB inner, bool pairs) : IPanelB
    where TB : struct, IPanelB
{
    public bool CanDot => false;

    public bool CanAxpy => false;

    public void Pack(float* dst, int j0, int cols, int p0, int kc, int nr, long stripStride)
    {
        if (pairs)
        {
            Bf16PairPack.PackB(inner, dst, j0, cols, p0, kc, nr, stripStride);
            return;
        }

        int strips = (cols + nr - 1) / nr;
        inner.Pack(dst, j0, cols, p0, kc, nr, stripStride);
        for (int t = 0; t < strips; t++)
        {
            Bf16Round.InPlace(dst + (t * stripStride), (long)kc * nr);
        }
    }

    public void PrepareDot(float* a, int lda, int m) => throw Unreachable();

    public void DotAdd(int j, float* a, int lda, int m, SimdPath path, float* result) => throw Unreachable();

    public void DotAddPair(int j, float* a, SimdPath path, float* result) => throw Unreachable();

    public void AxpyAdd(float* a, int lda, int m, int j0, int j1, int pStart, int pEnd, float* acc, int ldacc, SimdPath path) =>
        throw Unreachable();

    private static InvalidOperationException Unreachable() =>
        new("bf16 compute has no GEMV path: the driver sends m ≤ 4 rows to fp32 compute.");
}
