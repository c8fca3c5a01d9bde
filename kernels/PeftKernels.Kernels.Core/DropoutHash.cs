// The LoRA-branch dropout mask, regenerated from (seed, storage index of x) instead of stored:
//   keep(i) ⇔ (splitmix64(seed + i·φ) >> 40) ≥ round(p·2²⁴),   φ = 0x9E3779B97F4A7C15
// kept values are scaled by 1/(1 − p). One implementation for the CPU kernels (DropoutMask) and the
// GPU kernels (GpuDropout, which call Keep inside ILGPU kernels: a static method on plain integers,
// no allocation, no managed references). DropoutReference recomputes it independently (a test pins them equal).
using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels;

/// <summary>The seeded, stateless dropout hash of the LoRA branch.</summary>
internal static class DropoutHash
{
    /// <summary>round(p·2²⁴): a value is kept when its 24-bit hash is at least this.</summary>
    public static uint Threshold(float p) => (uint)Math.Round((double)p * (1 << 24));

    /// <summary>1/(1 − p) rounded to fp32 for p &gt; 0, else 1.</summary>
    public static float KeepScale(float p) => p > 0 ? (float)(1.0 / (1.0 - p)) : 1f;

    /// <summary>True when the element at storage index <paramref name="index"/> is kept.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Keep(ulong seed, uint threshold, long index)
    {
        ulong z = seed + ((ulong)index * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (uint)(z >> 40) >= threshold;
    }
}
