// Vector helpers of 4-bit dequantization. Eight packed bytes hold 16 codes, first element
// in the high nibble: bytes are duplicated pairwise (b0 b0 b1 b1 …), zero-extended to 32-bit
// lanes, shifted right by 4 in even lanes and 0 in odd lanes and masked to 4 bits. The
// 16-entry code table lives in one 512-bit register and a lane permute is the lookup
// (Vector256: two 8-entry permutes and a blend on bit 3).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

internal static unsafe class Quant4Simd
{
    private static readonly Vector128<byte> DuplicateBytes = Vector128.Create((byte)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    private static readonly Vector512<uint> Shifts512 = Vector512.Create(4u, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    private static readonly Vector256<uint> Shifts256 = Vector256.Create(4u, 0, 4, 0, 4, 0, 4, 0);

    /// <summary>The 16 codes of the 8 bytes at <paramref name="p"/>, looked up in <paramref name="table"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Decode16(byte* p, Vector512<float> table)
    {
        var bytes = Ssse3.Shuffle(Vector128.CreateScalar(*(ulong*)p).AsByte(), DuplicateBytes);
        var lanes = Avx512F.ConvertToVector512UInt32(bytes);
        var index = Avx512F.ShiftRightLogicalVariable(lanes, Shifts512) & Vector512.Create(15u);
        return Avx512F.PermuteVar16x32(table, index.AsInt32());
    }

    /// <summary>The 8 codes of the 4 bytes at <paramref name="p"/>, looked up in the table halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Decode8(byte* p, Vector256<float> tableLo, Vector256<float> tableHi)
    {
        var bytes = Ssse3.Shuffle(Vector128.CreateScalar(*(uint*)p).AsByte(), DuplicateBytes);
        var lanes = Avx2.ConvertToVector256Int32(bytes).AsUInt32();
        var index = Avx2.ShiftRightLogicalVariable(lanes, Shifts256) & Vector256.Create(15u);
        var lo = Avx2.PermuteVar8x32(tableLo, index.AsInt32());
        var hi = Avx2.PermuteVar8x32(tableHi, index.AsInt32());
        return Avx.BlendVariable(lo, hi, Vector256.GreaterThan(index, Vector256.Create(7u)).AsSingle());
    }

    /// <summary>
    /// dst[q] = table[code(e0 + q)] · absmax[(e0 + q) / blocksize] for q &lt; count: a contiguous run of
    /// the flattened weight, vectorised over whole byte pairs inside each block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeRun(byte* packed, float* absmax, float[] table, int blocksize, long e0, int count, float* dst, SimdPath path)
    {
        long e = e0, end = e0 + count;
        Vector512<float> t512 = default;
        Vector256<float> tLo = default, tHi = default;
        if (path == SimdPath.Vector512)
        {
            t512 = Vector512.Create(table);
        }
        else if (path == SimdPath.Vector256)
        {
            tLo = Vector256.Create(table, 0);
            tHi = Vector256.Create(table, 8);
        }

        while (e < end)
        {
            long block = e / blocksize;
            long segmentEnd = Math.Min(end, (block + 1) * blocksize);
            float scale = absmax[block];
            for (; e < segmentEnd && ((e & 1) != 0 || path == SimdPath.Scalar || segmentEnd - e < 16); e++)
            {
                int code = (e & 1) == 0 ? packed[e >> 1] >> 4 : packed[e >> 1] & 0xF;
                dst[e - e0] = table[code] * scale;
            }

            if (path == SimdPath.Vector512)
            {
                var s = Vector512.Create(scale);
                for (; e + 16 <= segmentEnd; e += 16)
                {
                    (Decode16(packed + (e >> 1), t512) * s).Store(dst + (e - e0));
                }
            }
            else if (path == SimdPath.Vector256)
            {
                var s = Vector256.Create(scale);
                for (; e + 8 <= segmentEnd; e += 8)
                {
                    (Decode8(packed + (e >> 1), tLo, tHi) * s).Store(dst + (e - e0));
                }
            }

            for (; e < segmentEnd; e++)
            {
                int code = (e & 1) == 0 ? packed[e >> 1] >> 4 : packed[e >> 1] & 0xF;
                dst[e - e0] = table[code] * scale;
            }
        }
    }
}
