// Virtual rows of prompt learning on the GPU (VirtualRows.cs on the CPU; docs/formats/prompt-learning.md#ops).
// Row-major: p [n, width] (a window of d columns from column c), x [batch·t, d], y [batch·(n+t), d]:
//   Prepend:      y[b, r, j] = r < n ? p[r, c + j] : x[b, r − n, j]
//   Backward:     dx[b, r, j] = dy[b, n + r, j];  dp[r, c + j] += Σ_b dy[b, r, j] (summed in batch order, as the CPU)
//   DropLeading:  y [batch·t, d] = x [batch·(n+t), d] without each batch row's n leading rows;
//                 backward dx = dy in place, zeros on the dropped rows
//   Relu / Tanh:  y = max(x, 0), dx = dy ⊙ [x > 0];  y = tanh(x), dx = dy ⊙ (1 − y²) (y the forward output)
// Why: prompt tuning puts N learned rows before every sequence's embeddings and drops them before the final norm;
// prefix tuning puts a layer's N key / value rows before every sequence's keys and values; P-tuning's MLP encoder
// and prefix tuning's projection use the activations. Copies and sums: one thread per output element, no atomics
// (dp's thread owns one (r, j) and loops over the batch), so results equal the CPU's bit for bit except tanh
// (the device's tanh, a few ulp).
namespace PeftKernels.Kernels.Gpu;

