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
        int m = ValidateRows(accelerator, rows, n, inFeatures, outFeatures, rank, options);
        Check.Length(nameof(x), x.Length, (long)n * inFeatures, "n·inFeatures");
        Check.Length(nameof(a), a.Length, (long)rank * inFeatures, "rank·inFeatures");
        Check.Length(nameof(b), b.Length, (long)outFeatures * rank, "outFeatures·rank");
        Check.LengthOrEmpty(nameof(bias), bias.Length, outFeatures, "outFeatures, or empty");
        Check.Length(nameof(y), y.Length, (long)n * outFeatures, "n·outFeatures");
        Check.Length(nameof(h), h.Length, (long)m * rank, "m·rank (m = rows of the branch)");
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
        using var deviceRows = accelerator.Allocate1D(rows);
        using var xr = accelerator.Allocate1D<float>((long)m * inFeatures);
        using var yr = accelerator.Allocate1D<float>((long)m * outFeatures);
        kernels.Gather(m * inFeatures, x, deviceRows.View, xr.View, inFeatures);
        GemmTiles.Run(accelerator, new DenseOperand(xr.View, inFeatures, false, 1f, mask), new DenseOperand(a, inFeatures, true),
            new GemmEpilogue(h, rank, 1f, 0f), m, rank, inFeatures);
        GemmTiles.Run(accelerator, new DenseOperand(h, rank, false, scale), new DenseOperand(b, rank, true),
            new GemmEpilogue(yr.View, outFeatures, 1f, 0f, bias), m, outFeatures, rank);
        kernels.ScatterAdd(m * outFeatures, yr.View, deviceRows.View, y, outFeatures);
        accelerator.Synchronize();
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
        int m = ValidateRows(accelerator, rows, n, inFeatures, outFeatures, rank, options);
        Check.Length(nameof(dy), dy.Length, (long)n * outFeatures, "n·outFeatures");
        if (da.Length != 0 || x.Length != 0)
        {
            Check.Length(nameof(x), x.Length, (long)n * inFeatures, "n·inFeatures (x may be empty only when da is empty)");
        }

        Check.Length(nameof(h), h.Length, (long)m * rank, "m·rank (m = rows of the branch)");
        Check.Length(nameof(a), a.Length, (long)rank * inFeatures, "rank·inFeatures");
        Check.Length(nameof(b), b.Length, (long)outFeatures * rank, "outFeatures·rank");
        Check.LengthOrEmpty(nameof(dx), dx.Length, (long)n * inFeatures, "n·inFeatures, or empty to skip");
        Check.LengthOrEmpty(nameof(da), da.Length, (long)rank * inFeatures, "rank·inFeatures, or empty to skip");
        Check.LengthOrEmpty(nameof(db), db.Length, (long)outFeatures * rank, "outFeatures·rank, or empty to skip");
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

            accelerator.Synchronize();
            return;
        }

        var kernels = Loaded.For(accelerator);
        using var deviceRows = rows == null ? null : accelerator.Allocate1D(rows);
        using var gathered = rows == null ? null : accelerator.Allocate1D<float>((long)m * outFeatures);
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
            accelerator.Synchronize();
            return;
        }

        var mask = new GpuDropout(options.Dropout, options.Seed);
        using var dh = accelerator.Allocate1D<float>((long)m * rank);
        GemmTiles.Run(accelerator, new DenseOperand(gr, outFeatures, false), new DenseOperand(b, rank, false),
            new GemmEpilogue(dh.View, rank, scale, 0f), m, rank, outFeatures);
        if (da.Length != 0)
        {
            using var xr = deviceRows == null ? null : accelerator.Allocate1D<float>((long)m * inFeatures);
            var xv = x;
            if (xr != null)
            {
                xv = xr.View;
                kernels.Gather(m * inFeatures, x, deviceRows!.View, xv, inFeatures);
            }

            GemmTiles.Run(accelerator, new DenseOperand(dh.View, rank, true), new DenseOperand(xv, inFeatures, false, 1f, mask),
                new GemmEpilogue(da, inFeatures, 1f, 0f), rank, inFeatures, m);
            accelerator.Synchronize();
        }

        if (dx.Length != 0)
        {
            using var dxr = deviceRows == null ? null : accelerator.Allocate1D<float>((long)m * inFeatures);
            GemmTiles.Run(accelerator, new DenseOperand(dh.View, rank, false), new DenseOperand(a, inFeatures, false),
                new GemmEpilogue(dxr?.View ?? dx, inFeatures, 1f, 0f, mask: mask), m, inFeatures, rank);
            if (dxr != null)
            {
                kernels.ScatterAdd(m * inFeatures, dxr.View, deviceRows!.View, dx, inFeatures);
            }

            accelerator.Synchronize();
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

    private static int ValidateRows(Accelerator accelerator, int[]? rows, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options)
    {
        LoraMatmulKernels.ValidateDims(accelerator, n, inFeatures, outFeatures, rank, options);
        if (rows == null)
        {
            return n;
        }

        Check.Require(rows.Length <= n, nameof(rows), $"rows has {rows.Length} entries; there are only n = {n} rows.");
        var seen = new bool[n];
        for (int i = 0; i < rows.Length; i++)
        {
            int row = rows[i];
            Check.Require((uint)row < (uint)n, nameof(rows), $"rows[{i}] = {row} is outside [0, {n}).");
            Check.Require(!seen[row], nameof(rows), $"rows[{i}] = {row} appears twice; a branch's rows must be distinct.");
            seen[row] = true;
        }

        return rows.Length;
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
