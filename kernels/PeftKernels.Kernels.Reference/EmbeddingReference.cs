// Token embedding, forward and backward, in double. weight [vocab, dim], ids [n], y, dy [n, dim]:
//   y[t, j]  = weight[ids[t], j]
//   dw[v, j] = Σ_{t: ids[t] = v} dy[t, j]          (0 for ids that do not occur)
namespace PeftKernels.Kernels.Reference;

/// <summary>Naive double-precision embedding gather and scatter-add: the specification of Embedding.</summary>
public static class EmbeddingReference
{
    /// <summary>y [ids.Length, dim] = the rows of weight [vocab, dim] named by ids.</summary>
    public static double[] Forward(double[] weight, int[] ids, int vocab, int dim)
    {
        var y = new double[ids.Length * dim];
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= (uint)vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids));
            }

            Array.Copy(weight, ids[t] * dim, y, t * dim, dim);
        }

        return y;
    }

    /// <summary>dw [vocab, dim]: each row of dy added to the row of its id.</summary>
    public static double[] Backward(double[] dy, int[] ids, int vocab, int dim)
    {
        var dw = new double[vocab * dim];
        for (int t = 0; t < ids.Length; t++)
        {
            for (int j = 0; j < dim; j++)
            {
                dw[(ids[t] * dim) + j] += dy[(t * dim) + j];
            }
        }

        return dw;
    }
}
