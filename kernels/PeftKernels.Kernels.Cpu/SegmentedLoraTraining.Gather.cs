// Segmented LoRA forward over gathered rows (docs/formats/mixlora.md#cost): the row gather of the frozen
// product fused into SegmentedLoraTraining's forward. source [sourceRows, out], rows [n] (each in
// [0, sourceRows), repeats allowed), x [n, in], segments and adapters as in SegmentedLoraTraining:
//   y[i]       = source[rows[i]]                         every row i of y [n, out] (overwritten)
//   y[seg t]  += s_t · drop_t(x[seg t]) · A_tᵀ · B_tᵀ     (then the segment's LoRA, as ForwardAccumulate)
// = RowSelect.Gather(source, rows) followed by ForwardAccumulate, the same values bit for bit (a copy
// and the same GEMM calls). The backward is SegmentedLoraTraining.Backward's; the gradient of source
// is the gather's adjoint (RowSelect.ScatterSum / ScatterAdd of dy), which the autograd op applies.
// Why: MixLoRA gathers W_gate·x̃ and W_up·x̃ ([n, 2048], each token once per chosen expert) into
// expert order and adds each expert's LoRA to its rows. As two passes the gather writes the whole
// [k·n, out] buffer on one thread and the segmented GEMMs read it back from memory; here each segment
// copies its rows just before its GEMMs, on the thread that runs them, so the rows are still in cache
// and the copy is split over the threads with the segments.
namespace PeftKernels.Kernels.Cpu;

public static unsafe partial class SegmentedLoraTraining
{
    /// <summary>y[i] = source[rows[i]] for every row, then y[seg t] += s_t·drop_t(x[seg t])·A_tᵀ·B_tᵀ per segment; and h as in <see cref="ForwardAccumulate"/>.</summary>
    /// <param name="source">The rows to gather [sourceRows, out].</param>
    /// <param name="rows">y's source row per row of y [n] (each in [0, sourceRows)).</param>
    /// <param name="sourceRows">Rows of <paramref name="source"/>.</param>
    /// <param name="x">Input [n, in].</param>
    /// <param name="starts">Segment starts [T + 1], non-decreasing, starts[0] ≥ 0, starts[T] ≤ n.</param>
    /// <param name="a">A_t [r_t, in] per segment.</param>
    /// <param name="b">B_t [out, r_t] per segment.</param>
    /// <param name="scales">s_t per segment.</param>
    /// <param name="seeds">Dropout seed per segment (read only when <paramref name="dropout"/> &gt; 0).</param>
    /// <param name="dropout">Dropout probability p in [0, 1).</param>
    /// <param name="y">Output [n, out] (overwritten).</param>
    /// <param name="h">Output: as in <see cref="ForwardAccumulate"/>.</param>
    /// <param name="n">Rows of x and y.</param>
    /// <param name="inFeatures">Input features.</param>
    /// <param name="outFeatures">Output features.</param>
    /// <param name="options">Threads and SIMD path.</param>
    /// <exception cref="ArgumentException">As <see cref="ForwardAccumulate"/>, or source or rows has the wrong length.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A row is outside [0, sourceRows).</exception>
    public static void ForwardGather(ReadOnlySpan<float> source, ReadOnlySpan<int> rows, int sourceRows, ReadOnlySpan<float> x, ReadOnlySpan<int> starts,
        IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, ReadOnlySpan<float> scales, ReadOnlySpan<ulong> seeds, float dropout, Span<float> y, Span<float> h,
        int n, int inFeatures, int outFeatures, KernelOptions options = default)
    {
        var ranks = Check(x.Length, starts, a, b, scales.Length, seeds.Length, dropout, y.Length, n, inFeatures, outFeatures);
        if (rows.Length != n)
        {
            throw new ArgumentException($"segmented LoRA gather: {rows.Length} source rows for the {n} rows of y (need one per row).", nameof(rows));
        }

        RowSelectShapes.Gather(source.Length, y.Length, n, sourceRows, outFeatures);
        RowSelectShapes.Rows(rows, sourceRows);
        fixed (float* px = x, py = y, ph = h, ps = source)
        {
            Forward(px, starts, a, b, scales, seeds, dropout, py, ph, h.Length, ranks, ps, rows.ToArray(), n, inFeatures, outFeatures, options);
        }
    }

    /// <summary>y[i] = source[rows[i]] for i in [from, to) (rows already checked).</summary>
    private static void CopyRows(float* source, int[] rows, float* y, int from, int to, int cols)
    {
        for (int i = from; i < to; i++)
        {
            new ReadOnlySpan<float>(source + ((long)rows[i] * cols), cols).CopyTo(new Span<float>(y + ((long)i * cols), cols));
        }
    }
}
