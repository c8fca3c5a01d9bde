// Shape checks of DoRA's row norms ‖w + s·b·a‖ per output row, called by the CPU kernel (DoraNorm)
// and the GPU launcher (DoraNormKernels). Shapes: w [out, in] (fp32/bf16/fp16 or 4-bit), a [r, in],
// b [out, r], norms [out].
namespace PeftKernels.Kernels;

/// <summary>Argument checks of DoRA's row norms, shared by the CPU kernel and the GPU launcher.</summary>
internal static class DoraNormShapes
{
    public static void RowNorms(long w, long a, long b, long norms, int inFeatures, int outFeatures, int rank)
    {
        AdapterShapes.Features(inFeatures, outFeatures, rank);
        Check.Length("w", w, (long)outFeatures * inFeatures, "outFeatures·inFeatures");
        AdapterShapes.Matrices(a, b, inFeatures, outFeatures, rank);
        Check.Length("norms", norms, outFeatures, "outFeatures");
    }
}
