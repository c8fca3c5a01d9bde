// Segmented LoRA branch (training): adapter t on the contiguous rows of segment t of one batch, as one
// autograd op (docs/formats/mixlora.md#forward uses it with one segment per expert). x [n, in],
// y [n, out]; segment t = rows [starts[t], starts[t + 1]), adapter t = (A_t [r_t, in], B_t [out, r_t],
// s_t), dropout p with seed_t:
//   y'[seg t] = y[seg t] + s_t · drop_t(x[seg t]) · A_tᵀ · B_tᵀ     (other rows unchanged)
// Backward, g = dL/dy' (Kernels.Cpu.SegmentedLoraTraining; per segment, the chain rule of LoraBranch):
//   dy = g (passed on);  dB_t = s_t·g_tᵀ·h_t;  dA_t = (s_t·g_t·B_t)ᵀ·u_t;  dx[seg t] = drop_t'(s_t·g_t·B_t·A_t)
// Why: one node and one pass over all experts' rows instead of a LoraBranch (and the gathers around it)
// per expert. y is consumed: its storage receives the sum and is handed back as the output. Host
// tensors only (the MixLoRA block keeps its per-expert path on a device); lora_B biases and DoRA
// magnitudes are refused (MixLoRA experts have neither).
// SegmentedLoraBranchGathered: y = source[rows] first (the row gather fused into the forward, each
// segment copying its rows just before its GEMMs; Kernels.Cpu.SegmentedLoraTraining.ForwardGather),
// d source = the gather's adjoint of g. In both ops dx is added in place into x's gradient when x
// already has one (MixLoRA's gate and up LoRAs share x̃: one [k·n, in] buffer, no add pass), else into a
// ScratchArrays buffer. SegmentedLoraBranchGatheredScratch (internal, MixLoRA's gathered G and U rows): y's
// storage comes from ScratchArrays and the backward returns it (and g) once it has scattered g back; the
// caller guarantees nothing reads the output after this op's backward; with sourceTakesGrad the source's
// gradient (when it has none yet) is written over the source's own storage (see GatherRowsScratch).
using PeftKernels.Kernels.Cpu;

namespace PeftKernels.Ops;

public static partial class Functional
{
    /// <summary>
    /// y[seg t] + s_t·drop_t(x[seg t])·A_tᵀ·B_tᵀ for every segment t = rows [starts[t], starts[t + 1]) of y [n, out] and x [n, in];
    /// <paramref name="y"/> is consumed (its storage receives the sum). <paramref name="seeds"/>: the dropout seed per segment (may be null when p = 0).
    /// </summary>
    public static Tensor SegmentedLoraBranch(Tensor y, Tensor x, IReadOnlyList<LoraFactors> adapters, int[] segmentStarts, float dropout, ulong[]? seeds,
        KernelOptions kernel = default)
    {
        ArgumentNullException.ThrowIfNull(y);
        return SegmentedLoraBranchCore(y, null, x, adapters, segmentStarts, dropout, seeds, kernel);
    }

    /// <summary>
    /// source[rows] + each segment's LoRA: y[i] = source[rows[i]] ([rows.Length, out], a fresh tensor), then
    /// y[seg t] += s_t·drop_t(x[seg t])·A_tᵀ·B_tᵀ; the gather and the LoRA in one op (<see cref="GatherRows(Tensor, int[], KernelOptions)"/> followed by
    /// <see cref="SegmentedLoraBranch"/>, the same values). source's gradient is the gather's adjoint (added into its gradient when
    /// it has one, else each of its rows written once).
    /// </summary>
    /// <exception cref="ArgumentException">As <see cref="SegmentedLoraBranch"/>, or the rows do not match x's rows or the source's columns the adapters' outputs.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A row is outside the source.</exception>
    public static Tensor SegmentedLoraBranchGathered(Tensor source, int[] rows, Tensor x, IReadOnlyList<LoraFactors> adapters, int[] segmentStarts, float dropout,
        ulong[]? seeds, KernelOptions kernel = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(rows);
        return SegmentedLoraBranchCore(source, rows, x, adapters, segmentStarts, dropout, seeds, kernel);
    }

