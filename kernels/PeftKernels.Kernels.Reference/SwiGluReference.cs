// SwiGLU in double, element-wise: σ(z) = 1/(1 + exp(−z)), silu(z) = z·σ(z), y = silu(gate)·up.
// Backward, g = dL/dy: dgate = g·up·σ(gate)·(1 + gate·(1 − σ(gate))), dup = g·silu(gate).
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision SwiGLU forward/backward: the specification of SwiGlu.</summary>
public static class SwiGluReference
{
    /// <summary>y = silu(gate)·up in double.</summary>
    public static double[] Forward(double[] gate, double[] up) =>
        gate.Select((z, i) => z * Sigmoid(z) * up[i]).ToArray();

    /// <summary>Backward in double: returns dgate and dup.</summary>
    public static (double[] Dgate, double[] Dup) Backward(double[] dy, double[] gate, double[] up)
    {
        var dgate = new double[gate.Length];
        var dup = new double[gate.Length];
        for (int i = 0; i < gate.Length; i++)
        {
            double s = Sigmoid(gate[i]);
            dgate[i] = dy[i] * up[i] * s * (1 + (gate[i] * (1 - s)));
            dup[i] = dy[i] * gate[i] * s;
        }

        return (dgate, dup);
    }

    private static double Sigmoid(double z) => 1.0 / (1.0 + Math.Exp(-z));
}