/// <summary>Prompt learning's row copies and encoder activations on an ILGPU accelerator.</summary>
public static class VirtualRowsKernels
{
    /// <summary>y = [p[:, column..column+d) ; x_b] for each of the <paramref name="batch"/> rows of x. Enqueues only.</summary>
    public static void Prepend(Accelerator accelerator, FloatView p, FloatView x, FloatView y, int batch, int n, int t, int width, int column, int d)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.Prepend(p.Length, x.Length, y.Length, batch, n, t, width, column, d);
        GpuCheck.FitsInt(y.Length, nameof(y));
        if (y.Length != 0)
        {
            Loaded.For(accelerator).Prepend((int)y.Length, p, x, y, n, t, width, column, d);
        }
    }

    /// <summary>
    /// Backward of <see cref="Prepend"/>: dx (when not empty) = the trailing t rows of each batch row of dy; dp (when not empty,
    /// [n, width]) gets the batch sum of the leading rows added into its window (accumulated, not overwritten). Enqueues only.
    /// </summary>
    public static void PrependBackward(Accelerator accelerator, FloatView dy, FloatView dp, FloatView dx, int batch, int n, int t, int width, int column, int d)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.PrependBackward(dy.Length, dp.Length, dx.Length, batch, n, t, width, column, d);
        GpuCheck.FitsInt(dy.Length, nameof(dy));
        GpuCheck.FitsInt(dp.Length, nameof(dp));
        var loaded = Loaded.For(accelerator);
        if (dx.Length != 0)
        {
            loaded.Trailing((int)dx.Length, dy, dx, n, t, d);
        }

        if (dp.Length != 0 && n * d != 0)
        {
            loaded.PrefixSum(n * d, dy, dp, batch, n, t, width, column, d);
        }
    }

    /// <summary>y [batch·t, d] = x [batch·(n+t), d] without the n leading rows of each batch row. Enqueues only.</summary>
    public static void DropLeading(Accelerator accelerator, FloatView x, FloatView y, int batch, int n, int t, int d)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.DropLeading(x.Length, y.Length, batch, n, t, d);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (y.Length != 0)
        {
            Loaded.For(accelerator).Trailing((int)y.Length, x, y, n, t, d);
        }
    }

    /// <summary>dx [batch·(n+t), d] = dy's rows in place, zeros on the dropped rows (overwritten). Enqueues only.</summary>
    public static void DropLeadingBackward(Accelerator accelerator, FloatView dy, FloatView dx, int batch, int n, int t, int d)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.DropLeadingBackward(dy.Length, dx.Length, batch, n, t, d);
        GpuCheck.FitsInt(dx.Length, nameof(dx));
        if (dx.Length != 0)
        {
            Loaded.For(accelerator).Spread((int)dx.Length, dy, dx, n, t, d);
        }
    }

    /// <summary>y = max(x, 0). Enqueues only.</summary>
    public static void Relu(Accelerator accelerator, FloatView x, FloatView y) => Unary(accelerator, x, y, 0);

    /// <summary>y = tanh(x). Enqueues only.</summary>
    public static void Tanh(Accelerator accelerator, FloatView x, FloatView y) => Unary(accelerator, x, y, 1);

    /// <summary>dx = dy where x &gt; 0, else 0. Enqueues only.</summary>
    public static void ReluBackward(Accelerator accelerator, FloatView dy, FloatView x, FloatView dx) => UnaryBackward(accelerator, dy, x, dx, 0);

    /// <summary>dx = dy ⊙ (1 − y²), y the forward output. Enqueues only.</summary>
    public static void TanhBackward(Accelerator accelerator, FloatView dy, FloatView y, FloatView dx) => UnaryBackward(accelerator, dy, y, dx, 1);

    private static void Unary(Accelerator accelerator, FloatView x, FloatView y, int tanh)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.Elementwise(x.Length, y.Length);
        GpuCheck.FitsInt(x.Length, nameof(x));
        if (x.Length != 0)
        {
            Loaded.For(accelerator).Unary((int)x.Length, x, y, tanh);
        }
    }

    private static void UnaryBackward(Accelerator accelerator, FloatView dy, FloatView saved, FloatView dx, int tanh)
    {
        GpuCheck.NotNull(accelerator);
        VirtualRowsShapes.ElementwiseBackward(dy.Length, saved.Length, dx.Length);
        GpuCheck.FitsInt(dy.Length, nameof(dy));
        if (dy.Length != 0)
        {
            Loaded.For(accelerator).UnaryBackward((int)dy.Length, dy, saved, dx, tanh);
        }
    }

    internal static void PrependKernel(Index1D i, FloatView p, FloatView x, FloatView y, int n, int t, int width, int column, int d)
    {
        int row = i / d, j = i - (row * d);
        int b = row / (n + t), r = row - (b * (n + t));
        y[i] = r < n ? p[(r * width) + column + j] : x[(((b * t) + r - n) * d) + j];
    }

    /// <summary>dst [batch·t, d] = the trailing t rows of each batch row of src [batch·(n+t), d].</summary>
    internal static void TrailingKernel(Index1D i, FloatView src, FloatView dst, int n, int t, int d)
    {
        int row = i / d, j = i - (row * d);
        int b = row / t, r = row - (b * t);
        dst[i] = src[(((b * (n + t)) + n + r) * d) + j];
    }

    /// <summary>dst [batch·(n+t), d]: the rows of src [batch·t, d] after n zero rows per batch row.</summary>
    internal static void SpreadKernel(Index1D i, FloatView src, FloatView dst, int n, int t, int d)
    {
        int row = i / d, j = i - (row * d);
        int b = row / (n + t), r = row - (b * (n + t));
        dst[i] = r < n ? 0f : src[(((b * t) + r - n) * d) + j];
    }

    internal static void PrefixSumKernel(Index1D i, FloatView dy, FloatView dp, int batch, int n, int t, int width, int column, int d)
    {
        int r = i / d, j = i - (r * d);
        float sum = dp[(r * width) + column + j];
        for (int b = 0; b < batch; b++)
        {
            sum += dy[((((b * (n + t)) + r) * d) + j)];
        }

        dp[(r * width) + column + j] = sum;
    }

    internal static void UnaryKernel(Index1D i, FloatView x, FloatView y, int tanh)
    {
        float v = x[i];
        y[i] = tanh != 0 ? MathF.Tanh(v) : (v > 0f ? v : 0f);
    }

    internal static void UnaryBackwardKernel(Index1D i, FloatView dy, FloatView saved, FloatView dx, int tanh)
    {
        float s = saved[i];
        dx[i] = tanh != 0 ? dy[i] * (1f - (s * s)) : (s > 0f ? dy[i] : 0f);
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int, int, int, int, int> Prepend;
        public readonly Action<Index1D, FloatView, FloatView, int, int, int> Trailing;
        public readonly Action<Index1D, FloatView, FloatView, int, int, int> Spread;
        public readonly Action<Index1D, FloatView, FloatView, int, int, int, int, int, int> PrefixSum;
        public readonly Action<Index1D, FloatView, FloatView, int> Unary;
        public readonly Action<Index1D, FloatView, FloatView, FloatView, int> UnaryBackward;

        private Loaded(Accelerator a)
        {
            Prepend = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int, int, int, int, int>(PrependKernel);
            Trailing = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int, int, int>(TrailingKernel);
            Spread = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int, int, int>(SpreadKernel);
            PrefixSum = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int, int, int, int, int, int>(PrefixSumKernel);
            Unary = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, int>(UnaryKernel);
            UnaryBackward = a.LoadAutoGroupedStreamKernel<Index1D, FloatView, FloatView, FloatView, int>(UnaryBackwardKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
