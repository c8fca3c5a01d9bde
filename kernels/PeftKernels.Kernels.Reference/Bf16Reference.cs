// bf16 is the upper half of an IEEE fp32: widening is a 16-bit left shift, narrowing rounds
// the discarded half to nearest-even (NaN stays a quiet NaN). This is the bit-level
// specification the CPU and GPU kernels are checked against.
namespace PeftKernels.Kernels.Reference;

/// <summary>bf16 ⇄ fp32 conversions, bit-exact specification.</summary>
public static class Bf16Reference
{
    /// <summary>Widens a bf16 bit pattern to fp32 (exact).</summary>
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Rounds an fp32 to the nearest bf16 (ties to even); NaN maps to a quiet NaN.</summary>
    public static ushort FromSingle(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((u >> 16) | 0x40);
        }

        uint rounding = 0x7FFF + ((u >> 16) & 1);
        return (ushort)((u + rounding) >> 16);
    }
}
