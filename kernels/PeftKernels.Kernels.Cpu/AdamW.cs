// AdamW (torch.optim.AdamW, decoupled weight decay), one fused pass over flat parameter spans
// param, grad, m, v (all one length); t = step ≥ 1. Per element, in fp32, in exactly this order:
//   p ← p·(1 − lr·wd)                        torch's param.mul_(1 − lr·weight_decay); 1 − lr·wd in double, rounded
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g·g
//   p ← p − (lr/bc1) · (m / (sqrt(v)/sqrt(bc2) + eps)),   bc1 = 1 − β1^t, bc2 = 1 − β2^t
// The scalars (1 − lr·wd, 1 − β1, 1 − β2, lr/bc1, sqrt(bc2)) are computed in double and rounded to fp32
// once. The vector and scalar paths apply the same correctly rounded IEEE operations (no FMA), so they
// agree bit for bit, for any thread count.
// SumOfSquares (for global-norm gradient clipping): Σ x² accumulated in double, the input cut into fixed
// blocks of BlockSize elements; each block is summed in double vector lanes (fp32 widened), and the block
// sums are added in block order, so the result is the same for any thread count.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Coefficients = PeftKernels.Kernels.AdamWCoefficients;

namespace PeftKernels.Kernels.Cpu;

/// <summary>Fused AdamW step and the helpers of gradient clipping, on the CPU.</summary>
public static unsafe class AdamW
{
    private const int ParallelThreshold = 32 * 1024;
    private const int BlockSize = 16 * 1024;