    /// <summary>
    /// <see cref="SegmentedLoraBranchGathered"/> into a pooled array (<see cref="ScratchArrays"/>) whose backward returns the output's
    /// storage and gradient to the pool: only for a temporary that no one reads once this op's backward has run.
    /// </summary>
    internal static Tensor SegmentedLoraBranchGatheredScratch(Tensor source, int[] rows, Tensor x, IReadOnlyList<LoraFactors> adapters, int[] segmentStarts,
        float dropout, ulong[]? seeds, KernelOptions kernel = default, bool sourceTakesGrad = false)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(rows);
        return SegmentedLoraBranchCore(source, rows, x, adapters, segmentStarts, dropout, seeds, kernel, scratch: true, sourceTakesGrad);
    }

    /// <summary>The op: rows == null adds into y (consumed); else y = source[rows] (fresh, or pooled with <paramref name="scratch"/>) and the LoRA is added to it.</summary>
    private static Tensor SegmentedLoraBranchCore(Tensor y, int[]? rows, Tensor x, IReadOnlyList<LoraFactors> adapters, int[] segmentStarts, float dropout,
        ulong[]? seeds, KernelOptions kernel, bool scratch = false, bool sourceTakesGrad = false)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(segmentStarts);
        if (x.Device.IsGpu || y.Device.IsGpu)
        {
            throw new NotSupportedException("segmented LoRA branch: host tensors only (on a device, run one LoraBranch per segment).");
        }

        int n = x.Rows, inF = x.Columns, outF = y.Columns;
        if ((rows?.Length ?? y.Rows) != n)
        {
            throw new ArgumentException(rows == null
                ? $"segmented LoRA branch: y [{string.Join(", ", y.Shape)}] and x [{string.Join(", ", x.Shape)}] have different row counts."
                : $"segmented LoRA branch: {rows.Length} gathered rows for x [{string.Join(", ", x.Shape)}] (need one per row of x).", rows == null ? nameof(y) : nameof(rows));
        }

        var (a, b, scales, seedList, h) = SegmentedOperands(adapters, segmentStarts, seeds, n, inF, outF, "segmented LoRA branch");
        bool record = Tape.IsRecording && (y.RequiresGrad || x.RequiresGrad || adapters.Any(l => l.A.RequiresGrad || l.B.RequiresGrad));
        float[] yd;
        if (rows == null)
        {
            yd = y.Data;
            SegmentedLoraTraining.ForwardAccumulate(x.Data, segmentStarts, a, b, scales, seedList, dropout, yd, h, n, inF, outF, kernel);
        }
        else
        {
            yd = scratch && record ? ScratchArrays.Rent(checked(n * outF)) : GC.AllocateUninitializedArray<float>(checked(n * outF));
            SegmentedLoraTraining.ForwardGather(y.Data, rows, y.Rows, x.Data, segmentStarts, a, b, scales, seedList, dropout, yd, h, n, inF, outF, kernel);
        }

        if (!record)
        {
            return rows == null ? y : new Tensor(yd, n, outF);
        }

        var output = new Tensor(yd, rows == null ? y.Shape : [n, outF]);
        Tape.Record(output, () =>
        {
            var g = output.Grad!;
            SegmentedLoraGrads(g, x, adapters, segmentStarts, h, a, b, scales, seedList, dropout, n, inF, outF, kernel);

            if (rows == null)
            {
                // dy = g: y's storage is the output's, and nothing reads g after this node, so it is handed over without a copy.
                Grad.AddOwned(y, g);
            }
            else
            {
                ScatterRowsBack(y, rows, g, kernel, sourceTakesGrad);
                if (scratch)
                {
                    ScratchArrays.Return(yd);
                    if (!ReferenceEquals(g, yd))
                    {
                        ScratchArrays.Return(g);
                    }
                }
            }
        });
        return output;
    }

    /// <summary>
    /// The adjoint of x[rows] for x [n, cols]: g's rows added into x's gradient when it has one, else each row of a fresh buffer
    /// written once (or, with <paramref name="intoStorage"/> and a non-leaf x, of x's own storage, which then becomes its gradient).
    /// </summary>
    private static void ScatterRowsBack(Tensor x, int[] rows, float[] g, KernelOptions kernel, bool intoStorage = false)
    {
        if (!x.RequiresGrad)
        {
            return;
        }

        int n = x.Rows, cols = x.Columns;
        if (x.Grad is { } existing)
        {
            Kernels.Cpu.RowSelect.ScatterAdd(g, rows, existing, n, cols, kernel);
            return;
        }

        var dx = intoStorage && x is not Parameter && !ReferenceEquals(x.Data, g) ? x.Data : GC.AllocateUninitializedArray<float>(checked((int)x.Count));
        Kernels.Cpu.RowSelect.ScatterSum(g, rows, dx, n, cols, kernel);
        Grad.AddOwned(x, dx);
    }

    /// <summary>The checked operands of a segmented LoRA over <paramref name="rows"/> rows: each adapter's A, B and scale
    /// (no lora_B bias, no DoRA magnitude), the seeds (zeros when null) and an uninitialized h; the segment starts must be
    /// one more than the adapters and non-decreasing within [0, rows]. Errors start with <paramref name="what"/>.</summary>
    private static (float[][] A, float[][] B, float[] Scales, ulong[] Seeds, float[] H) SegmentedOperands(IReadOnlyList<LoraFactors> adapters,
        int[] segmentStarts, ulong[]? seeds, int rows, int inF, int outF, string what)
    {
        foreach (var lora in adapters)
        {
            lora.Check(inF, outF, what);
            if (lora.Bias != null || lora.Magnitude != null)
            {
                throw new ArgumentException($"{what}, adapter '{lora.Name}': a lora_B bias or DoRA magnitude is not supported here.", nameof(adapters));
            }
        }

        if (segmentStarts.Length != adapters.Count + 1)
        {
            throw new ArgumentException($"{what}: {segmentStarts.Length} segment starts for {adapters.Count} adapters (need one more start than adapters).", nameof(segmentStarts));
        }

        if (segmentStarts.Zip(segmentStarts.Skip(1)).Any(p => p.Second < p.First) || segmentStarts[0] < 0 || segmentStarts[^1] > rows)
        {
            throw new ArgumentException($"{what}: the segment starts must be non-decreasing within [0, {rows}].", nameof(segmentStarts));
        }

        var ranks = adapters.Select(l => l.Rank).ToArray();
        return ([.. adapters.Select(l => l.A.Data)], [.. adapters.Select(l => l.B.Data)], [.. adapters.Select(l => l.Scale)],
            seeds ?? new ulong[adapters.Count], GC.AllocateUninitializedArray<float>((int)SegmentedLoraTraining.HLength(segmentStarts, ranks)));
    }

    /// <summary>The gradients of a segmented LoRA over its rows' output gradient g [rows, out]: dx into x's gradient (added in
    /// place when x already has one: MixLoRA's up LoRA's, for the gate LoRA, so no second [rows, in] buffer and no add pass),
    /// dA and dB to every adapter whose segment is non-empty (an empty one gets no gradient at all, as when it is not run).</summary>
    internal static void SegmentedLoraGrads(ReadOnlySpan<float> g, Tensor x, IReadOnlyList<LoraFactors> adapters, int[] segmentStarts, float[] h,
        float[][] a, float[][] b, float[] scales, ulong[] seeds, float dropout, int rows, int inF, int outF, KernelOptions kernel)
    {
        bool into = x.RequiresGrad && x.Grad != null;
        float[] dx = into ? x.Grad! : x.RequiresGrad ? ScratchArrays.Rent(rows * inF) : [];
        bool Used(int t) => segmentStarts[t + 1] > segmentStarts[t];
        var da = adapters.Select((l, t) => l.A.RequiresGrad && Used(t) ? GC.AllocateUninitializedArray<float>((int)l.A.Count) : null).ToArray();
        var db = adapters.Select((l, t) => l.B.RequiresGrad && Used(t) ? GC.AllocateUninitializedArray<float>((int)l.B.Count) : null).ToArray();
        SegmentedLoraTraining.Backward(g, x.Data, segmentStarts, h, a, b, scales, seeds, dropout, dx, da, db, rows, inF, outF, kernel, accumulateDx: into);
        if (!into)
        {
            Grad.AddOwned(x, dx);
        }

        for (int t = 0; t < adapters.Count; t++)
        {
            if (da[t] is { } dat)
            {
                Grad.AddOwned(adapters[t].A, dat);
            }

            if (db[t] is { } dbt)
            {
                Grad.AddOwned(adapters[t].B, dbt);
            }
        }
    }
}
