// Embedding gather on the GPU: weight [vocab, dim], ids [n], y [n, dim]:
//   y[t, j] = weight[ids[t], j]
// Backward (a scatter-add dW[ids[t], :] += dy[t, :]) stays at the autograd level. Ids are
// validated on the host (0 ≤ id < vocab) before upload; the device does not check them.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Token embedding lookup on an ILGPU accelerator.</summary>
public static class EmbeddingKernels
{
    /// <summary>y[t, :] = weight[ids[t], :].</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="weight">The table [vocab, dim].</param>
    /// <param name="ids">Token ids [n], each in [0, vocab).</param>
    /// <param name="y">Output [n, dim].</param>
    /// <param name="n">Tokens.</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    public static void Forward(Accelerator accelerator, FloatView weight, IntView ids, FloatView y, int n, int vocab, int dim)
    {
        GpuCheck.NotNull(accelerator);
        Check.NonNegative(n, "n");
        Check.NonNegative(vocab, "vocab");
        Check.Positive(dim, "dim");
        Check.Length(nameof(weight), weight.Length, (long)vocab * dim, "vocab·dim");
        Check.Length(nameof(ids), ids.Length, n, "n");
        Check.Length(nameof(y), y.Length, (long)n * dim, "n·dim");
        GpuCheck.FitsInt(weight.Length, "weight");
        GpuCheck.FitsInt(y.Length, "y");
        if (n != 0)
        {
            Loaded.For(accelerator).Gather(n * dim, weight, ids, y, dim);
        }
    }

    internal static void GatherKernel(Index1D i, FloatView weight, IntView ids, FloatView y, int dim)
    {
        int t = i / dim;
        y[i] = weight[(ids[t] * dim) + (i - (t * dim))];
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, IntView, FloatView, int> Gather;

        private Loaded(Accelerator accelerator) =>
            Gather = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int>(GatherKernel);

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
