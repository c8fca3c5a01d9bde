// Shape checks of rotary position embedding (rotate-half), called by the CPU kernel (Rope) and the
// GPU launcher (RopeKernels). Shapes: src, dst [n, heads, headDim]; positions [n]; invFreq [headDim/2];
// headDim even. Positions ≥ 0 is checked on host data only (Positions): on the GPU they live on the
// device, and the caller checks them before upload.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of RoPE, shared by the CPU kernel and the GPU launcher.</summary>
internal static class RopeShapes
{
    public static void HeadDim(int headDim) =>
        Check.Require(headDim > 0 && headDim % 2 == 0, nameof(headDim),
            $"headDim must be even and > 0 (rotate-half pairs element j with j + headDim/2), got {headDim}.");

    /// <summary>The checks of one rotation src → dst (forward: x → y, backward: dy → dx).</summary>
    public static void Rotate(string srcName, long src, long positions, long invFreq, string dstName, long dst, int n, int heads, int headDim)
    {
        Check.NonNegative(n, "n");
        Check.Positive(heads, "heads");
        HeadDim(headDim);
        long total = (long)n * heads * headDim;
        Check.Length(srcName, src, total, "n·heads·headDim");
        Check.Length("positions", positions, n, "n");
        Check.Length("invFreq", invFreq, headDim / 2, "headDim/2");
        Check.Length(dstName, dst, total, "n·heads·headDim");
    }

    /// <summary>Every position must be ≥ 0 (host data).</summary>
    public static void Positions(ReadOnlySpan<int> positions)
    {
        for (int t = 0; t < positions.Length; t++)
        {
            if (positions[t] < 0)
            {
                throw new ArgumentException($"positions[{t}] is {positions[t]}; positions must be >= 0.", nameof(positions));
            }
        }
    }
}
