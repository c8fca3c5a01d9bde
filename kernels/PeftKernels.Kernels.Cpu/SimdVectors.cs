// The IVec widths: V512 (Vector512<float>, AVX-512F), V256 (Vector256<float>, AVX2) and V1 (plain float,
// the scalar path, no intrinsics). Every member is one intrinsic, inlined into the generic bodies.
// Fast vector exp (Exp; the BCL's Vector512.Exp, ExpBcl here, costs ~2 ns an element, as much as the
// products of an attention tile):
//   x clamped to [−87.3, 88.3] (e^−87.3 ≈ 1e−38: a softmax term that small is 0 next to the
//   row's max term 1; a NaN stays NaN, so a NaN shift such as a NaN lse gives NaN), n = round(x·log₂e), r = x − n·ln2 in two FMA steps (Cody–Waite,
//   |r| ≤ ln2/2), e^r = 1 + r + r²·P(r) with the degree-5 Cephes expf polynomial, and
//   e^x = 2ⁿ·e^r by adding n to the exponent bits. Error ≤ 2 ulp over the clamped range.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>The constants of the fast exp (<see cref="IVec{TV}.Exp"/>).</summary>
internal static class ExpPolynomial
{
    public const float ExpMin = -87.33f, ExpMax = 88.3f, Log2E = 1.44269504f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    public const float P0 = 1.9875691500e-4f, P1 = 1.3981999507e-3f, P2 = 8.3334519073e-3f, P3 = 4.1665795894e-2f,
        P4 = 1.6666665459e-1f, P5 = 5.0000001201e-1f;
}

