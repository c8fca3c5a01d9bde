// A projection of the device engine's forward with each row's adapter (EngineAdapter's equations, in the
// order the CPU BatchForward applies them), for y [n, out] from x [n, in]:
//   x' = x, or a copy with the rows of IA³ feed-forward sequences scaled by l       (Ia3Kernels)
//   y  = x'·Wᵀ                      one base GEMM over all rows, any storage (dense or 4-bit)
//   y  = g ⊙ y  on DoRA rows;       y += b (the base bias, every row)
//   y += s·B_k·(A_k·x')             one SGMV per chunk of adapter slots with rows in the step (SegmentedLoraKernels)
//   y += s·β(·g) on LoRA-bias rows; y = y ⊙ l on IA³ output-scaling rows
// The per-sequence scalings are one launch per sequence on its rows' sub-view (sequences of a step are
// few; the SGMV, which does the heavy work, is one launch for all of them).
using FloatView = ILGPU.Runtime.ArrayView1D<float, ILGPU.Stride1D.Dense>;

namespace PeftKernels.Engine;

internal sealed partial class DeviceBatchForward
{
    /// <summary>y = proj_p(input) for every row, each row with its sequence's adapter.</summary>
    private void Project(int layer, int p, FloatView input, FloatView y, StepBatch batch, AdapterTable table)
    {
        var (inF, outF) = shapes[p];
        int n = batch.Rows, count = batch.Count;
        var e = table.At(layer, p);
        var de = Adapters.At(layer, p);
        var xin = input;
        if (e.AnyIa3Input && AnyIa3Input(batch, e))
        {
            xin = inputScratch.View.SubView(0, (long)n * inF);
            xin.CopyFrom(input);
            for (int s = 0; s < count; s++)
            {
                int slot = batch.Slot[s];
                if (slot >= 0 && e.Ia3Feedforward[slot] && de.Ia3[slot] is { } l)
                {
                    ScaleRows(xin, l.View, batch, s, inF);
                }
            }
        }

        GemmKernels.Forward(accelerator, xin, weights[layer, p], default, y, n, inF, outF);
        for (int s = 0; e.AnyDora && s < count; s++)
        {
            int slot = batch.Slot[s];
            if (slot >= 0 && de.DoraScale[slot] is { } g)
            {
                ScaleRows(y, g.View, batch, s, outF);
            }
        }

        if (biases[layer, p].Length != 0)
        {
            AddKernels.Forward(accelerator, y, biases[layer, p], y);
        }

        for (int c = 0; e.AnyLora && c < de.Packs.Length; c++)
        {
            int at = inputs.SgmvAt(layer, p, c);
            if (at < 0 || de.Packs[c] is not { } pack)
            {
                continue;
            }

            SegmentedLoraKernels.Sgmv(accelerator, xin, inputs.SegmentStarts, inputs.SegmentAdapters(at), inputs.SegmentScales(at),
                pack.Factors, pack.Ranks, pack.AOffsets, pack.BOffsets, pack.MaxRank, y, h.View, n, inF, outF);
        }

        for (int s = 0; s < count; s++)
        {
            int slot = batch.Slot[s];
            if (slot < 0)
            {
                continue;
            }

            if (de.LoraBias[slot] is { } lb)
            {
                var rows = RowsOf(y, batch, s, outF);
                AddKernels.Forward(accelerator, rows, lb.View, rows);
            }

            if (e.AnyIa3Output && !e.Ia3Feedforward[slot] && de.Ia3[slot] is { } l)
            {
                ScaleRows(y, l.View, batch, s, outF);
            }
        }

        AddXLora(layer, p, xin, y, batch);
    }

    private static bool AnyIa3Input(StepBatch batch, AdapterTable.Entry e)
    {
        for (int s = 0; s < batch.Count; s++)
        {
            int slot = batch.Slot[s];
            if (slot >= 0 && e.Ia3[slot] != null && e.Ia3Feedforward[slot])
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The rows of sequence <paramref name="s"/> in y [n, width].</summary>
    private static FloatView RowsOf(FloatView y, StepBatch batch, int s, int width) =>
        y.SubView((long)batch.SequenceStart[s] * width, (long)(batch.SequenceStart[s + 1] - batch.SequenceStart[s]) * width);

    /// <summary>The rows of sequence <paramref name="s"/> in y [n, width], scaled column-wise by <paramref name="scale"/> [width], in place.</summary>
    private void ScaleRows(FloatView y, FloatView scale, StepBatch batch, int s, int width)
    {
        var rows = RowsOf(y, batch, s, width);
        Ia3Kernels.ScaleColumns(accelerator, rows, scale, rows, batch.SequenceStart[s + 1] - batch.SequenceStart[s], width);
    }
}
