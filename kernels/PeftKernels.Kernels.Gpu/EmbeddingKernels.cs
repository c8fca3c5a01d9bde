// Embedding gather on the GPU: weight [vocab, dim], ids [n], y [n, dim]:
//   y[t, j] = weight[ids[t], j]
// Backward, the scatter-add dW[v, j] = Σ_{t: ids[t] = v} dy[t, j] (zero for ids that do not occur),
// without atomics: the host groups the token positions by id (ids are host data anyway), stable,
// so each group lists its tokens in ascending order; one thread per (distinct id, column) sums its
// group in that order, starting from 0, exactly as the CPU loop over tokens does (bit-identical).
// Forward's ids live on the device and are not checked here (GpuLaunch's rule): the caller checks them
// on the host before upload (EmbeddingShapes.Ids). Backward's ids are host data (it groups them) and it
// checks them itself; it waits once, at the end, before freeing its staged index buffers.
namespace PeftKernels.Kernels.Gpu;

/// <summary>Token embedding lookup on an ILGPU accelerator.</summary>
public static class EmbeddingKernels
{
    /// <summary>y[t, :] = weight[ids[t], :]. Enqueues only; the ids are not checked (EmbeddingShapes.Ids on the host).</summary>
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
        EmbeddingShapes.Forward(weight.Length, ids.Length, y.Length, n, vocab, dim);
        GpuCheck.FitsInt(weight.Length, "weight");
        GpuCheck.FitsInt(y.Length, "y");
        if (n != 0)
        {
            Loaded.For(accelerator).Gather(n * dim, weight, ids, y, dim);
        }
    }

    /// <summary>dw = the scatter-add of the rows of dy into the rows ids (dw[v, :] = Σ over t with ids[t] = v of dy[t, :]; other rows 0); waits once before freeing its staged index buffers.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dy">Gradient of the output [n, dim], n = ids.Length.</param>
    /// <param name="ids">Token ids [n] of the forward (host), each in [0, vocab).</param>
    /// <param name="dw">Gradient of the table [vocab, dim], overwritten.</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <param name="dim">Columns of the table.</param>
    public static void Backward(Accelerator accelerator, FloatView dy, ReadOnlySpan<int> ids, FloatView dw, int vocab, int dim)
    {
        GpuCheck.NotNull(accelerator);
        int n = ids.Length;
        EmbeddingShapes.Backward(dy.Length, dw.Length, n, vocab, dim);
        GpuCheck.FitsInt(dw.Length, "dw");
        GpuCheck.FitsInt(dy.Length, "dy");
        EmbeddingShapes.Ids(ids, vocab);
        var keys = new long[n];
        for (int t = 0; t < n; t++)
        {
            keys[t] = ((long)ids[t] << 32) | (uint)t;
        }

        dw.MemSetToZero();
        if (n == 0)
        {
            return;
        }

        // Sorting (id, position) keys groups the positions by id, each group in token order.
        Array.Sort(keys);
        var order = new int[n];
        var rows = new List<int>();
        var offsets = new List<int>();
        for (int p = 0; p < n; p++)
        {
            int id = (int)(keys[p] >> 32);
            order[p] = (int)(keys[p] & uint.MaxValue);
            if (p == 0 || id != rows[^1])
            {
                rows.Add(id);
                offsets.Add(p);
            }
        }

        offsets.Add(n);
        using var deviceOrder = accelerator.Upload(order);
        using var deviceRows = accelerator.Upload(rows.ToArray());
        using var deviceOffsets = accelerator.Upload(offsets.ToArray());
        Loaded.For(accelerator).Scatter(rows.Count * dim, dy, deviceRows.View, deviceOffsets.View, deviceOrder.View, dw, dim);
    }

    /// <summary>
    /// The host check of the token ids that <see cref="Forward"/> does not make (it never downloads them): each id is in
    /// [0, vocab). Call it before uploading the ids.
    /// </summary>
    /// <param name="ids">The token ids, on the host.</param>
    /// <param name="vocab">Rows of the table.</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is out of range.</exception>
    public static void CheckIds(ReadOnlySpan<int> ids, int vocab) => EmbeddingShapes.Ids(ids, vocab);

    internal static void ScatterKernel(Index1D i, FloatView dy, IntView rows, IntView offsets, IntView order, FloatView dw, int dim)
    {
        int k = i / dim, j = i - (k * dim);
        float sum = 0f;
        for (int p = offsets[k]; p < offsets[k + 1]; p++)
        {
            sum += dy[(order[p] * dim) + j];
        }

        dw[(rows[k] * dim) + j] = sum;
    }

    internal static void GatherKernel(Index1D i, FloatView weight, IntView ids, FloatView y, int dim)
    {
        int t = i / dim;
        y[i] = weight[(ids[t] * dim) + (i - (t * dim))];
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, IntView, FloatView, int> Gather;
        public readonly Action<Index1D, FloatView, IntView, IntView, IntView, FloatView, int> Scatter;

        private Loaded(Accelerator accelerator)
        {
            Gather = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int>(GatherKernel);
            Scatter = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, IntView, IntView, FloatView, int>(ScatterKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
