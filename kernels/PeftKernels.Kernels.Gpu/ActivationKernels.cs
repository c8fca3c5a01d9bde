// The bottleneck adapters' non-linearity on the GPU (Activation.cs on the CPU; docs/formats/bottleneck-adapters.md),
// element-wise over views of one length:
//   relu(z) = max(z, 0)                 relu'(z) = [z > 0]
//   silu(z) = z·σ(z)  ("swish")         silu'(z) = σ(z)·(1 + z·(1 − σ(z)))   (±∞: 1 / 0, as the CPU)
//   tanh(z)                             tanh'(z) = 1 − tanh(z)²
// Backward (chain rule, g = dL/dy): dz = g ⊙ f'(z). One thread per element. exp and tanh are the device's
// (CUDA libdevice, a few ulp; .NET MathF on the CPU accelerator), so results agree with the CPU to a few ulp.
namespace PeftKernels.Kernels.Gpu;

/// <summary>The bottleneck non-linearity (<see cref="ActivationKind"/>) forward and backward on an ILGPU accelerator.</summary>
public static class ActivationKernels
{
    /// <summary>y = f(z), element-wise; both views have one length. Enqueues only.</summary>
    public static void Forward(Accelerator accelerator, ActivationKind kind, FloatView z, FloatView y)
    {
        GpuCheck.NotNull(accelerator);
        ActivationShapes.Forward(z.Length, y.Length);
        GpuCheck.FitsInt(z.Length, nameof(z));
        if (z.Length != 0)
        {
            Loaded.For(accelerator).Forward((int)z.Length, z, y, (int)kind);
        }
    }

    /// <summary>dz = g ⊙ f'(z), element-wise; all views have one length. Enqueues only.</summary>
    public static void Backward(Accelerator accelerator, ActivationKind kind, FloatView g, FloatView z, FloatView dz)
    {
        GpuCheck.NotNull(accelerator);
        ActivationShapes.Backward(g.Length, z.Length, dz.Length);
        GpuCheck.FitsInt(z.Length, nameof(z));
        if (z.Length != 0)
        {
            Loaded.For(accelerator).Backward((int)z.Length, g, z, dz, (int)kind);
        }
    }

    internal static void ForwardKernel(Index1D i, FloatView z, FloatView y, int kind)
    {
        float v = z[i];
        y[i] = kind == (int)ActivationKind.Relu ? (v > 0f ? v : 0f)
            : kind == (int)ActivationKind.Silu ? v * (1f / (1f + MathF.Exp(-v)))
            : MathF.Tanh(v);
    }

    internal static void BackwardKernel(Index1D i, FloatView g, FloatView z, FloatView dz, int kind)
    {
        float v = z[i];
        float d;
        if (kind == (int)ActivationKind.Relu)
        {
            d = v > 0f ? 1f : 0f;
        }
        else if (kind == (int)ActivationKind.Silu)
        {
            float s = 1f / (1f + MathF.Exp(-v));
            d = float.IsInfinity(v) ? (v > 0f ? 1f : 0f) : s * (1f + (v * (1f - s)));
        }
        else
        {
            float th = MathF.Tanh(v);
            d = 1f - (th * th);
        }

        dz[i] = g[i] * d;
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, int> Forward;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int> Backward;

        private Loaded(Accelerator a)
        {
            Forward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int>(ForwardKernel);
            Backward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int>(BackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
