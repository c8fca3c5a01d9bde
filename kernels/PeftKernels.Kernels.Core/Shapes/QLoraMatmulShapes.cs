// Shape checks of QLoRA (the fused LoRA linear over a 4-bit base weight), called by the CPU kernel
// (QLoraMatmul) and the GPU launcher (QLoraMatmulKernels): the LoRA matmul's checks with w's element
// count, then the 4-bit weight's own shape [outFeatures, inFeatures].
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the QLoRA matmul, shared by the CPU kernel and the GPU launcher.</summary>
internal static class QLoraMatmulShapes
{
    public static void Forward(ReadOnlySpan<int> wShape, long wCount, long x, long bias, long a, long b, long y, long h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulShapes.Forward(x, wCount, bias, a, b, y, h, n, inFeatures, outFeatures, rank, options);
        Quant4MatmulShapes.WeightShape(wShape, inFeatures, outFeatures);
    }

    public static void Backward(ReadOnlySpan<int> wShape, long wCount, long dy, long x, long h, long a, long b, long dx, long da, long db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulShapes.Backward(dy, x, h, wCount, a, b, dx, da, db, n, inFeatures, outFeatures, rank, options);
        Quant4MatmulShapes.WeightShape(wShape, inFeatures, outFeatures);
    }
}
