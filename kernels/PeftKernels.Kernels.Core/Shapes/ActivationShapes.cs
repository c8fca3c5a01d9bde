// Shape checks of the bottleneck non-linearity y = f(z) (element-wise), called by the CPU kernel (Activation)
// and the GPU launcher (ActivationKernels): y as long as z (forward); g and dz as long as z (backward).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the bottleneck activation, shared by the CPU kernel and the GPU launcher.</summary>
internal static class ActivationShapes
{
    public static void Forward(long z, long y) => Check.Length("y", y, z, "z.Length");

    public static void Backward(long g, long z, long dz)
    {
        Check.Length("g", g, z, "z.Length");
        Check.Length("dz", dz, z, "z.Length");
    }
}