/// <summary>512-bit vectors, 16 float lanes.</summary>
internal readonly unsafe struct V512 : IWidenVec<Vector512<float>, Vector512<double>>
{
    public static int Width => 16;

    public static bool Has32Registers => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LoadWidened<TE, TL>(TE* p)
        where TE : unmanaged
        where TL : IWidenLoad<TE> => TL.Load512(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector512<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Splat(float x) => Vector512.Create(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sub(Vector512<float> a, Vector512<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Mul(Vector512<float> a, Vector512<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Div(Vector512<float> a, Vector512<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sqrt(Vector512<float> a) => Vector512.Sqrt(a);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.MaxNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MaxIeee(Vector512<float> a, Vector512<float> b) => Vector512.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        // The clamp keeps a NaN: x86's max/min return their second operand when either is NaN (Arm's return NaN).
        x = Vector512.MinNative(Vector512.Create(ExpPolynomial.ExpMax), Vector512.MaxNative(Vector512.Create(ExpPolynomial.ExpMin), x));
        var n = Vector512.Round(x * Vector512.Create(ExpPolynomial.Log2E));
        var r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-ExpPolynomial.Ln2Hi), x);
        r = Vector512.FusedMultiplyAdd(n, Vector512.Create(-ExpPolynomial.Ln2Lo), r);
        var p = Vector512.FusedMultiplyAdd(Vector512.Create(ExpPolynomial.P0), r, Vector512.Create(ExpPolynomial.P1));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(ExpPolynomial.P2));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(ExpPolynomial.P3));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(ExpPolynomial.P4));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(ExpPolynomial.P5));
        var e = Vector512.FusedMultiplyAdd(p, r * r, r) + Vector512<float>.One;
        return (e.AsInt32() + Vector512.ShiftLeft(Vector512.ConvertToInt32Native(n), 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ExpBcl(Vector512<float> x) => Vector512.Exp(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector512<float> v) => Vector512.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(Vector512<float> v) => V256.MaxAcross(Vector256.MaxNative(v.GetLower(), v.GetUpper()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Lane(Vector512<float> v, int i) => v.GetElement(i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> KeepFirst(Vector512<float> v, int count, float fill) =>
        Vector512.ConditionalSelect(Vector512.LessThan(Vector512<int>.Indices, Vector512.Create(count)).AsSingle(), v, Vector512.Create(fill));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> WidenLower(Vector512<float> v) => Vector512.WidenLower(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> WidenUpper(Vector512<float> v) => Vector512.WidenUpper(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> FmaF64(Vector512<double> a, Vector512<double> b, Vector512<double> c) => Vector512.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> AddF64(Vector512<double> a, Vector512<double> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumF64(Vector512<double> v) => Vector512.Sum(v);
}

/// <summary>256-bit vectors, 8 float lanes.</summary>
internal readonly unsafe struct V256 : IWidenVec<Vector256<float>, Vector256<double>>
{
    public static int Width => 8;

    public static bool Has32Registers => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LoadWidened<TE, TL>(TE* p)
        where TE : unmanaged
        where TL : IWidenLoad<TE> => TL.Load256(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector256<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Splat(float x) => Vector256.Create(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sub(Vector256<float> a, Vector256<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Mul(Vector256<float> a, Vector256<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Div(Vector256<float> a, Vector256<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sqrt(Vector256<float> a) => Vector256.Sqrt(a);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.MaxNative(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MaxIeee(Vector256<float> a, Vector256<float> b) => Vector256.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> x)
    {
        // The clamp keeps a NaN: x86's max/min return their second operand when either is NaN (Arm's return NaN).
        x = Vector256.MinNative(Vector256.Create(ExpPolynomial.ExpMax), Vector256.MaxNative(Vector256.Create(ExpPolynomial.ExpMin), x));
        var n = Vector256.Round(x * Vector256.Create(ExpPolynomial.Log2E));
        var r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-ExpPolynomial.Ln2Hi), x);
        r = Vector256.FusedMultiplyAdd(n, Vector256.Create(-ExpPolynomial.Ln2Lo), r);
        var p = Vector256.FusedMultiplyAdd(Vector256.Create(ExpPolynomial.P0), r, Vector256.Create(ExpPolynomial.P1));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(ExpPolynomial.P2));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(ExpPolynomial.P3));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(ExpPolynomial.P4));
        p = Vector256.FusedMultiplyAdd(p, r, Vector256.Create(ExpPolynomial.P5));
        var e = Vector256.FusedMultiplyAdd(p, r * r, r) + Vector256<float>.One;
        return (e.AsInt32() + Vector256.ShiftLeft(Vector256.ConvertToInt32Native(n), 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ExpBcl(Vector256<float> x) => Vector256.Exp(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> v) => Vector256.Sum(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(Vector256<float> v)
    {
        var m = Vector128.MaxNative(v.GetLower(), v.GetUpper());
        return MathF.Max(MathF.Max(m.GetElement(0), m.GetElement(1)), MathF.Max(m.GetElement(2), m.GetElement(3)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Lane(Vector256<float> v, int i) => v.GetElement(i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> KeepFirst(Vector256<float> v, int count, float fill) =>
        Vector256.ConditionalSelect(Vector256.LessThan(Vector256<int>.Indices, Vector256.Create(count)).AsSingle(), v, Vector256.Create(fill));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> WidenLower(Vector256<float> v) => Vector256.WidenLower(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> WidenUpper(Vector256<float> v) => Vector256.WidenUpper(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> FmaF64(Vector256<double> a, Vector256<double> b, Vector256<double> c) => Vector256.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> AddF64(Vector256<double> a, Vector256<double> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumF64(Vector256<double> v) => Vector256.Sum(v);
}

/// <summary>One float "lane": the scalar path written as a vector body.</summary>
internal readonly unsafe struct V1 : IVec<float>
{
    public static int Width => 1;

    public static bool Has32Registers => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load(float* p) => *p;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadWidened<TE, TL>(TE* p)
        where TE : unmanaged
        where TL : IWidenLoad<TE> => TL.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, float v) => *p = v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Splat(float x) => x;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fma(float a, float b, float c) => (a * b) + c;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Add(float a, float b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sub(float a, float b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Mul(float a, float b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Div(float a, float b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sqrt(float a) => MathF.Sqrt(a);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Max(float a, float b) => MathF.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxIeee(float a, float b) => MathF.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x) => MathF.Exp(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ExpBcl(float x) => MathF.Exp(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float MaxAcross(float v) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Lane(float v, int i) => v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float KeepFirst(float v, int count, float fill) => count > 0 ? v : fill;
}
