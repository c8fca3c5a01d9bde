using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

// The LoRA-branch dropout mask, regenerated from (seed, storage index of x) instead of
// stored: keep ⇔ (splitmix64(seed + index·φ) >> 40) ≥ round(p·2²⁴); kept values are scaled
// by 1/(1 − p). Same function as DropoutReference (a test pins them equal).
internal readonly struct DropoutMask
{
    public readonly ulong Seed;
    public readonly uint Threshold;
    public readonly float KeepScale;
    public readonly bool Active;

    public DropoutMask(float p, ulong seed)
    {
        Seed = seed;
        Active = p > 0;
        Threshold = (uint)Math.Round((double)p * (1 << 24));
        KeepScale = Active ? (float)(1.0 / (1.0 - p)) : 1f;
    }

    public static DropoutMask None => default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Keep(long index)
    {
        ulong z = Seed + ((ulong)index * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (uint)(z >> 40) >= Threshold;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float value, long index) => Keep(index) ? value * KeepScale : 0f;
}
