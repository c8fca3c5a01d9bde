// AdamW (torch.optim.AdamW, decoupled weight decay) on the GPU: one fused element-wise pass over
// param, grad, m, v (one length); t = step ≥ 1. Per element, in fp32, in exactly AdamW.cs's order:
//   p ← p·(1 − lr·wd)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g·g
//   p ← p − (lr/bc1) · (m / (sqrt(v)/sqrt(bc2) + eps)),   bc1 = 1 − β1^t, bc2 = 1 − β2^t
// The scalars are computed in double on the host and rounded once (as the CPU kernel does); every
// operation is an IEEE-rounded mul/add/div/sqrt (mul.rn, add.rn, div.rn, sqrt.rn on CUDA: no FMA
// contraction), so the GPU step is bit-identical to the CPU step.
// Gradient clipping: SumOfSquares = Σ x² in double (x widened, as the CPU kernel does): a grid of
// G = min(⌈count / (256·16)⌉, 256) groups of 256 threads, thread (g, l) summing x[i] for
// i ≡ g·256 + l (mod 256·G) in ascending order, its group's first thread adding the 256 thread sums
// in lane order (one barrier), and the group partials added on the host in group order: the
// order depends on the length only, so the result
// is deterministic (it differs from the CPU's block order by double rounding only, ~1e-16
// relative). Scale: x ← factor·x, an IEEE-rounded multiply (bit-identical to the CPU).
using Coefficients = PeftKernels.Kernels.AdamWCoefficients;

namespace PeftKernels.Kernels.Gpu;

/// <summary>Fused AdamW step on an ILGPU accelerator.</summary>
public static class AdamWKernels
{
    /// <summary>One AdamW step (torch semantics) updating <paramref name="param"/>, <paramref name="m"/> and <paramref name="v"/> in place.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="param">Parameters, updated in place.</param>
    /// <param name="grad">Gradient, same length.</param>
    /// <param name="m">First moment, updated in place; zeros before step 1.</param>
    /// <param name="v">Second moment, updated in place; zeros before step 1.</param>
    /// <param name="lr">Learning rate, ≥ 0.</param>
    /// <param name="beta1">First-moment decay in [0, 1).</param>
    /// <param name="beta2">Second-moment decay in [0, 1).</param>
    /// <param name="eps">Added to the denominator, &gt; 0.</param>
    /// <param name="weightDecay">Decoupled weight decay, ≥ 0.</param>
    /// <param name="step">1-based step number t.</param>
    public static void Step(Accelerator accelerator, FloatView param, FloatView grad, FloatView m, FloatView v, float lr, float beta1,
        float beta2, float eps, float weightDecay, int step)
    {
        GpuCheck.NotNull(accelerator);
        long count = param.Length;
        AdamWShapes.Step(count, grad.Length, m.Length, v.Length);
        GpuCheck.FitsInt(count, nameof(param));
        var k = Coefficients.Create(lr, beta1, beta2, eps, weightDecay, step);
        if (count == 0)
        {
            return;
        }

        GpuKernelCache.Get(accelerator, static a => new Loaded(a)).Step((int)count, param, grad, m, v, k);
    }

    /// <summary>Σ x² accumulated in double (deterministic for a given length); waits once for the result.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">The values (a gradient).</param>
    public static double SumOfSquares(Accelerator accelerator, FloatView x)
    {
        using var partials = accelerator.Rent<double>(SumOfSquaresPartials(x.Length));
        SumOfSquaresInto(accelerator, x, partials.View);
        return SumPartials(GpuLaunch.ForHostValue(partials.View));
    }

    /// <summary>How many partial sums <see cref="SumOfSquaresInto"/> writes for <paramref name="count"/> values.</summary>
    public static int SumOfSquaresPartials(long count)
    {
        GpuCheck.FitsInt(count, "x");
        return count == 0 ? 0 : Math.Min(GemmTiles.Ceil((int)count, ReduceThreads * ElementsPerThread), MaxReduceGroups);
    }

