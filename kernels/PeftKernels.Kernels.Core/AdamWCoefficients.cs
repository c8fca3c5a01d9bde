// The per-step scalars of AdamW (torch.optim.AdamW, decoupled weight decay), computed once on the
// host for the CPU kernel (AdamW.Step) and the GPU kernel (AdamWKernels.Step), which then apply, per
// element in fp32 and in this order:
//   p ← p·Decay;  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g·g;  p ← p − StepSize · m / (sqrt(v)/SqrtBc2 + eps)
// with Decay = 1 − lr·wd, StepSize = lr/(1 − β1^t), SqrtBc2 = sqrt(1 − β2^t), each computed in double
// and rounded to fp32 once, so both devices start from the same fp32 scalars (bit-identical steps).
// Create also checks the hyper-parameters, with the same messages on both devices.
namespace PeftKernels.Kernels;

/// <summary>The fp32 scalars of one AdamW step (blittable: passed to GPU kernels as is).</summary>
internal readonly record struct AdamWCoefficients(float Decay, float Beta1, float OneMinusBeta1, float Beta2, float OneMinusBeta2,
    float StepSize, float SqrtBc2, float Eps)
{
    /// <summary>Checks the hyper-parameters and computes the scalars of step <paramref name="step"/> (1-based).</summary>
    public static AdamWCoefficients Create(float lr, float beta1, float beta2, float eps, float weightDecay, int step)
    {
        Check.Require(lr >= 0f && float.IsFinite(lr), nameof(lr), $"lr must be finite and >= 0, got {lr}.");
        Check.Require(beta1 >= 0f && beta1 < 1f, nameof(beta1), $"beta1 must be in [0, 1), got {beta1}.");
        Check.Require(beta2 >= 0f && beta2 < 1f, nameof(beta2), $"beta2 must be in [0, 1), got {beta2}.");
        Check.Require(eps > 0f && float.IsFinite(eps), nameof(eps), $"eps must be finite and > 0, got {eps}.");
        Check.Require(weightDecay >= 0f && float.IsFinite(weightDecay), nameof(weightDecay), $"weightDecay must be finite and >= 0, got {weightDecay}.");
        Check.Require(step >= 1, nameof(step), $"step must be >= 1 (1-based), got {step}.");
        return new AdamWCoefficients(
            Decay: (float)(1.0 - ((double)lr * weightDecay)),
            Beta1: beta1,
            OneMinusBeta1: (float)(1.0 - beta1),
            Beta2: beta2,
            OneMinusBeta2: (float)(1.0 - beta2),
            StepSize: (float)(lr / (1.0 - Math.Pow(beta1, step))),
            SqrtBc2: (float)Math.Sqrt(1.0 - Math.Pow(beta2, step)),
            Eps: eps);
    }
}
