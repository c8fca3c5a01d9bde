using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace PeftKernels.Kernels.Cpu;

/// <summary>bf16 (upper half of an fp32, stored as <see cref="ushort"/>) conversions.</summary>
public static class Bf16
{
    /// <summary>Widens one bf16 value (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Rounds to the nearest bf16, ties to even; NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((u >> 16) | 0x40);
        }

        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }

    /// <summary>Rounds every element of <paramref name="source"/> to bf16.</summary>
    public static void FromSingle(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length != source.Length)
        {
            throw new ArgumentException($"destination length must equal source length: expected {source.Length}, got {destination.Length}.", nameof(destination));
        }

        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = FromSingle(source[i]);
        }
    }

    /// <summary>Widens 16 bf16 values at <paramref name="p"/> to one Vector512 (vpmovzxwd from memory, then a 16-bit shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector512<float> Load512(ushort* p) =>
        Avx512F.IsSupported ? Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512UInt32(Vector256.Load(p)), 16).AsSingle()
        : Vector512.ShiftLeft(Vector512.WidenLower(Vector512.Create(Vector256.Load(p), Vector256<ushort>.Zero)), 16).AsSingle();

    /// <summary>Widens 8 bf16 values at <paramref name="p"/> to one Vector256 (vpmovzxwd from memory, then a 16-bit shift).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe Vector256<float> Load256(ushort* p) =>
        Avx2.IsSupported ? Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(Vector128.Load(p)).AsUInt32(), 16).AsSingle()
        : Vector256.ShiftLeft(Vector256.WidenLower(Vector256.Create(Vector128.Load(p), Vector128<ushort>.Zero)), 16).AsSingle();
}