    /// <summary>One AdamW step (torch.optim.AdamW semantics) updating <paramref name="param"/>, <paramref name="m"/> and <paramref name="v"/> in place.</summary>
    /// <param name="param">Parameters, updated in place.</param>
    /// <param name="grad">Gradient, same length.</param>
    /// <param name="m">First moment (exp_avg), updated in place; zeros before step 1.</param>
    /// <param name="v">Second moment (exp_avg_sq), updated in place; zeros before step 1.</param>
    /// <param name="lr">Learning rate, ≥ 0.</param>
    /// <param name="beta1">First-moment decay in [0, 1).</param>
    /// <param name="beta2">Second-moment decay in [0, 1).</param>
    /// <param name="eps">Added to the denominator, &gt; 0.</param>
    /// <param name="weightDecay">Decoupled weight decay, ≥ 0.</param>
    /// <param name="step">1-based step number t (the count including this step).</param>
    /// <param name="options">Threads and SIMD path.</param>
    public static void Step(Span<float> param, ReadOnlySpan<float> grad, Span<float> m, Span<float> v, float lr, float beta1,
        float beta2, float eps, float weightDecay, int step, KernelOptions options = default)
    {
        int count = param.Length;
        AdamWShapes.Step(count, grad.Length, m.Length, v.Length);
        var k = Coefficients.Create(lr, beta1, beta2, eps, weightDecay, step);
        if (count == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int parts = count < ParallelThreshold ? 1 : Math.Min(threads, count / (ParallelThreshold / 2));
        fixed (float* pp = param, pg = grad, pm = m, pv = v)
        {
            float* ps = pp, gs = pg, ms = pm, vs = pv;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, part);
                StepRun(ps + i0, gs + i0, ms + i0, vs + i0, i1 - i0, k, path);
            });
        }
    }

    /// <summary>Σ x² in double (for the global gradient norm), the same for any thread count.</summary>
    public static double SumOfSquares(ReadOnlySpan<float> x, KernelOptions options = default)
    {
        if (x.Length == 0)
        {
            return 0;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int count = x.Length;
        int blocks = (count + BlockSize - 1) / BlockSize;
        int parts = count < ParallelThreshold ? 1 : Math.Min(threads, blocks);
        fixed (float* px = x)
        {
            if (parts == 1)
            {
                double total = 0;
                for (int b = 0; b < blocks; b++)
                {
                    int start = b * BlockSize;
                    total += BlockSumOfSquares(px + start, Math.Min(BlockSize, count - start), path);
                }

                return total;
            }

            var sums = new double[blocks];
            float* xs = px;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (b0, b1) = CpuParallel.Split(blocks, parts, part);
                for (int b = b0; b < b1; b++)
                {
                    int start = b * BlockSize;
                    sums[b] = BlockSumOfSquares(xs + start, Math.Min(BlockSize, count - start), path);
                }
            });

            double sum = 0;
            foreach (double s in sums)
            {
                sum += s;
            }

            return sum;
        }
    }

    /// <summary>x ← factor · x (e.g. gradient clipping by the global norm).</summary>
    public static void Scale(Span<float> x, float factor, KernelOptions options = default)
    {
        if (x.Length == 0)
        {
            return;
        }

        var path = options.ResolvePath();
        int threads = options.ResolveThreads();
        int count = x.Length;
        int parts = count < ParallelThreshold ? 1 : Math.Min(threads, count / (ParallelThreshold / 2));
        fixed (float* px = x)
        {
            float* xs = px;
            CpuParallel.For(parts, threads, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (part) =>
            {
                var (i0, i1) = CpuParallel.Split(count, parts, part);
                ScaleRun(xs + i0, i1 - i0, factor, path);
            });
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void StepRun(float* p, float* g, float* m, float* v, int count, Coefficients k, SimdPath path)
    {
        int i = path switch
        {
            SimdPath.Vector512 => StepRun<Vector512<float>, V512>(p, g, m, v, count, k),
            SimdPath.Vector256 => StepRun<Vector256<float>, V256>(p, g, m, v, count, k),
            _ => 0,
        };

        for (; i < count; i++)
        {
            float gi = g[i];
            float pi = p[i] * k.Decay;
            float mi = (k.Beta1 * m[i]) + (k.OneMinusBeta1 * gi);
            float vi = (k.Beta2 * v[i]) + (k.OneMinusBeta2 * gi * gi);
            pi -= k.StepSize * (mi / ((MathF.Sqrt(vi) / k.SqrtBc2) + k.Eps));
            m[i] = mi;
            v[i] = vi;
            p[i] = pi;
        }
    }

    /// <summary>The step over the whole vectors, the scalar path's operations lane by lane; returns where they end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int StepRun<TV, T>(float* p, float* g, float* m, float* v, int count, Coefficients k)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, i = 0;
        TV decay = T.Splat(k.Decay), b1 = T.Splat(k.Beta1), c1 = T.Splat(k.OneMinusBeta1);
        TV b2 = T.Splat(k.Beta2), c2 = T.Splat(k.OneMinusBeta2);
        TV stepSize = T.Splat(k.StepSize), sqrtBc2 = T.Splat(k.SqrtBc2), eps = T.Splat(k.Eps);
        for (; i <= count - w; i += w)
        {
            TV gi = T.Load(g + i);
            TV pi = T.Mul(T.Load(p + i), decay);
            TV mi = T.Add(T.Mul(b1, T.Load(m + i)), T.Mul(c1, gi));
            TV vi = T.Add(T.Mul(b2, T.Load(v + i)), T.Mul(T.Mul(c2, gi), gi));
            pi = T.Sub(pi, T.Mul(stepSize, T.Div(mi, T.Add(T.Div(T.Sqrt(vi), sqrtBc2), eps))));
            T.Store(m + i, mi);
            T.Store(v + i, vi);
            T.Store(p + i, pi);
        }

        return i;
    }

    private static double BlockSumOfSquares(float* x, int count, SimdPath path) => WideSums.SumOfSquares(x, count, path);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScaleRun(float* x, int count, float factor, SimdPath path)
    {
        int i = path switch
        {
            SimdPath.Vector512 => ScaleRun<Vector512<float>, V512>(x, count, factor),
            SimdPath.Vector256 => ScaleRun<Vector256<float>, V256>(x, count, factor),
            _ => 0,
        };

        for (; i < count; i++)
        {
            x[i] *= factor;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int ScaleRun<TV, T>(float* x, int count, float factor)
        where TV : unmanaged
        where T : struct, IVec<TV>
    {
        int w = T.Width, i = 0;
        var f = T.Splat(factor);
        for (; i <= count - w; i += w)
        {
            T.Store(x + i, T.Mul(T.Load(x + i), f));
        }

        return i;
    }
}
