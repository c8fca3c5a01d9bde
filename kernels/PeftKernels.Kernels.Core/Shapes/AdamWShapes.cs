// Shape checks of the fused AdamW step, called by the CPU kernel (AdamW) and the GPU launcher
// (AdamWKernels): grad, m and v have as many elements as param. The hyper-parameters are checked by
// AdamWCoefficients.Create, which both call as well.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of AdamW, shared by the CPU kernel and the GPU launcher.</summary>
internal static class AdamWShapes
{
    public static void Step(long param, long grad, long m, long v)
    {
        Check.Length("grad", grad, param, "param.Length");
        Check.Length("m", m, param, "param.Length");
        Check.Length("v", v, param, "param.Length");
    }
}
