// One LoRA branch added to a Linear output outside the fused kernel, on the GPU: a second (third,
// …) active adapter, or the rows of one adapter in a per-row batch (LoraBranch's math on views).
// R = the branch's rows (all n rows, or `rows`, distinct), m = |R|, xR = x[R, :] gathered [m, in]:
//   h      = drop(xR) · aᵀ                 [m, r]   (the mask of the gathered storage index, as
//                                                     the CPU's Dropout over the gathered rows)
//   y[R,:] += s · h · bᵀ + bias            [n, out] (bias: the caller's s·bias_B, or empty)
// Backward, gR = dy[R, :] (chain rule through the two GEMMs and the mask):
//   db     = s · gRᵀ · h                   [out, r]
//   dh     = s · gR · b                    [m, r]
//   da     = dhᵀ · drop(xR)                [r, in]  (skipped when empty: LoRA-FA)
//   dx[R,:] = drop'(dh · a), 0 elsewhere   [n, in]  (the same mask and 1/(1 − p) in the epilogue)
// The rows are gathered into / scattered from contiguous temporaries (GatherRowsKernel,
// ScatterAddRowsKernel); the GEMMs are the GemmTiles core over dense operands.
// GpuLaunch's rule: without temporaries (all rows, forward) the launcher only enqueues; with
// temporaries (a row subset, or the backward's dh) it waits once, at the end, before freeing them.
namespace PeftKernels.Kernels.Gpu;

