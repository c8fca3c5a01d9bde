// SwiGLU gate of the Llama MLP, element-wise over flat spans of one length (e.g. [n, intermediate]):
//   σ(z) = 1 / (1 + exp(−z)),   silu(z) = z·σ(z),   y = silu(gate) ⊙ up
// Backward, g = dL/dy (chain rule; silu'(z) = σ(z) + z·σ(z)·(1 − σ(z)) = σ(z)·(1 + z·(1 − σ(z)))):
//   dgate = g ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate)))
//   dup   = g ⊙ silu(gate)
// exp is Vector512/Vector256.Exp on the vector paths and MathF.Exp on the scalar path (each within a
// few ulp), so σ, silu and silu' are within a few fp32 ulp of exact, except that silu' loses relative
// accuracy near its root z ≈ −1.278 (1 + z·(1 − σ) cancels; the absolute error stays a few ulp of 1).
// Large |z| never gives NaN: exp(−z) over/underflows to ∞/0, so σ = 0 or 1 exactly; the two products
// that would be 0·∞ there (z·σ at z = −∞, z·(1 − σ) at z = +∞) are selected to their limits, 0.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace PeftKernels.Kernels.Cpu;

/// <summary>SwiGLU (silu(gate) ⊙ up) forward and backward on the CPU.</summary>
public static unsafe class SwiGlu
{
    private const int ParallelThreshold = 32 * 1024;

    /// <summary>y = silu(gate) ⊙ up, element-wise; all spans have one length.</summary>
    public static void Forward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y, KernelOptions options = default)
    {
        int count = gate.Length;
        Check.Length("up", up.Length, count, "gate.Length");
        Check.Length("y", y.Length, count, "gate.Length");
        if (count == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = Parts(count, threads);
        fixed (float* pg = gate, pu = up, py = y)
        {
            float* gs = pg, us = pu, ys = py;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, part);
                ForwardRun(gs + i0, us + i0, ys + i0, i1 - i0, path);
            });
        }
    }

    /// <summary>dgate = dy ⊙ up ⊙ silu'(gate) and dup = dy ⊙ silu(gate), element-wise; all spans have one length.</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> gate, ReadOnlySpan<float> up,
        Span<float> dgate, Span<float> dup, KernelOptions options = default)
    {
        int count = dy.Length;
        Check.Length("gate", gate.Length, count, "dy.Length");
        Check.Length("up", up.Length, count, "dy.Length");
        Check.Length("dgate", dgate.Length, count, "dy.Length");
        Check.Length("dup", dup.Length, count, "dy.Length");
        if (count == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = Parts(count, threads);
        fixed (float* pdy = dy, pg = gate, pu = up, pdg = dgate, pdu = dup)
        {
            float* dys = pdy, gs = pg, us = pu, dgs = pdg, dus = pdu;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, part);
                BackwardRun(dys + i0, gs + i0, us + i0, dgs + i0, dus + i0, i1 - i0, path);
            });
        }
    }

    private static int Parts(int count, int threads) =>
        count < ParallelThreshold ? 1 : Math.Min(threads, count / (ParallelThreshold / 2));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ForwardRun(float* gate, float* up, float* y, int count, SimdPath path)
    {
        int i = path switch
        {
            SimdPath.Vector512 => ForwardRun<Vector512<float>, V512>(gate, up, y, count),
            SimdPath.Vector256 => ForwardRun<Vector256<float>, V256>(gate, up, y, count),
            _ => 0,
        };

        for (; i < count; i++)
        {
            float z = gate[i];
            float s = 1f / (1f + MathF.Exp(-z));
            y[i] = (s == 0f ? 0f : z * s) * up[i];
        }
    }

    /// <summary>The forward over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int ForwardRun<TV, T>(float* gate, float* up, float* y, int count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, i = 0;
        TV one = T.Splat(1f);
        for (; i <= count - w; i += w)
        {
            TV z = T.Load(gate + i);
            TV s = T.Div(one, T.Add(one, T.ExpBcl(T.Neg(z))));
            TV silu = T.ZeroWhereZero(s, T.Mul(z, s));
            T.Store(y + i, T.Mul(silu, T.Load(up + i)));
        }

        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardRun(float* dy, float* gate, float* up, float* dgate, float* dup, int count, SimdPath path)
    {
        int i = path switch
        {
            SimdPath.Vector512 => BackwardRun<Vector512<float>, V512>(dy, gate, up, dgate, dup, count),
            SimdPath.Vector256 => BackwardRun<Vector256<float>, V256>(dy, gate, up, dgate, dup, count),
            _ => 0,
        };

        for (; i < count; i++)
        {
            float z = gate[i], g = dy[i];
            float s = 1f / (1f + MathF.Exp(-z));
            float q = 1f - s;
            float silu = s == 0f ? 0f : z * s;
            float dsilu = s == 0f ? 0f : s * (1f + (q == 0f ? 0f : z * q));
            dgate[i] = g * up[i] * dsilu;
            dup[i] = g * silu;
        }
    }

    /// <summary>The backward over the whole vectors; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int BackwardRun<TV, T>(float* dy, float* gate, float* up, float* dgate, float* dup, int count)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, i = 0;
        TV one = T.Splat(1f);
        for (; i <= count - w; i += w)
        {
            TV z = T.Load(gate + i), g = T.Load(dy + i);
            TV s = T.Div(one, T.Add(one, T.ExpBcl(T.Neg(z))));
            TV q = T.Sub(one, s);
            TV silu = T.ZeroWhereZero(s, T.Mul(z, s));
            TV zq = T.ZeroWhereZero(q, T.Mul(z, q));
            TV dsilu = T.ZeroWhereZero(s, T.Mul(s, T.Add(one, zq)));
            T.Store(dgate + i, T.Mul(T.Mul(g, T.Load(up + i)), dsilu));
            T.Store(dup + i, T.Mul(g, silu));
        }

        return i;
    }
}
