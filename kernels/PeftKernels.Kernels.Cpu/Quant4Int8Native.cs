// The native inner loop of the integer 4-bit GEMV (Quant4Int8Gemv): weight rows [j0, j1) against every
// activation row through peft_q4i8_vnni_rows (native/q4_int8_kernels.c, AVX512-VNNI vpdpbusd, four
// weight rows per activation load), on the Vector512 path's data (pair-interleaved activations and
// the pairs' scale vectors). Same integers, same fp32 order as Quant4Int8Dot.Row512: bit-identical y.
// Chosen per call by KernelOptions.Int8Kernel (Auto: native where NativeQ4Int8.Available and the path
// is Vector512; Managed forces the fallback); PEFT_NATIVE=0 hides the library. Threads, packing and
// the activation quantization stay in C#. A double-quantized weight is read through its 8-bit absmax
// codes (NestedScales: 1 byte a block instead of AbsmaxFp32's 4, the fp32 value rebuilt in the kernel
// exactly as Quant4.DequantizeNested computes it), so the weight stream is ~8 % shorter.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PeftKernels.Kernels.Native;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Pointers to a double-quantized weight's absmax codes and nested scales (pinned by the caller), or none.</summary>
internal readonly unsafe struct NestedScales(byte* codes, float* nested, float offset)
{
    /// <summary>The 8-bit absmax code per block (null: the weight's absmax is plain fp32).</summary>
    public byte* Codes { get; } = codes;

    /// <summary>fp32 scale per 256 codes.</summary>
    public float* Nested { get; } = nested;

    /// <summary>Added after the product.</summary>
    public float Offset { get; } = offset;
}

internal static unsafe class Quant4Int8Native
{
    /// <summary>Quant4Codes.Dynamic in a pinned array, so the kernel can read it by pointer.</summary>
    private static readonly float[] Dynamic = PinnedDynamic();

    private static float[] PinnedDynamic()
    {
        var table = GC.AllocateArray<float>(256, pinned: true);
        Quant4Codes.Dynamic.CopyTo(table);
        return table;
    }

    /// <summary>
    /// True when the native rows run for <paramref name="requested"/> on the integer path <paramref name="path"/>;
    /// a named native kernel that cannot run throws.
    /// </summary>
    /// <exception cref="NotSupportedException">Avx512Vnni was named and cannot run here (the message says why).</exception>
    public static bool Use(Int8Kernel requested, SimdPath path)
    {
        switch (requested)
        {
            case Int8Kernel.Managed:
                return false;
            case Int8Kernel.Avx512Vnni:
                if (!NativeQ4Int8.Available)
                {
                    throw new NotSupportedException($"The AVX512-VNNI integer GEMV kernel cannot run: {NativeQ4Int8.Status}.");
                }

                return path == SimdPath.Vector512 ? true
                    : throw new NotSupportedException($"The AVX512-VNNI integer GEMV kernel needs the Vector512 SIMD path, not {path}.");
            case Int8Kernel.Auto:
                return NativeQ4Int8.Available && path == SimdPath.Vector512;
            default:
                throw new ArgumentOutOfRangeException(nameof(requested), requested, "unknown Int8Kernel.");
        }
    }

    /// <summary>y[r, j] (no bias) for j in [j0, j1), r &lt; n; sx holds the n·chunks scales, then the pairs' vectors.</summary>
    /// <remarks>With <paramref name="nested"/> codes the kernel rebuilds each block's absmax from them and ignores <paramref name="absmax"/>.</remarks>
    public static void Rows(byte* w, float* absmax, NestedScales nested, sbyte* q, float* sx, float* y, sbyte* table, int n, int inFeatures, int outFeatures,
        int blockShift, bool onePairScale, int j0, int j1)
    {
        var args = new Q4Int8Args
        {
            W = w + ((long)j0 * inFeatures / 2),
            Absmax = absmax,
            Q = q,
            Sx = sx,
            SxPairs = sx + ((long)n * (inFeatures / Quant4Int8Gemv.Chunk)),
            Y = y + j0,
            E0 = (long)j0 * inFeatures,
            Ldy = outFeatures,
            Rows = j1 - j0,
            N = n,
            In = inFeatures,
            Shift = blockShift,
            OnePairScale = onePairScale ? 1 : 0,
            Prefetch = Quant4Simd.PrefetchAhead,
            Codes = nested.Codes,
            Nested = nested.Nested,
            Dynamic = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Dynamic)),
            Offset = nested.Offset,
        };
        for (int k = 0; k < 16; k++)
        {
            args.Table[k] = table[k];
        }

        NativeQ4Int8.Rows(&args);
    }
}