/// <summary>An extra LoRA branch (all rows or a subset of rows) on an ILGPU accelerator, forward and backward.</summary>
public static class LoraBranchKernels
{
    /// <summary>y[R, :] += scale·(drop(x[R, :])·aᵀ)·bᵀ + bias and h = drop(x[R, :])·aᵀ, with R = <paramref name="rows"/> (null: all rows).</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="x">Input [n, in].</param>
    /// <param name="rows">The branch's rows of x and y (distinct, each in [0, n)), or null for all n rows.</param>
    /// <param name="a">LoRA A [r, in].</param>
    /// <param name="b">LoRA B [out, r].</param>
    /// <param name="bias">Added to each of the branch's output rows [out] (s·bias_B), or empty.</param>
    /// <param name="scale">LoRA scale s.</param>
    /// <param name="y">Output [n, out], accumulated into (read and written on the rows R only).</param>
    /// <param name="h">Output [m, r] (m = |R|): needed by <see cref="Backward"/>.</param>
    /// <param name="n">Rows of x and y.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout and seed of the branch (the Kernel part is ignored on the GPU).</param>
    /// <exception cref="ArgumentException">A view's length differs from what the dims imply, a row is out of range or repeated, or the dropout is outside [0, 1).</exception>
    public static void ForwardAccumulate(Accelerator accelerator, FloatView x, int[]? rows, FloatView a, FloatView b, FloatView bias, float scale,
        FloatView y, FloatView h, int n, int inFeatures, int outFeatures, int rank, LoraOptions options = default)
    {
        GpuCheck.NotNull(accelerator);
        int m = LoraBranchShapes.Forward(x.Length, rows, a.Length, b.Length, bias.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        GpuCheck.FitsInt(x.Length, nameof(x));
        GpuCheck.FitsInt(y.Length, nameof(y));
        if (m == 0)
        {
            return;
        }

        var mask = new GpuDropout(options.Dropout, options.Seed);
        if (rows == null)
        {
            GemmTiles.Run(accelerator, new DenseOperand(x, inFeatures, false, 1f, mask), new DenseOperand(a, inFeatures, true),
                new GemmEpilogue(h, rank, 1f, 0f), m, rank, inFeatures);
            GemmTiles.Run(accelerator, new DenseOperand(h, rank, false, scale), new DenseOperand(b, rank, true),
                new GemmEpilogue(y, outFeatures, 1f, 1f, bias), m, outFeatures, rank);
            return;
        }

        var kernels = Loaded.For(accelerator);
        using var deviceRows = accelerator.Upload(rows);
        using var xr = accelerator.Rent<float>((long)m * inFeatures);
        using var yr = accelerator.Rent<float>((long)m * outFeatures);
        kernels.Gather(m * inFeatures, x, deviceRows.View, xr.View, inFeatures);
        GemmTiles.Run(accelerator, new DenseOperand(xr.View, inFeatures, false, 1f, mask), new DenseOperand(a, inFeatures, true),
            new GemmEpilogue(h, rank, 1f, 0f), m, rank, inFeatures);
        GemmTiles.Run(accelerator, new DenseOperand(h, rank, false, scale), new DenseOperand(b, rank, true),
            new GemmEpilogue(yr.View, outFeatures, 1f, 0f, bias), m, outFeatures, rank);
        kernels.ScatterAdd(m * outFeatures, yr.View, deviceRows.View, y, outFeatures);
    }

    /// <summary>dx (zero outside the rows R; skipped when empty), da (skipped when empty: LoRA-FA) and db (skipped when empty), all overwritten; the same rows, dropout and seed as the forward.</summary>
    /// <param name="accelerator">The device.</param>
    /// <param name="dy">Gradient of y [n, out].</param>
    /// <param name="x">Input [n, in]; may be empty when da is empty.</param>
    /// <param name="rows">The forward's rows, or null for all rows.</param>
    /// <param name="h">The forward's h [m, r].</param>
    /// <param name="a">LoRA A [r, in].</param>
    /// <param name="b">LoRA B [out, r].</param>
    /// <param name="scale">LoRA scale s.</param>
    /// <param name="dx">Output [n, in], or empty to skip.</param>
    /// <param name="da">Output [r, in], or empty to skip.</param>
    /// <param name="db">Output [out, r], or empty to skip.</param>
    /// <param name="n">Rows of x and dy.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="options">Dropout and seed, as in the forward.</param>
    /// <exception cref="ArgumentException">As <see cref="ForwardAccumulate"/>.</exception>
    public static void Backward(Accelerator accelerator, FloatView dy, FloatView x, int[]? rows, FloatView h, FloatView a, FloatView b, float scale,
        FloatView dx, FloatView da, FloatView db, int n, int inFeatures, int outFeatures, int rank, LoraOptions options = default)
    {
        GpuCheck.NotNull(accelerator);
        int m = LoraBranchShapes.Backward(dy.Length, x.Length, rows, h.Length, a.Length, b.Length, dx.Length, da.Length, db.Length,
            n, inFeatures, outFeatures, rank, options);
        GpuCheck.FitsInt((long)n * inFeatures, nameof(x));
        GpuCheck.FitsInt(dy.Length, nameof(dy));
        if (rows != null && dx.Length != 0)
        {
            dx.MemSetToZero();
        }

        if (m == 0)
        {
            foreach (var empty in new[] { dx, da, db })
            {
                if (empty.Length != 0)
                {
                    empty.MemSetToZero();
                }
            }

            return;
        }

        var kernels = Loaded.For(accelerator);
        using var deviceRows = rows == null ? null : accelerator.Upload(rows);
        using var gathered = rows == null ? null : accelerator.Rent<float>((long)m * outFeatures);
        var gr = dy;
        if (deviceRows != null)
        {
            gr = gathered!.View;
            kernels.Gather(m * outFeatures, dy, deviceRows.View, gr, outFeatures);
        }

        if (db.Length != 0)
        {
            GemmTiles.Run(accelerator, new DenseOperand(gr, outFeatures, true), new DenseOperand(h, rank, false),
                new GemmEpilogue(db, rank, scale, 0f), outFeatures, rank, m);
        }

        if (dx.Length == 0 && da.Length == 0)
        {
            if (deviceRows != null)
            {
            }

            return;
        }

        var mask = new GpuDropout(options.Dropout, options.Seed);
        using var dh = accelerator.Rent<float>((long)m * rank);
        GemmTiles.Run(accelerator, new DenseOperand(gr, outFeatures, false), new DenseOperand(b, rank, false),
            new GemmEpilogue(dh.View, rank, scale, 0f), m, rank, outFeatures);
        using var xr = da.Length == 0 || deviceRows == null ? null : accelerator.Rent<float>((long)m * inFeatures);
        using var dxr = dx.Length == 0 || deviceRows == null ? null : accelerator.Rent<float>((long)m * inFeatures);
        if (da.Length != 0)
        {
            var xv = x;
            if (xr != null)
            {
                xv = xr.View;
                kernels.Gather(m * inFeatures, x, deviceRows!.View, xv, inFeatures);
            }

            GemmTiles.Run(accelerator, new DenseOperand(dh.View, rank, true), new DenseOperand(xv, inFeatures, false, 1f, mask),
                new GemmEpilogue(da, inFeatures, 1f, 0f), rank, inFeatures, m);
        }

        if (dx.Length != 0)
        {
            GemmTiles.Run(accelerator, new DenseOperand(dh.View, rank, false), new DenseOperand(a, inFeatures, false),
                new GemmEpilogue(dxr?.View ?? dx, inFeatures, 1f, 0f, mask: mask), m, inFeatures, rank);
            if (dxr != null)
            {
                kernels.ScatterAdd(m * inFeatures, dxr.View, deviceRows!.View, dx, inFeatures);
            }
        }

    }

    internal static void GatherRowsKernel(Index1D i, FloatView source, IntView rows, FloatView target, int cols) =>
        target[i] = source[(rows[i / cols] * cols) + (i % cols)];

    // Rows are distinct, so no two threads write one element: no atomics.
    internal static void ScatterAddRowsKernel(Index1D i, FloatView source, IntView rows, FloatView target, int cols)
    {
        int at = (rows[i / cols] * cols) + (i % cols);
        target[at] += source[i];
    }

    private sealed class Loaded
    {
        public readonly Action<Index1D, FloatView, IntView, FloatView, int> Gather;
        public readonly Action<Index1D, FloatView, IntView, FloatView, int> ScatterAdd;

        private Loaded(Accelerator accelerator)
        {
            Gather = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int>(GatherRowsKernel);
            ScatterAdd = accelerator.LoadAutoGroupedStreamKernel<Index1D, FloatView, IntView, FloatView, int>(ScatterAddRowsKernel);
        }

        public static Loaded For(Accelerator accelerator) => GpuKernelCache.Get(accelerator, static a => new Loaded(a));
    }
}
