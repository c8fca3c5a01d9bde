// Device math helpers shared by the kernels.
//  - MulRn / AddRn: one IEEE-rounded fp32 product / sum. Plain a*b + c may be contracted into an
//    FMA by ptxas (PTX mul/add without a rounding modifier allow it), which changes the last bit;
//    where the CPU kernel promises "no FMA" (AdamW, nested absmax), the GPU emits mul.rn/add.rn.
//  - WarpSum / WarpMax: xor-butterfly over the 32 lanes; every lane ends with the same value
//    (fp32 addition is commutative, so each lane adds the same pairs), in a fixed order.
//  - GpuDropout: the LoRA-branch mask around the shared DropoutHash (the CPU kernels' function),
//    keep ⇔ (splitmix64(seed + index·φ) >> 40) ≥ threshold.
using System.Runtime.CompilerServices;
using ILGPU.Runtime.Cuda;

namespace PeftKernels.Kernels.Gpu;

internal static class GpuMath
{
    public const int WarpSize = 32;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MulRn(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("mul.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }

        return a * b;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float AddRn(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("add.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }

        return a + b;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SubRn(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("sub.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }

        return a - b;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DivRn(float a, float b)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("div.rn.f32 %0, %1, %2;", out float r, a, b);
            return r;
        }

        return a / b;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SqrtRn(float a)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("sqrt.rn.f32 %0, %1;", out float r, a);
            return r;
        }

        return MathF.Sqrt(a);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WarpSum(float value)
    {
        for (int delta = WarpSize / 2; delta > 0; delta >>= 1)
        {
            value += Warp.ShuffleXor(value, delta);
        }

        return value;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WarpMax(float value)
    {
        for (int delta = WarpSize / 2; delta > 0; delta >>= 1)
        {
            value = MathF.Max(value, Warp.ShuffleXor(value, delta));
        }

        return value;
    }

    /// <summary>
    /// Sum over the group (blockDim.x = warps·32, at most 32 warps) in a fixed tree: warp sums, then
    /// the first warp sums the per-warp partials. Every thread gets the result. Uses <paramref name="scratch"/>
    /// (≥ 32 floats) and two barriers, so all threads of the group must call it.
    /// </summary>
    public static float GroupSum(float value, ArrayView<float> scratch)
    {
        value = WarpSum(value);
        int warps = Group.DimX / WarpSize;
        if (Warp.LaneIdx == 0)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();
        float total = Warp.LaneIdx < warps ? scratch[Warp.LaneIdx] : 0f;
        total = WarpSum(total);
        Group.Barrier();
        return total;
    }

    /// <summary>Maximum over the group, as <see cref="GroupSum"/> (same calling rules).</summary>
    public static float GroupMax(float value, ArrayView<float> scratch)
    {
        value = WarpMax(value);
        int warps = Group.DimX / WarpSize;
        if (Warp.LaneIdx == 0)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();
        float total = Warp.LaneIdx < warps ? scratch[Warp.LaneIdx] : float.NegativeInfinity;
        total = WarpMax(total);
        Group.Barrier();
        return total;
    }
}

/// <summary>The seeded dropout mask of the LoRA branch (same function as DropoutMask / DropoutReference).</summary>
internal readonly struct GpuDropout
{
    public readonly ulong Seed;
    public readonly uint Threshold;
    public readonly float KeepScale;
    public readonly int ActiveFlag; // kernel parameters must be blittable: no bool fields

    public GpuDropout(float p, ulong seed)
    {
        Seed = seed;
        ActiveFlag = p > 0 ? 1 : 0;
        Threshold = DropoutHash.Threshold(p);
        KeepScale = DropoutHash.KeepScale(p);
    }

    public bool Active => ActiveFlag != 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Keep(long index) => DropoutHash.Keep(Seed, Threshold, index);

    /// <summary>drop(value) for the element at storage index <paramref name="index"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Apply(float value, long index) => !Active ? value : Keep(index) ? value * KeepScale : 0f;
}
