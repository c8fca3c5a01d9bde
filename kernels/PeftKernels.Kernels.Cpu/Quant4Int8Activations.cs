// The activation side of the integer 4-bit GEMV on the Vector512 path, vectorized: one row of x
// quantized per chunk of 32 to int8, chunk pairs interleaved as the native and managed 512-bit rows
// read them (Quant4Int8Gemv.QuantizeRows: evens of c, evens of c + 1, odds of c, odds of c + 1):
//   max = max_i |x_i| over the chunk, sx = max / 127 (0 for an all-zero chunk),
//   q_i = round_to_even(x_i · (127 / max)) as int8 (|q_i| ≤ 127, so the narrowing is exact).
// The same fp32 products and the same rounding as the scalar loop, so q and sx are equal bit for bit
// (Quant4Int8ActivationsTests); the max is order-independent for finite values, and a row with a NaN
// is left to the scalar loop (whose NaN scale keeps the product's output non-finite).
// Why: the scalar loop (an index computation and a MathF.Round per element) took ~3 µs for 768 values
// and ~8 µs for 2048; a decode token quantizes 49 inputs on the calling thread, outside the parallel
// GEMV (session 13, docs/performance.md).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Vectorized int8 quantization of activation chunk pairs (the Vector512 layout of the integer 4-bit GEMV).</summary>
internal static unsafe class Quant4Int8Activations
{
    /// <summary>True when <see cref="Pairs"/> can run (AVX-512F).</summary>
    public static bool IsSupported => Avx512F.IsSupported;

    /// <summary>
    /// Chunks [0, 2·⌊chunks / 2⌋) of one row: <paramref name="x"/> the row's first element, <paramref name="q"/> its int8
    /// output (pair-interleaved), <paramref name="sx"/> its chunk scales. Returns false, having written nothing
    /// meaningful, when the row holds a NaN (the caller then runs the scalar loop on the whole row).
    /// </summary>
    public static bool Pairs(float* x, sbyte* q, float* sx, int chunks)
    {
        var even = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        var odd = even + Vector512<int>.One;
        for (int c = 0; c + 1 < chunks; c += 2)
        {
            float* p = x + (c * Quant4Int8Gemv.Chunk);
            var a0 = Vector512.Load(p);
            var a1 = Vector512.Load(p + 16);
            var b0 = Vector512.Load(p + 32);
            var b1 = Vector512.Load(p + 48);
            if (!(Vector512.EqualsAll(a0, a0) && Vector512.EqualsAll(a1, a1) && Vector512.EqualsAll(b0, b0) && Vector512.EqualsAll(b1, b1)))
            {
                return false;
            }

            var (qa0, qa1) = Chunk(a0, a1, out sx[c]);
            var (qb0, qb1) = Chunk(b0, b1, out sx[c + 1]);
            sbyte* d = q + (c * Quant4Int8Gemv.Chunk);
            Avx512F.ConvertToVector128SByte(Avx512F.PermuteVar16x32x2(qa0, even, qa1)).Store(d);
            Avx512F.ConvertToVector128SByte(Avx512F.PermuteVar16x32x2(qb0, even, qb1)).Store(d + 16);
            Avx512F.ConvertToVector128SByte(Avx512F.PermuteVar16x32x2(qa0, odd, qa1)).Store(d + 32);
            Avx512F.ConvertToVector128SByte(Avx512F.PermuteVar16x32x2(qb0, odd, qb1)).Store(d + 48);
        }

        return true;
    }

    /// <summary>One chunk (elements 0..15 in v0, 16..31 in v1): its scale, and q in element order as int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector512<int>, Vector512<int>) Chunk(Vector512<float> v0, Vector512<float> v1, out float scale)
    {
        var m = Vector512.Max(Vector512.Abs(v0), Vector512.Abs(v1));
        var m4 = Vector128.Max(Vector256.Max(m.GetLower(), m.GetUpper()).GetLower(), Vector256.Max(m.GetLower(), m.GetUpper()).GetUpper());
        float max = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
        float inverse = max == 0f ? 0f : 127f / max;
        scale = max == 0f ? 0f : max / 127f;
        var k = Vector512.Create(inverse);
        return (Vector512.ConvertToInt32(Vector512.Round(v0 * k)), Vector512.ConvertToInt32(Vector512.Round(v1 * k)));
    }
}
