// Element loaders that widen a stored weight to fp32 in registers: one generic kernel body
// serves fp32 and bf16 (bit patterns) weights, specialised by the JIT per loader type.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

internal unsafe interface IWidenLoad<T>
    where T : unmanaged
{
    static abstract Vector512<float> Load512(T* p);

    static abstract Vector256<float> Load256(T* p);

    static abstract float Load(T* p);
}

internal readonly unsafe struct Fp32Load : IWidenLoad<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(float* p) => *p;
}

internal readonly unsafe struct Bf16Load : IWidenLoad<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load512(ushort* p) => Bf16.Load512(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load256(ushort* p) => Bf16.Load256(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(ushort* p) => Bf16.ToSingle(*p);
}
