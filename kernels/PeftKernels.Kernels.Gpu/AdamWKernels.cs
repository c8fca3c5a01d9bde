// AdamW (torch.optim.AdamW, decoupled weight decay) on the GPU: one fused element-wise pass over
// param, grad, m, v (one length); t = step ≥ 1. Per element, in fp32, in exactly AdamW.cs's order:
//   p ← p·(1 − lr·wd)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g·g
//   p ← p − (lr/bc1) · (m / (sqrt(v)/sqrt(bc2) + eps)),   bc1 = 1 − β1^t, bc2 = 1 − β2^t
// The scalars are computed in double on the host and rounded once (as the CPU kernel does); every
// operation is an IEEE-rounded mul/add/div/sqrt (mul.rn, add.rn, div.rn, sqrt.rn on CUDA: no FMA
// contraction), so the GPU step is bit-identical to the CPU step.
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
        Check.Length(nameof(grad), grad.Length, count, "param.Length");
        Check.Length(nameof(m), m.Length, count, "param.Length");
        Check.Length(nameof(v), v.Length, count, "param.Length");
        GpuCheck.FitsInt(count, nameof(param));
        GpuCheck.Require(lr >= 0f && float.IsFinite(lr), nameof(lr), $"lr must be finite and >= 0, got {lr}.");
        GpuCheck.Require(beta1 >= 0f && beta1 < 1f, nameof(beta1), $"beta1 must be in [0, 1), got {beta1}.");
        GpuCheck.Require(beta2 >= 0f && beta2 < 1f, nameof(beta2), $"beta2 must be in [0, 1), got {beta2}.");
        GpuCheck.Require(eps > 0f && float.IsFinite(eps), nameof(eps), $"eps must be finite and > 0, got {eps}.");
        GpuCheck.Require(weightDecay >= 0f && float.IsFinite(weightDecay), nameof(weightDecay), $"weightDecay must be finite and >= 0, got {weightDecay}.");
        GpuCheck.Require(step >= 1, nameof(step), $"step must be >= 1 (1-based), got {step}.");
        if (count == 0)
        {
            return;
        }

        var k = new Coefficients(
            Decay: (float)(1.0 - ((double)lr * weightDecay)),
            Beta1: beta1,
            OneMinusBeta1: (float)(1.0 - beta1),
            Beta2: beta2,
            OneMinusBeta2: (float)(1.0 - beta2),
            StepSize: (float)(lr / (1.0 - Math.Pow(beta1, step))),
            SqrtBc2: (float)Math.Sqrt(1.0 - Math.Pow(beta2, step)),
            Eps: eps);
        GpuKernelCache.Get(accelerator, static a => new Loaded(a)).Step((int)count, param, grad, m, v, k);
    }

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

    internal readonly record struct Coefficients(float Decay, float Beta1, float OneMinusBeta1, float Beta2, float OneMinusBeta2,
        float StepSize, float SqrtBc2, float Eps);

    private sealed class Loaded(Accelerator accelerator)
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, FloatView, Coefficients> Step =
            accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, FloatView, Coefficients>(StepKernel);
    }
}
