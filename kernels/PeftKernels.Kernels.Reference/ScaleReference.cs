// Scaling by one scalar in double: y = s·x; backward dx = s·g, ds = Σ g·x.
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision scalar scaling: the specification of Functional.Scale.</summary>
public static class ScaleReference
{
    /// <summary>y = s·x.</summary>
    public static double[] Forward(double[] x, double s) => x.Select(v => s * v).ToArray();

    /// <summary>(dx, ds) for the output gradient g.</summary>
    public static (double[] Dx, double Ds) Backward(double[] g, double[] x, double s) =>
        (g.Select(v => s * v).ToArray(), g.Select((v, i) => v * x[i]).Sum());
}
