// Element-wise non-linearities of the bottleneck adapters (docs/formats/bottleneck-adapters.md):
//   relu(z) = max(z, 0)                 relu'(z) = 1 for z > 0, else 0
//   silu(z) = z·σ(z)  ("swish")         silu'(z) = σ(z)·(1 + z·(1 − σ(z)))
//   tanh(z)                             tanh'(z) = 1 − tanh(z)²
// Backward (chain rule, g = dL/dy): dz = g ⊙ f'(z). Plain scalar loops: the bottleneck is
// m = hidden / reduction_factor wide, so these spans are small next to the projections around them.
namespace PeftKernels.Kernels.Cpu;

/// <summary>A bottleneck non-linearity.</summary>
public enum ActivationKind
{
    /// <summary>max(z, 0).</summary>
    Relu,

    /// <summary>z·σ(z) (AdapterHub's "swish", torch's SiLU).</summary>
    Silu,

    /// <summary>tanh(z).</summary>
    Tanh,
}

/// <summary>Forward and backward of <see cref="ActivationKind"/> on the CPU.</summary>
public static class Activation
{
    /// <summary>y = f(z), element-wise; both spans have one length.</summary>
    public static void Forward(ActivationKind kind, ReadOnlySpan<float> z, Span<float> y)
    {
        ActivationShapes.Forward(z.Length, y.Length);
        for (int i = 0; i < z.Length; i++)
        {
            float v = z[i];
            y[i] = kind switch
            {
                ActivationKind.Relu => v > 0f ? v : 0f,
                ActivationKind.Silu => v * Sigmoid(v),
                _ => MathF.Tanh(v),
            };
        }
    }

    /// <summary>dz = g ⊙ f'(z), element-wise; all spans have one length.</summary>
    public static void Backward(ActivationKind kind, ReadOnlySpan<float> g, ReadOnlySpan<float> z, Span<float> dz)
    {
        ActivationShapes.Backward(g.Length, z.Length, dz.Length);
        for (int i = 0; i < z.Length; i++)
        {
            float v = z[i];
            float d = kind switch
            {
                ActivationKind.Relu => v > 0f ? 1f : 0f,
                ActivationKind.Silu => SiluDerivative(v),
                _ => 1f - (MathF.Tanh(v) * MathF.Tanh(v)),
            };
            dz[i] = g[i] * d;
        }
    }

    private static float Sigmoid(float v) => 1f / (1f + MathF.Exp(-v));

    private static float SiluDerivative(float v)
    {
        float s = Sigmoid(v);
        return float.IsInfinity(v) ? (v > 0 ? 1f : 0f) : s * (1f + (v * (1f - s)));
    }
}
