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
        SwiGluShapes.Forward(count, up.Length, y.Length);
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

    /// <summary>
    /// dgate = dy ⊙ up ⊙ silu'(gate) and dup = dy ⊙ silu(gate), element-wise; all spans have one length. Each element of dy,
    /// gate and up is read before the same element of dgate and dup is written, so dgate may share gate's storage and dup up's.
    /// </summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> gate, ReadOnlySpan<float> up,
        Span<float> dgate, Span<float> dup, KernelOptions options = default)
    {
        int count = dy.Length;
        SwiGluShapes.Backward(count, gate.Length, up.Length, dgate.Length, dup.Length);
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

    // ForwardRun and BackwardRun keep one loop per width instead of one body over IVec<TV>: written
    // over IVec (T.ExpBcl → Vector512.Exp), the JIT no longer inlines the runtime's exp (VectorMath.ExpSingle)
    // into the loop but calls it, twice per vector, and that callee starts at tier 0. Measured
    // 2026-12-06 (docs/bench-results/2026-12-06/simd-abstraction.md): SwiGluBench.Backward, Threads=1,
    // --job short, two interleaved rounds: 1648 / 1470 us with these copies, 2480 / 2899 us generic; a
    // Stopwatch loop (min of 200) gave Backward 970 vs 1638 us and Forward 728 vs 2402 us.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ForwardRun(float* gate, float* up, float* y, int count, SimdPath path)
    {
        int i = 0;
        if (path == SimdPath.Vector512)
        {
            Vector512<float> one = Vector512.Create(1f);
            for (; i <= count - 16; i += 16)
            {
                Vector512<float> z = Vector512.Load(gate + i);
                Vector512<float> s = one / (one + Vector512.Exp(-z));
                Vector512<float> silu = Vector512.ConditionalSelect(Vector512.Equals(s, Vector512<float>.Zero), Vector512<float>.Zero, z * s);
                (silu * Vector512.Load(up + i)).Store(y + i);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            Vector256<float> one = Vector256.Create(1f);
            for (; i <= count - 8; i += 8)
            {
                Vector256<float> z = Vector256.Load(gate + i);
                Vector256<float> s = one / (one + Vector256.Exp(-z));
                Vector256<float> silu = Vector256.ConditionalSelect(Vector256.Equals(s, Vector256<float>.Zero), Vector256<float>.Zero, z * s);
                (silu * Vector256.Load(up + i)).Store(y + i);
            }
        }

        for (; i < count; i++)
        {
            float z = gate[i];
            float s = 1f / (1f + MathF.Exp(-z));
            y[i] = (s == 0f ? 0f : z * s) * up[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BackwardRun(float* dy, float* gate, float* up, float* dgate, float* dup, int count, SimdPath path)
    {
        int i = 0;
        if (path == SimdPath.Vector512)
        {
            Vector512<float> one = Vector512.Create(1f), zero = Vector512<float>.Zero;
            for (; i <= count - 16; i += 16)
            {
                Vector512<float> z = Vector512.Load(gate + i), g = Vector512.Load(dy + i);
                Vector512<float> s = one / (one + Vector512.Exp(-z));
                Vector512<float> sZero = Vector512.Equals(s, zero), q = one - s;
                Vector512<float> silu = Vector512.ConditionalSelect(sZero, zero, z * s);
                Vector512<float> zq = Vector512.ConditionalSelect(Vector512.Equals(q, zero), zero, z * q);
                Vector512<float> dsilu = Vector512.ConditionalSelect(sZero, zero, s * (one + zq));
                (g * Vector512.Load(up + i) * dsilu).Store(dgate + i);
                (g * silu).Store(dup + i);
            }
        }
        else if (path == SimdPath.Vector256)
        {
            Vector256<float> one = Vector256.Create(1f), zero = Vector256<float>.Zero;
            for (; i <= count - 8; i += 8)
            {
                Vector256<float> z = Vector256.Load(gate + i), g = Vector256.Load(dy + i);
                Vector256<float> s = one / (one + Vector256.Exp(-z));
                Vector256<float> sZero = Vector256.Equals(s, zero), q = one - s;
                Vector256<float> silu = Vector256.ConditionalSelect(sZero, zero, z * s);
                Vector256<float> zq = Vector256.ConditionalSelect(Vector256.Equals(q, zero), zero, z * q);
                Vector256<float> dsilu = Vector256.ConditionalSelect(sZero, zero, s * (one + zq));
                (g * Vector256.Load(up + i) * dsilu).Store(dgate + i);
                (g * silu).Store(dup + i);
            }
        }

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
}