    /// <summary>
    /// Queues Σ x² as <see cref="SumOfSquaresPartials"/>(x.Length) group partials into <paramref name="partials"/> (no wait):
    /// a caller measuring many tensors (the global gradient norm) fills one buffer and reads it back once.
    /// </summary>
    public static void SumOfSquaresInto(Accelerator accelerator, FloatView x, ArrayView1D<double, Stride1D.Dense> partials)
    {
        GpuCheck.NotNull(accelerator);
        int groups = SumOfSquaresPartials(x.Length);
        if (partials.Length != groups)
        {
            throw new ArgumentException($"partials has {partials.Length} elements but a sum of squares over {x.Length} values writes {groups}.", nameof(partials));
        }

        if (groups > 0)
        {
            GpuKernelCache.Get(accelerator, static a => new Loaded(a)).SumOfSquares(new KernelConfig(groups, ReduceThreads), x, partials, (int)x.Length);
        }
    }

    /// <summary>The partials of one tensor added in group order (the deterministic order of <see cref="SumOfSquares"/>).</summary>
    public static double SumPartials(ReadOnlySpan<double> partials)
    {
        double total = 0;
        foreach (double partial in partials)
        {
            total += partial;
        }

        return total;
    }

    /// <summary>x ← factor·x in place (gradient clipping by the global norm).</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">The values, scaled in place.</param>
    /// <param name="factor">The finite scale.</param>
    public static void Scale(Accelerator accelerator, FloatView x, float factor)
    {
        GpuCheck.NotNull(accelerator);
        GpuCheck.FitsInt(x.Length, nameof(x));
        Check.Require(float.IsFinite(factor), nameof(factor), $"factor must be finite, got {factor}.");
        if (x.Length != 0)
        {
            GpuKernelCache.Get(accelerator, static a => new Loaded(a)).Scale((int)x.Length, x, factor);
        }
    }

    internal const int ReduceThreads = 256;
    internal const int MaxReduceGroups = 256;
    internal const int ElementsPerThread = 16;

    internal static void SumOfSquaresKernel(FloatView x, ArrayView1D<double, Stride1D.Dense> partials, int count)
    {
        var shared = SharedMemory.Allocate<double>(ReduceThreads);
        int lane = Group.IdxX;
        double sum = 0;
        for (int i = (Grid.IdxX * ReduceThreads) + lane; i < count; i += Grid.DimX * ReduceThreads)
        {
            double xi = x[i];
            sum += xi * xi;
        }

        shared[lane] = sum;
        Group.Barrier();
        if (lane == 0)
        {
            double total = 0;
            for (int l = 0; l < ReduceThreads; l++)
            {
                total += shared[l];
            }

            partials[Grid.IdxX] = total;
        }
    }

    internal static void ScaleKernel(Index1D i, FloatView x, float factor) => x[i] = GpuMath.MulRn(x[i], factor);

    internal static void StepKernel(Index1D i, FloatView param, FloatView grad, FloatView m, FloatView v, Coefficients k)
    {
        float g = grad[i];
        float p = GpuMath.MulRn(param[i], k.Decay);
        float mi = GpuMath.AddRn(GpuMath.MulRn(k.Beta1, m[i]), GpuMath.MulRn(k.OneMinusBeta1, g));
        float vi = GpuMath.AddRn(GpuMath.MulRn(k.Beta2, v[i]), GpuMath.MulRn(GpuMath.MulRn(k.OneMinusBeta2, g), g));
        float denom = GpuMath.AddRn(GpuMath.DivRn(GpuMath.SqrtRn(vi), k.SqrtBc2), k.Eps);
        p = GpuMath.SubRn(p, GpuMath.MulRn(k.StepSize, GpuMath.DivRn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
    }

    private sealed class Loaded(Accelerator accelerator)
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, FloatView, Coefficients> Step =
            accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, FloatView, Coefficients>(StepKernel);

        public readonly Action<KernelConfig, FloatView, ArrayView1D<double, Stride1D.Dense>, int> SumOfSquares =
            accelerator.LoadStreamKernel<FloatView, ArrayView1D<double, Stride1D.Dense>, int>(SumOfSquaresKernel);

        public readonly Action<Index1D, FloatView, float> Scale = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, float>(ScaleKernel);
    }
}
