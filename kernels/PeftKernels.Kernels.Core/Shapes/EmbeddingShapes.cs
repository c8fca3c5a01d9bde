// Shape checks of the token embedding y[t, :] = weight[ids[t], :] and its backward (the scatter-add
// dW[v, :] = Σ_{t: ids[t] = v} dy[t, :]), called by the CPU kernel (Embedding) and the GPU launcher
// (EmbeddingKernels). Shapes: weight, dw [vocab, dim]; ids [n]; y, dy [n, dim]. Ids checks that every
// id is in [0, vocab) on host data: the CPU kernel and the GPU backward (whose ids are host data) call
// it; a GPU forward's caller calls it before uploading the ids.
namespace PeftKernels.Kernels;

/// <summary>Argument checks of the embedding, shared by the CPU kernel and the GPU launcher.</summary>
internal static class EmbeddingShapes
{
    public static void Forward(long weight, long ids, long y, int n, int vocab, int dim)
    {
        Check.NonNegative((n, "n"), (vocab, "vocab"));
        Check.Positive(dim, "dim");
        Check.Length("weight", weight, (long)vocab * dim, "vocab·dim");
        Check.Length("ids", ids, n, "n");
        Check.Length("y", y, (long)n * dim, "n·dim");
    }

    public static void Backward(long dy, long dw, int n, int vocab, int dim)
    {
        Check.NonNegative(vocab, "vocab");
        Check.Positive(dim, "dim");
        Check.Length("dy", dy, (long)n * dim, "ids.Length·dim");
        Check.Length("dw", dw, (long)vocab * dim, "vocab·dim");
    }

    /// <summary>Every id is in [0, vocab) (host data).</summary>
    public static void Ids(ReadOnlySpan<int> ids, int vocab)
    {
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= (uint)vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[t]} at position {t} is outside the vocabulary [0, {vocab}).");
            }
        }
    }
}
