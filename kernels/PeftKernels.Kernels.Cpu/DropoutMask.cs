using System.Runtime.CompilerServices;

namespace PeftKernels.Kernels.Cpu;

// The LoRA-branch dropout mask of the CPU kernels: (seed, threshold, 1/(1 − p)) around the
// shared DropoutHash (keep ⇔ (splitmix64(seed + index·φ) >> 40) ≥ round(p·2²⁴)), the same
// function the GPU kernels use. DropoutReference recomputes it (a test pins them equal).
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
        Threshold = DropoutHash.Threshold(p);
        KeepScale = DropoutHash.KeepScale(p);
    }

    public static DropoutMask None => default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Keep(long index) => DropoutHash.Keep(Seed, Threshold, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float value, long index) => Keep(index) ? value * KeepScale : 0f;
}
