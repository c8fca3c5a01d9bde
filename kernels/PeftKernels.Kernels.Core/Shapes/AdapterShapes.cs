// Shape checks shared by the LoRA-family ops (LoraMatmulShapes, LoraBranchShapes, QLoraMatmulShapes
// through LoraMatmulShapes, DoraNormShapes): the features and rank of a low-rank adapter, its matrices
// a [rank, in] and b [out, rank], and a backward's dy [n, out] with x [n, in] (x may be empty only
// when da is: dx = dy·…·a and db do not read x).
namespace PeftKernels.Kernels;

/// <summary>Argument checks of a low-rank adapter's dims and matrices, shared by the LoRA-family shape checks.</summary>
internal static class AdapterShapes
{
    /// <summary>inFeatures, outFeatures and rank are > 0.</summary>
    public static void Features(int inFeatures, int outFeatures, int rank) =>
        Check.Positive((inFeatures, "inFeatures"), (outFeatures, "outFeatures"), (rank, "rank"));

    /// <summary>a is [rank, inFeatures] and b [outFeatures, rank].</summary>
    public static void Matrices(long a, long b, int inFeatures, int outFeatures, int rank)
    {
        Check.Length("a", a, (long)rank * inFeatures, "rank·inFeatures");
        Check.Length("b", b, (long)outFeatures * rank, "outFeatures·rank");
    }

    /// <summary>A backward's dy is [n, outFeatures]; x is [n, inFeatures] unless both x and da are empty.</summary>
    public static void BackwardInputs(long dy, long x, long da, int n, int inFeatures, int outFeatures)
    {
        Check.Length("dy", dy, (long)n * outFeatures, "n·outFeatures");
        if (da != 0 || x != 0)
        {
            Check.Length("x", x, (long)n * inFeatures, "n·inFeatures (x may be empty only when da is empty)");
        }
    }
}
