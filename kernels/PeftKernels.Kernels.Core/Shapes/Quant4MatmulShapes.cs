// Shape checks of the 4-bit base matmul y = x·dequant(w)ᵀ + bias and its backward dx = dy·dequant(w),
// called by the CPU kernel (Quant4Matmul) and the GPU launcher (Quant4MatmulKernels); WeightShape is
// also the 4-bit weight check of QLoraMatmul and DoraNorm on both devices.
// Shapes: x [n, in], w [out, in] (4-bit, its own shape), bias [out] or empty, y [n, out], dy [n, out], dx [n, in].
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the 4-bit matmul, shared by the CPU kernel and the GPU launcher.</summary>
internal static class Quant4MatmulShapes
{
    /// <summary>A 4-bit weight must be [outFeatures, inFeatures].</summary>
    public static void WeightShape(ReadOnlySpan<int> shape, int inFeatures, int outFeatures)
    {
        if (shape.Length != 2 || shape[0] != outFeatures || shape[1] != inFeatures)
        {
            throw new ArgumentException($"w has shape [{string.Join(", ", shape.ToArray())}]; expected [{outFeatures}, {inFeatures}] ([outFeatures, inFeatures]).", "w");
        }
    }

    public static void Dims(ReadOnlySpan<int> wShape, int n, int inFeatures, int outFeatures)
    {
        Check.NonNegative(n, "n");
        Check.Positive(inFeatures, "inFeatures");
        Check.Positive(outFeatures, "outFeatures");
        WeightShape(wShape, inFeatures, outFeatures);
    }

    public static void Forward(ReadOnlySpan<int> wShape, long x, long bias, long y, int n, int inFeatures, int outFeatures)
    {
        Dims(wShape, n, inFeatures, outFeatures);
        Check.Length("x", x, (long)n * inFeatures, "n·inFeatures");
        Check.LengthOrEmpty("bias", bias, outFeatures, "outFeatures, or empty");
        Check.Length("y", y, (long)n * outFeatures, "n·outFeatures");
    }

    public static void Backward(ReadOnlySpan<int> wShape, long dy, long dx, int n, int inFeatures, int outFeatures)
    {
        Dims(wShape, n, inFeatures, outFeatures);
        Check.Length("dy", dy, (long)n * outFeatures, "n·outFeatures");
        Check.Length("dx", dx, (long)n * inFeatures, "n·inFeatures");
    }
}
