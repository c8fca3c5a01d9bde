// One LoRA branch added to a Linear output outside the fused kernel, on the CPU: a second (third, …)
// active adapter, or the rows of one adapter in a per-row batch (the GPU's LoraBranchKernels).
// R = the branch's rows (all n rows, or `rows`, distinct), m = |R|, xR = x[R, :] gathered [m, in]:
//   u       = drop(xR)                    [m, in]  (the mask of the gathered storage index, DropoutMask)
//   h       = u · aᵀ                      [m, r]
//   y[R, :] += s · h · bᵀ + bias          [n, out] (bias: the caller's s·bias_B, or empty)
// Backward, gR = dy[R, :] (chain rule through the two GEMMs and the mask):
//   db      = s · gRᵀ · h                 [out, r]  (skipped when empty)
//   dh      = s · gR · b                  [m, r]
//   da      = dhᵀ · u                     [r, in]   (skipped when empty: LoRA-FA; u recomputed from x)
//   dx[R,:] = drop'(dh · a), 0 elsewhere  [n, in]   (skipped when empty; the same mask and 1/(1 − p))
// dbias_B = s · Σ_rows gR is ColumnSums.Add. Every output of the backward is overwritten. The GEMMs are
// the fp32 Gemm; with all rows, y accumulates inside the GEMM (beta = 1), else through a gathered
// temporary added row by row: the same operations, in the same order, as the module code it replaces.
using System.Numerics.Tensors;

namespace PeftKernels.Kernels.Cpu;

/// <summary>An extra LoRA branch (all rows or a subset of rows) on the CPU, forward and backward.</summary>
public static class LoraBranch
{
    /// <summary>y[R, :] += scale·(drop(x[R, :])·aᵀ)·bᵀ + bias and h = drop(x[R, :])·aᵀ, with R = <paramref name="rows"/> (null: all rows).</summary>
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
    /// <param name="options">Dropout, seed, threads and SIMD path.</param>
    /// <exception cref="ArgumentException">A length differs from what the dims imply, a row is out of range or repeated, or the dropout is outside [0, 1).</exception>
    public static void ForwardAccumulate(ReadOnlySpan<float> x, int[]? rows, ReadOnlySpan<float> a, ReadOnlySpan<float> b, ReadOnlySpan<float> bias,
        float scale, Span<float> y, Span<float> h, int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default)
    {
        int m = LoraBranchShapes.Forward(x.Length, rows, a.Length, b.Length, bias.Length, y.Length, h.Length, n, inFeatures, outFeatures, rank, options);
        if (m == 0)
        {
            return;
        }

        var k = options.Kernel;
        var u = DroppedRows(x, rows, m, inFeatures, options);
        Gemm.Multiply(false, true, m, rank, inFeatures, 1f, u, a, 0f, h, k);
        if (rows == null)
        {
            Gemm.Multiply(false, true, m, outFeatures, rank, scale, h, b, 1f, y, k);
            AddBias(y, bias, null, m, outFeatures);
            return;
        }

        var yr = GC.AllocateUninitializedArray<float>(m * outFeatures);
        Gemm.Multiply(false, true, m, outFeatures, rank, scale, h, b, 0f, yr, k);
        for (int i = 0; i < m; i++)
        {
            var target = y.Slice(rows[i] * outFeatures, outFeatures);
            TensorPrimitives.Add(target, yr.AsSpan(i * outFeatures, outFeatures), target);
        }

        AddBias(y, bias, rows, m, outFeatures);
    }

    /// <summary>dx (zero outside the rows R; skipped when empty), da (skipped when empty: LoRA-FA) and db (skipped when empty), all overwritten; the same rows, dropout and seed as the forward.</summary>
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
    /// <param name="options">Dropout and seed, as in the forward; threads and SIMD path.</param>
    /// <exception cref="ArgumentException">As <see cref="ForwardAccumulate"/>.</exception>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, int[]? rows, ReadOnlySpan<float> h, ReadOnlySpan<float> a,
        ReadOnlySpan<float> b, float scale, Span<float> dx, Span<float> da, Span<float> db,
        int n, int inFeatures, int outFeatures, int rank, in LoraOptions options = default)
    {
        int m = LoraBranchShapes.Backward(dy.Length, x.Length, rows, h.Length, a.Length, b.Length, dx.Length, da.Length, db.Length,
            n, inFeatures, outFeatures, rank, options);
        if (rows != null || m == 0)
        {
            dx.Clear();
        }

        if (m == 0)
        {
            da.Clear();
            db.Clear();
            return;
        }

        var k = options.Kernel;
        ReadOnlySpan<float> gr = rows == null ? dy : Gather(dy, rows, outFeatures);
        if (db.Length != 0)
        {
            Gemm.Multiply(true, false, outFeatures, rank, m, scale, gr, h, 0f, db, k);
        }

        if (dx.Length == 0 && da.Length == 0)
        {
            return;
        }

        var dh = GC.AllocateUninitializedArray<float>(m * rank);
        Gemm.Multiply(false, false, m, rank, outFeatures, scale, gr, b, 0f, dh, k);
        if (da.Length != 0)
        {
            var u = DroppedRows(x, rows, m, inFeatures, options);
            Gemm.Multiply(true, false, rank, inFeatures, m, 1f, dh, u, 0f, da, k);
        }

        if (dx.Length != 0)
        {
            var dxr = rows == null ? dx : GC.AllocateUninitializedArray<float>(m * inFeatures);
            Gemm.Multiply(false, false, m, inFeatures, rank, 1f, dh, a, 0f, dxr, k);
            if (options.Dropout > 0)
            {
                Dropout.Apply(dxr, dxr, options.Dropout, options.Seed, k);
            }

            if (rows != null)
            {
                for (int i = 0; i < m; i++)
                {
                    dxr.Slice(i * inFeatures, inFeatures).CopyTo(dx.Slice(rows[i] * inFeatures, inFeatures));
                }
            }
        }
    }

    /// <summary>drop(x[R, :]) [m, in]: x itself when nothing is gathered or dropped.</summary>
    private static ReadOnlySpan<float> DroppedRows(ReadOnlySpan<float> x, int[]? rows, int m, int inFeatures, in LoraOptions options)
    {
        ReadOnlySpan<float> xr = rows == null ? x : Gather(x, rows, inFeatures);
        if (options.Dropout <= 0)
        {
            return xr;
        }

        var u = GC.AllocateUninitializedArray<float>(m * inFeatures);
        Dropout.Apply(xr, u, options.Dropout, options.Seed, options.Kernel);
        return u;
    }

    private static float[] Gather(ReadOnlySpan<float> source, int[] rows, int cols)
    {
        var result = GC.AllocateUninitializedArray<float>(rows.Length * cols);
        for (int i = 0; i < rows.Length; i++)
        {
            source.Slice(rows[i] * cols, cols).CopyTo(result.AsSpan(i * cols, cols));
        }

        return result;
    }

    private static void AddBias(Span<float> y, ReadOnlySpan<float> bias, int[]? rows, int m, int outFeatures)
    {
        if (bias.Length == 0)
        {
            return;
        }

        for (int i = 0; i < m; i++)
        {
            var target = y.Slice((rows?[i] ?? i) * outFeatures, outFeatures);
            TensorPrimitives.Add(target, bias, target);
        }
    }
}
