// Shape checks of the fused LoRA linear, called by the CPU kernels (LoraMatmul, QLoraMatmul) and
// the GPU launchers (LoraMatmulKernels, QLoraMatmulKernels), so both reject a bad argument with the
// same message. Shapes, row-major: x [n, in], w [out, in], bias [out] or empty, a [r, in],
// b [out, r], h [n, r], y [n, out]; backward dy [n, out], dx [n, in] or empty (skipped),
// da [r, in] or empty (LoRA-FA), db [out, r]; x may be empty only when da is; dropout p in [0, 1).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the LoRA matmul, shared by the CPU kernels and the GPU launchers.</summary>
internal static class LoraMatmulShapes
{
    public static void Dims(int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        Check.NonNegative(n, "n");
        AdapterShapes.Features(inFeatures, outFeatures, rank);
        Check.Require(options.Dropout >= 0f && options.Dropout < 1f, nameof(options), $"dropout must be in [0, 1), got {options.Dropout}.");
    }

    public static void Forward(long x, long w, long bias, long a, long b, long y, long h,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        Dims(n, inFeatures, outFeatures, rank, options);
        Check.Length("x", x, (long)n * inFeatures, "n·inFeatures");
        Check.Length("w", w, (long)outFeatures * inFeatures, "outFeatures·inFeatures");
        Check.LengthOrEmpty("bias", bias, outFeatures, "outFeatures, or empty");
        AdapterShapes.Matrices(a, b, inFeatures, outFeatures, rank);
        Check.Length("y", y, (long)n * outFeatures, "n·outFeatures");
        Check.Length("h", h, (long)n * rank, "n·rank");
    }

    public static void Backward(long dy, long x, long h, long w, long a, long b, long dx, long da, long db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        Dims(n, inFeatures, outFeatures, rank, options);
        AdapterShapes.BackwardInputs(dy, x, da, n, inFeatures, outFeatures);
        Check.Length("h", h, (long)n * rank, "n·rank");
        Check.Length("w", w, (long)outFeatures * inFeatures, "outFeatures·inFeatures");
        AdapterShapes.Matrices(a, b, inFeatures, outFeatures, rank);
        Check.LengthOrEmpty("dx", dx, (long)n * inFeatures, "n·inFeatures, or empty to skip");
        Check.LengthOrEmpty("da", da, (long)rank * inFeatures, "rank·inFeatures, or empty to skip (LoRA-FA)");
        Check.Length("db", db, (long)outFeatures * rank, "outFeatures·rank");
    }
}
