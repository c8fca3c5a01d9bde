// The bottleneck non-linearities in double: relu, silu (z·σ(z)) and tanh, with their derivatives
// relu' = [z > 0], silu' = σ(z)·(1 + z·(1 − σ(z))), tanh' = 1 − tanh². Backward: dz = g·f'(z).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision activations: the specification of Activation (names as AdapterHub spells them).</summary>
public static class ActivationReference
{
    /// <summary>y = f(z) for "relu", "silu" or "tanh".</summary>
    public static double[] Forward(string kind, double[] z) => z.Select(v => kind switch
    {
        "relu" => Math.Max(v, 0),
        "silu" => v / (1 + Math.Exp(-v)),
        "tanh" => Math.Tanh(v),
        _ => throw new ArgumentException($"unknown activation '{kind}'.", nameof(kind)),
    }).ToArray();

    /// <summary>dz = g·f'(z).</summary>
    public static double[] Backward(string kind, double[] g, double[] z) => z.Select((v, i) =>
    {
        double s = 1 / (1 + Math.Exp(-v));
        double d = kind switch
        {
            "relu" => v > 0 ? 1 : 0,
            "silu" => s * (1 + (v * (1 - s))),
            "tanh" => 1 - (Math.Tanh(v) * Math.Tanh(v)),
            _ => throw new ArgumentException($"unknown activation '{kind}'.", nameof(kind)),
        };
        return g[i] * d;
    }).ToArray();
}
