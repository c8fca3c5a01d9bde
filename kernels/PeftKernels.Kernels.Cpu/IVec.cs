// The SIMD width abstraction of the CPU kernels. A loop body is written once over IVec<TV>, as a
// generic method constrained on T : struct, IVec<TV>; the JIT compiles it once per struct type
// argument, so every member below inlines to the intrinsic of that width with no indirection:
//   V512 : Vector512<float> (AVX-512F), V256 : Vector256<float> (AVX2), V1 : float (one lane, no intrinsics).
// A kernel keeps its own scalar tail and picks the width from its SimdPath:
//   if (path == SimdPath.Vector512) j = Body<Vector512<float>, V512>(...); else if (path == SimdPath.Vector256) ...
// Each member is one operation, in the order it is written, so a body over IVec performs exactly the
// operations of the hand-written Vector512/Vector256 loops it replaced (same results bit for bit).
// IWidenVec adds the double lanes that hold a float vector's squares exactly (the sums of squares
// of AdamW's gradient-norm and DoRA's column norms).
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>One SIMD width over float lanes: the operations the kernels' vector loops are written with.</summary>
internal unsafe interface IVec<TV>
    where TV : unmanaged
{
    /// <summary>Lanes per vector (16, 8 or 1).</summary>
    static abstract int Width { get; }

    /// <summary>True when the ISA has 32 vector registers (room for a 4 × 4 accumulator block).</summary>
    static abstract bool Has32Registers { get; }

    static abstract TV Load(float* p);

    /// <summary>Width elements of a stored weight (fp32 or bf16 bits), widened to fp32 by <typeparamref name="TL"/>.</summary>
    static abstract TV LoadWidened<TE, TL>(TE* p)
        where TE : unmanaged
        where TL : IWidenLoad<TE>;

    static abstract void Store(float* p, TV v);

    static abstract TV Splat(float x);

    /// <summary>a·b + c, rounded once.</summary>
    static abstract TV Fma(TV a, TV b, TV c);

    static abstract TV Add(TV a, TV b);

    static abstract TV Sub(TV a, TV b);

    static abstract TV Mul(TV a, TV b);

    static abstract TV Div(TV a, TV b);

    static abstract TV Sqrt(TV a);

    /// <summary>The native maximum (MaxNative: which operand a NaN or a ±0 pair yields is the ISA's choice).</summary>
    static abstract TV Max(TV a, TV b);

    /// <summary>The IEEE 754:2019 maximum (Vector.Max, MathF.Max): NaN propagates, +0 &gt; −0.</summary>
    static abstract TV MaxIeee(TV a, TV b);

    /// <summary>The fast clamped exp (Cody–Waite reduction, degree-5 polynomial; see ExpPolynomial).</summary>
    static abstract TV Exp(TV x);

    /// <summary>The runtime's exp (Vector512.Exp, Vector256.Exp, MathF.Exp): a few ulp, no clamp, slower than <see cref="Exp"/>.</summary>
    static abstract TV ExpBcl(TV x);

    /// <summary>The sum of the lanes (Vector.Sum's order).</summary>
    static abstract float Sum(TV v);

    static abstract float MaxAcross(TV v);

    /// <summary>Lane <paramref name="i"/>.</summary>
    static abstract float Lane(TV v, int i);

    /// <summary>v with the lanes from <paramref name="count"/> on replaced by <paramref name="fill"/>.</summary>
    static abstract TV KeepFirst(TV v, int count, float fill);
}

/// <summary>A float width with the double lanes its two halves widen to exactly.</summary>
internal interface IWidenVec<TV, TD> : IVec<TV>
    where TV : unmanaged
    where TD : unmanaged
{
    static abstract TD WidenLower(TV v);

    static abstract TD WidenUpper(TV v);

    /// <summary>a·b + c in double lanes, rounded once.</summary>
    static abstract TD FmaF64(TD a, TD b, TD c);

    static abstract TD AddF64(TD a, TD b);

    static abstract double SumF64(TD v);
}
